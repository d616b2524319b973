//! Keys and signed blobs on the host: `graftnet keygen`, `graftnet sign`,
//! `export --sign`, and the `--verify-key` of `run`, `eval`, `bench` and
//! `inspect`.
//!
//! Key files are text, one key per file: lines starting with `#` are
//! comments, and the one other line is the key as 64 hex digits.
//!
//! ```text
//! KEY      # graftnet ed25519 secret key (the RFC 8032 32-byte seed); key id 1f2e...; keep it private
//!          9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60
//! KEY.pub  # graftnet ed25519 public key; key id 1f2e...
//!          d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a
//! ```
//!
//! `keygen` writes the secret file with mode 0600 and refuses to overwrite
//! a key. The trailer and what a signature covers are the runtime's
//! (`graftnet::format::signature`, `FORMAT.md` "Signatures"): signing here
//! appends `SigningKey::sign(content)` to a blob's first `total_len` bytes,
//! replacing a trailer the blob had.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use graftnet::format::{BACKBONE_MAGIC, PATCH_MAGIC};
use graftnet::{Backbone, Patch, SigningKey, VerifyKey};

const SECRET_HEADER: &str = "# graftnet ed25519 secret key (the RFC 8032 32-byte seed)";
const PUBLIC_HEADER: &str = "# graftnet ed25519 public key";

/// The public-key file beside secret-key file `key`: `KEY.pub`.
pub fn public_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The 32 bytes of a key file's key line (see the module doc; the
/// runtime's `key_from_text` is the definition).
pub fn parse_key_text(text: &str) -> Result<[u8; 32], String> {
    graftnet::format::signature::key_from_text(text).map_err(str::to_string)
}

/// Writes a new key pair: `key` (secret, mode 0600) and `key.pub`.
/// Refuses to overwrite either unless `force`. Returns the public key.
pub fn keygen(key: &Path, force: bool) -> Result<VerifyKey> {
    let public = public_path(key);
    for p in [key, public.as_path()] {
        if p.exists() && !force {
            bail!(
                "{} exists; refusing to overwrite a key (give --force to replace it)",
                p.display()
            );
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness from the OS: {e}"))?;
    let sk = SigningKey::from_seed(&seed);
    let vk = sk.verify_key();
    let id = vk.id();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(key)
        .with_context(|| format!("creating {}", key.display()))?;
    writeln!(
        f,
        "{SECRET_HEADER}; key id {id}; keep it private\n{}",
        hex(&sk.seed())
    )
    .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(
        &public,
        format!("{PUBLIC_HEADER}; key id {id}\n{}\n", hex(&vk.to_bytes())),
    )
    .with_context(|| format!("writing {}", public.display()))?;
    Ok(vk)
}

/// Reads a secret-key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    if text.contains(PUBLIC_HEADER) {
        bail!(
            "{} is a public key; signing needs the secret key file (the one without .pub)",
            path.display()
        );
    }
    let seed = parse_key_text(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(SigningKey::from_seed(&seed))
}

/// Reads a public-key file (`KEY.pub`).
pub fn read_verify_key(path: &Path) -> Result<VerifyKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the verification key {}", path.display()))?;
    if text.contains(SECRET_HEADER) {
        bail!(
            "{} is a secret key; verification takes the public key ({})",
            path.display(),
            public_path(path).display()
        );
    }
    let bytes = parse_key_text(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    VerifyKey::from_bytes(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// What kind of blob `bytes` is, by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    Backbone,
    Patch,
}

/// The kind of blob, or an error naming the file.
pub fn blob_kind(bytes: &[u8], file: &Path) -> Result<BlobKind> {
    match bytes.get(..4) {
        Some(m) if m == BACKBONE_MAGIC => Ok(BlobKind::Backbone),
        Some(m) if m == PATCH_MAGIC => Ok(BlobKind::Patch),
        _ => bail!(
            "{} is neither a graftnet backbone (.gnb) nor a patch (.gnp)",
            file.display()
        ),
    }
}

/// `blob` (a backbone or a patch, which must parse) signed with `key`: its
/// content followed by a new trailer (an old one is replaced).
pub fn sign_blob(blob: &[u8], key: &SigningKey) -> Result<Vec<u8>> {
    let content = match blob_kind(blob, Path::new("the blob"))? {
        BlobKind::Backbone => Backbone::parse(blob)
            .map_err(|e| anyhow!("not a valid backbone: {e}"))?
            .bytes(),
        BlobKind::Patch => Patch::parse(blob)
            .map_err(|e| anyhow!("not a valid patch: {e}"))?
            .bytes(),
    };
    let mut out = Vec::with_capacity(content.len() + graftnet::format::signature::TRAILER_LEN);
    out.extend_from_slice(content);
    out.extend_from_slice(&key.sign(content));
    Ok(out)
}

/// Checks `blob` (a backbone or a patch) against `key`: `Ok` only if it
/// carries `key`'s valid signature and parses.
pub fn verify_blob(blob: &[u8], key: &VerifyKey) -> Result<BlobKind, graftnet::FormatError> {
    if blob.get(..4) == Some(&BACKBONE_MAGIC[..]) {
        Backbone::parse_verified(blob, key).map(|_| BlobKind::Backbone)
    } else {
        Patch::parse_verified(blob, key).map(|_| BlobKind::Patch)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory and a rename, so a reader never sees half a blob.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("replacing {}", path.display())
    })
}
