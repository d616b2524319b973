//! Signatures: an Ed25519 trailer after a blob's declared length.
//!
//! ```text
//! blob (total_len bytes, unchanged) | trailer (80 B)
//! trailer: magic "GNSG" | algorithm u16 = 1 | length u16 = 80 | key id (8) | signature (64)
//! ```
//!
//! The signature is Ed25519 (RFC 8032, PureEdDSA, verified with
//! `verify_strict`) over the blob's content: its first `total_len` bytes,
//! header, checksum and all. The key id is the first 8 bytes of
//! SHA-512 of the 32-byte public key; it only tells "signed by another
//! key" (`FormatError::WrongKey`) apart from "modified"
//! (`FormatError::BadSignature`) and carries no security of its own.
//! Normative spec: `FORMAT.md`, "Signatures".
//!
//! # Why a trailer
//!
//! An unsigned blob keeps the bytes it always had (the exporter's output is
//! byte-identical, fingerprints and checksums do not move), so signing is
//! an optional step after export (`graftnet sign`), and a signed blob
//! still parses on a reader that knows nothing of signatures: every reader
//! takes `total_len` bytes and ignores what follows. The signature covers
//! the content exactly as it is used (in place from flash), so no
//! canonical re-encoding is needed and the content is hashed straight from
//! flash, without a copy.
//!
//! # Verification contract
//!
//! A reader that has a key (`VerifyKey`) refuses, before parsing anything
//! beyond the fixed header: a blob with no trailer, or with anything but an
//! 80-byte Ed25519 trailer after it (`FormatError::Unsigned`); a trailer
//! naming another key (`FormatError::WrongKey`); a signature that does
//! not verify (`FormatError::BadSignature`). Without a key the trailer is
//! recognized (the parsers expose it) and ignored.
//!
//! # Why a feature (`verify`)
//!
//! The trailer view ([`Trailer`], [`KeyId`]) is always compiled; the
//! cryptography (`ed25519-dalek` without its default features, with
//! SHA-512 from `sha2`) is behind the cargo feature `verify`. On the
//! Cortex-M4 it adds 18.6 KB of `.text` (field and scalar arithmetic,
//! point decompression, SHA-512 in its compact form; 46 KB with SHA-512
//! unrolled): a third of the 55.6 KB that running the engine adds to the
//! self-test firmware (`targets/README.md`, "Signed blobs"), which a
//! device that does not check signatures should not pay for. Signing
//! (`SigningKey`) is in the same feature, for the host tools: it is a
//! few functions over the same arithmetic, and the linker drops it from a
//! firmware that only verifies. `ed25519-dalek`'s `fast` feature
//! (precomputed base-point tables, for signing speed) stays off.

use core::fmt;

use super::rd;
#[cfg(feature = "verify")]
use crate::error::FormatError;

/// Trailer magic.
pub const TRAILER_MAGIC: [u8; 4] = *b"GNSG";
/// Trailer length.
pub const TRAILER_LEN: usize = 80;
/// Algorithm code of Ed25519 (RFC 8032, PureEdDSA).
pub const ALG_ED25519: u16 = 1;
/// Public-key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Signature length.
pub const SIGNATURE_LEN: usize = 64;

/// Trailer field offsets (from the trailer's start).
pub mod field {
    #![allow(missing_docs)]
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const ALGORITHM: usize = 4;
    pub const LENGTH: usize = 6;
    pub const KEY_ID: Range<usize> = 8..16;
    pub const SIGNATURE: Range<usize> = 16..80;
}

/// The first 8 bytes of SHA-512 of a public key: names the key a blob was
/// signed with. Printed as 16 hex digits, bytes in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A signature trailer found after a blob (not yet verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer<'a> {
    bytes: &'a [u8; TRAILER_LEN],
}

impl<'a> Trailer<'a> {
    /// The trailer of a blob whose header declares `total_len` bytes: the
    /// 80 bytes at `total_len`, if they hold the magic, algorithm 1 and
    /// length 80. Anything else (nothing, other bytes, an unknown
    /// algorithm) is no trailer. Bytes after the trailer are ignored, as
    /// bytes after an unsigned blob are.
    pub fn find(blob: &'a [u8], total_len: usize) -> Option<Self> {
        let end = total_len.checked_add(TRAILER_LEN)?;
        let bytes: &'a [u8; TRAILER_LEN] = blob.get(total_len..end)?.try_into().ok()?;
        let t = Trailer { bytes };
        let ok = rd::<4>(bytes, field::MAGIC.start) == TRAILER_MAGIC
            && super::rd_u16(bytes, field::ALGORITHM) == ALG_ED25519
            && super::rd_u16(bytes, field::LENGTH) as usize == TRAILER_LEN;
        ok.then_some(t)
    }
    /// The key the blob says it was signed with.
    pub fn key_id(&self) -> KeyId {
        KeyId(rd(self.bytes, field::KEY_ID.start))
    }
    /// The Ed25519 signature (`R || S`).
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        rd(self.bytes, field::SIGNATURE.start)
    }
    /// The 80 trailer bytes.
    pub fn bytes(&self) -> &'a [u8; TRAILER_LEN] {
        self.bytes
    }
}

/// The trailer bytes for `key_id` and `signature`.
pub fn emit(key_id: KeyId, signature: &[u8; SIGNATURE_LEN]) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    for (d, s) in t.iter_mut().zip(
        TRAILER_MAGIC
            .iter()
            .chain(&ALG_ED25519.to_le_bytes())
            .chain(&(TRAILER_LEN as u16).to_le_bytes())
            .chain(&key_id.0)
            .chain(signature),
    ) {
        *d = *s;
    }
    t
}

/// The 32 bytes of a key file (`graftnet keygen` writes them): lines
/// starting with `#` and blank lines are skipped, and the one line left
/// holds the key as 64 hex digits (surrounding spaces allowed). One
/// definition for the host tools, the device program and the firmware
/// build.
pub fn key_from_text(text: &str) -> Result<[u8; 32], &'static str> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return Err("expected one line of 64 hex digits (besides # comments)");
    };
    let digit = |c: u8| (c as char).to_digit(16);
    let mut key = [0u8; 32];
    let mut pairs = line.as_bytes().chunks(2);
    for k in key.iter_mut() {
        let Some(&[hi, lo]) = pairs.next() else {
            return Err("expected 64 hex digits (a 32-byte key), found fewer");
        };
        let (Some(hi), Some(lo)) = (digit(hi), digit(lo)) else {
            return Err("expected 64 hex digits (a 32-byte key), found another character");
        };
        *k = (hi * 16 + lo) as u8;
    }
    if pairs.next().is_some() {
        return Err("expected 64 hex digits (a 32-byte key), found more");
    }
    Ok(key)
}

/// The key id of a public key (first 8 bytes of its SHA-512).
#[cfg(feature = "verify")]
pub fn key_id(public: &[u8; PUBLIC_KEY_LEN]) -> KeyId {
    use sha2::{Digest, Sha512};
    let h = Sha512::digest(public);
    KeyId(rd(h.as_slice(), 0))
}

/// A public key that blobs must be signed with (feature `verify`).
///
/// Made once (`from_bytes` decompresses the curve point), then handed to
/// [`crate::Backbone::parse_verified`], [`crate::Patch::parse_verified`]
/// and [`crate::Engine::new_verified`].
#[cfg(feature = "verify")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyKey {
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

#[cfg(feature = "verify")]
impl VerifyKey {
    /// The key from its 32 bytes (RFC 8032 encoding); a string that is no
    /// curve point, or a point of small order (a weak key no signer
    /// makes), is refused with [`FormatError::BadKey`].
    pub fn from_bytes(public: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, FormatError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(public).map_err(|_| FormatError::BadKey)?;
        if key.is_weak() {
            return Err(FormatError::BadKey);
        }
        Ok(VerifyKey {
            key,
            id: key_id(public),
        })
    }
    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.to_bytes()
    }
    /// The key's id (what a trailer names).
    pub fn id(&self) -> KeyId {
        self.id
    }
    /// Checks that `trailer` (found after `content`) is this key's
    /// signature of `content`. See the module doc for the errors.
    pub fn verify(&self, content: &[u8], trailer: Option<Trailer<'_>>) -> Result<(), FormatError> {
        let Some(t) = trailer else {
            return Err(FormatError::Unsigned);
        };
        if t.key_id() != self.id {
            return Err(FormatError::WrongKey {
                expected: self.id,
                found: t.key_id(),
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&t.signature());
        self.key
            .verify_strict(content, &sig)
            .map_err(|_| FormatError::BadSignature)
    }
}

/// A secret key that signs blobs (feature `verify`; for the host tools).
#[cfg(feature = "verify")]
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

#[cfg(feature = "verify")]
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.verify_key().id())
    }
}

#[cfg(feature = "verify")]
impl SigningKey {
    /// The key from its 32-byte seed (RFC 8032's secret key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }
    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
    /// The public half.
    pub fn verify_key(&self) -> VerifyKey {
        let public = self.key.verifying_key().to_bytes();
        VerifyKey {
            key: self.key.verifying_key(),
            id: key_id(&public),
        }
    }
    /// The trailer that signs `content` (a blob's first `total_len`
    /// bytes, which `Backbone::bytes` / `Patch::bytes` return).
    pub fn sign(&self, content: &[u8]) -> [u8; TRAILER_LEN] {
        use ed25519_dalek::Signer;
        let sig = self.key.sign(content).to_bytes();
        emit(self.verify_key().id(), &sig)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trailer_bytes_are_exact() {
        let t = emit(KeyId([1, 2, 3, 4, 5, 6, 7, 8]), &[0xab; 64]);
        let mut want = [0u8; 80];
        want[..8].copy_from_slice(b"GNSG\x01\x00\x50\x00");
        want[8..16].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want[16..].fill(0xab);
        assert_eq!(t, want);
        let mut blob = [0u8; 100];
        blob[20..].copy_from_slice(&t);
        let found = Trailer::find(&blob, 20).unwrap();
        struct Buf([u8; 16], usize);
        impl fmt::Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for &b in s.as_bytes() {
                    *self.0.get_mut(self.1).ok_or(fmt::Error)? = b;
                    self.1 += 1;
                }
                Ok(())
            }
        }
        let mut hex = Buf([0; 16], 0);
        fmt::write(&mut hex, format_args!("{}", found.key_id())).unwrap();
        assert_eq!(&hex.0, b"0102030405060708");
        assert_eq!(found.signature(), [0xab; 64]);
        // Nothing there, a short tail, a wrong magic, algorithm or length.
        assert!(Trailer::find(&blob, 100).is_none());
        assert!(Trailer::find(&blob, 21).is_none());
        assert!(Trailer::find(&blob, usize::MAX).is_none());
        for at in [0, 4, 6] {
            let mut b = blob;
            b[20 + at] ^= 1;
            assert!(Trailer::find(&b, 20).is_none(), "byte {at}");
        }
    }

    #[test]
    fn key_text() {
        let k = key_from_text(
            "# c\n\n 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60 \n",
        )
        .unwrap();
        assert_eq!((k[0], k[31]), (0x9d, 0x60));
        for bad in [
            "",
            "# only a comment",
            "9d61",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6",
            "zz61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f600",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n00",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6é",
        ] {
            assert!(key_from_text(bad).is_err(), "{bad:?}");
        }
    }

    /// RFC 8032, section 7.1, TEST 2 (one-byte message 0x72).
    #[cfg(feature = "verify")]
    #[test]
    fn rfc8032_test_vector() {
        fn hex<const N: usize>(s: &str) -> [u8; N] {
            core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        }
        let seed = hex::<32>("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb");
        let public = hex::<32>("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let sig = hex::<64>(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        );
        let sk = SigningKey::from_seed(&seed);
        let vk = sk.verify_key();
        assert_eq!(vk.to_bytes(), public);
        let t = sk.sign(&[0x72]);
        assert_eq!(t[16..], sig);
        let trailer = Trailer::find(&t, 0);
        assert_eq!(vk.verify(&[0x72], trailer), Ok(()));
        assert_eq!(vk.verify(&[0x73], trailer), Err(FormatError::BadSignature));
        assert_eq!(vk.verify(&[0x72], None), Err(FormatError::Unsigned));
        let other = SigningKey::from_seed(&[7; 32]).verify_key();
        assert_eq!(
            other.verify(&[0x72], trailer),
            Err(FormatError::WrongKey {
                expected: other.id(),
                found: vk.id()
            })
        );
        assert_eq!(VerifyKey::from_bytes(&public), Ok(vk));
        // The identity point (small order) is no signer's key.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert_eq!(VerifyKey::from_bytes(&ident), Err(FormatError::BadKey));
    }
}
