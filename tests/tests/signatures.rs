//! Signed backbones and patches (`FORMAT.md`, "Signatures") on the shipped
//! MobileNetV2 test models: signing leaves the blob's bytes as they were
//! and appends a trailer; with a key, every modified, unsigned or foreign
//! blob is refused with a typed error, and a refused patch leaves the
//! active task as it was; without a key nothing changes.

use std::path::PathBuf;
use std::sync::OnceLock;

use graftnet::format::signature::{KeyId, Trailer, TRAILER_LEN};
use graftnet::{
    Backbone, ChannelRequant, Engine, Error, FormatError, Patch, SigningKey, VerifyKey,
};
use graftnet_tests::*;
use graftnet_tools::pipeline::{export, ExportOptions};

const TASKS: [&str; 3] = ["mnist-sb", "mnist-dw", "fashion-binary-logits"];

fn key() -> SigningKey {
    SigningKey::from_seed(&[0x5a; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_seed(&[0xa5; 32])
}

/// One export of the shipped mnv2 models, unsigned and signed.
struct Blobs {
    backbone: Vec<u8>,
    signed_backbone: Vec<u8>,
    /// (task, unsigned, signed)
    patches: Vec<(String, Vec<u8>, Vec<u8>)>,
    out: (PathBuf, PathBuf),
}

fn blobs() -> &'static Blobs {
    static B: OnceLock<Blobs> = OnceLock::new();
    B.get_or_init(|| {
        let m = models();
        let data = m.join("data");
        let dir = scratch("signatures");
        let mut opts = ExportOptions {
            base: m.join("mnv2/base.folded.onnx"),
            calib: data.join("fashion_calib_x.npy"),
            out: dir.join("plain"),
            ..Default::default()
        };
        for t in TASKS {
            opts.tasks
                .push((t.to_string(), m.join(format!("mnv2/{t}.folded.onnx"))));
        }
        export(&opts).unwrap();
        let plain = opts.out.clone();
        opts.out = dir.join("signed");
        opts.sign = Some(key());
        let r = export(&opts).unwrap();
        assert_eq!(
            r.backbone_bytes,
            std::fs::metadata(plain.join("backbone.gnb")).unwrap().len() as usize + TRAILER_LEN
        );
        let rd = |d: &PathBuf, f: &str| std::fs::read(d.join(f)).unwrap();
        Blobs {
            backbone: rd(&plain, "backbone.gnb"),
            signed_backbone: rd(&opts.out, "backbone.gnb"),
            patches: TASKS
                .iter()
                .map(|t| {
                    let f = format!("{t}.gnp");
                    (t.to_string(), rd(&plain, &f), rd(&opts.out, &f))
                })
                .collect(),
            out: (plain, opts.out.clone()),
        }
    })
}

fn vkey() -> VerifyKey {
    key().verify_key()
}

fn input(bb: &Backbone<'_>) -> Vec<f32> {
    let ds = npy(&models().join("data/mnist_test_x.npy"), None);
    assert_eq!(ds.shape.0 * ds.shape.1 * ds.shape.2, bb.input().len());
    ds.sample(3).to_vec()
}

#[test]
fn signing_appends_a_trailer_and_changes_no_byte() {
    let b = blobs();
    let id = vkey().id();
    let check = |plain: &[u8], signed: &[u8]| {
        assert_eq!(signed.len(), plain.len() + TRAILER_LEN);
        assert_eq!(
            &signed[..plain.len()],
            plain,
            "the blob's bytes are unchanged"
        );
        let t = Trailer::find(signed, plain.len()).expect("a trailer");
        assert_eq!(t.key_id(), id);
        assert_eq!(
            &signed[plain.len()..plain.len() + 8],
            b"GNSG\x01\x00\x50\x00"
        );
    };
    check(&b.backbone, &b.signed_backbone);
    for (_, plain, signed) in &b.patches {
        check(plain, signed);
    }
    // The unsigned export has no trailer, and its manifest does not name a key.
    assert!(Backbone::parse(&b.backbone).unwrap().signature().is_none());
    let manifest = |d: &PathBuf| std::fs::read_to_string(d.join("manifest.json")).unwrap();
    assert!(!manifest(&b.out.0).contains("signed_by"));
    assert!(manifest(&b.out.1).contains(&format!("\"signed_by\": \"{id}\"")));
    // Signing again gives the same bytes (Ed25519 is deterministic), and
    // re-signing a signed blob replaces its trailer.
    let again = graftnet_tools::signing::sign_blob(&b.backbone, &key()).unwrap();
    assert_eq!(again, b.signed_backbone);
    let resigned = graftnet_tools::signing::sign_blob(&b.signed_backbone, &other_key()).unwrap();
    assert_eq!(resigned.len(), b.signed_backbone.len());
    assert_eq!(
        Backbone::parse_verified(&resigned, &other_key().verify_key())
            .unwrap()
            .fingerprint(),
        Backbone::parse(&b.backbone).unwrap().fingerprint()
    );
}

#[test]
fn signed_blobs_verify_and_run_like_unsigned_ones() {
    let b = blobs();
    let k = vkey();
    let bb = Backbone::parse_verified(&b.signed_backbone, &k).unwrap();
    assert_eq!(bb.bytes(), b.backbone.as_slice());
    let x = input(&bb);
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new_verified(&bb, &mut arena, &mut params, &k).unwrap();
    assert_eq!(e.verify_key().map(|k| k.id()), Some(k.id()));
    for (task, plain, signed) in &b.patches {
        // Verified once (parse_verified), or by the engine in `apply`.
        for p in [
            Patch::parse_verified(signed, &k).unwrap(),
            Patch::parse(signed).unwrap(),
        ] {
            e.apply(p).unwrap();
            assert_eq!(e.task_name(), task);
            let got = e.run_f32(&x).unwrap().quantized().to_vec();
            let want = scores(&b.backbone, Some(plain), &npy_one(&x, &bb), 1)[0].clone();
            assert_eq!(got, want, "{task}");
        }
    }
    // Without a key, signed blobs parse and run as before.
    let bb2 = Backbone::parse(&b.signed_backbone).unwrap();
    assert_eq!(bb2.fingerprint(), bb.fingerprint());
    let mut arena = vec![0i8; bb2.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb2.params_len()];
    let mut plain_engine = Engine::new(&bb2, &mut arena, &mut params).unwrap();
    for (_, plain, signed) in &b.patches {
        plain_engine.apply(Patch::parse(signed).unwrap()).unwrap();
        plain_engine.apply(Patch::parse(plain).unwrap()).unwrap();
    }
}

fn npy_one(x: &[f32], bb: &Backbone<'_>) -> graftnet_tools::data::Dataset {
    let t = bb.input();
    graftnet_tools::data::Dataset {
        shape: (t.c as usize, t.h as usize, t.w as usize),
        samples: x.to_vec(),
        labels: None,
        class_names: None,
    }
}

/// The error a blob with byte `at` flipped gets, by where `at` lies: the
/// fixed header fields that locate the content are checked first (so a
/// flipped magic, version or length is refused as such); every other
/// content byte breaks the signature; the trailer's magic, algorithm and
/// length make it no trailer (unsigned), its key id names another key,
/// its signature bytes do not verify.
fn expect_refused(err: FormatError, at: usize, content_len: usize, what: &str) {
    let ok = match at {
        0..12 => !matches!(
            err,
            FormatError::BadSignature | FormatError::WrongKey { .. }
        ),
        _ if at < content_len => err == FormatError::BadSignature,
        _ => match at - content_len {
            0..8 => err == FormatError::Unsigned,
            8..16 => matches!(err, FormatError::WrongKey { .. }),
            _ => err == FormatError::BadSignature,
        },
    };
    assert!(ok, "{what}: byte {at} flipped: {err:?}");
}

/// Offsets to flip: every `step`-th byte, every byte of the first 96 and
/// of the trailer.
fn offsets(len: usize, content_len: usize, step: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).step_by(step).collect();
    v.extend(0..96.min(len));
    v.extend(content_len..len);
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_modified_backbone_is_refused() {
    let b = blobs();
    let k = vkey();
    let n = b.backbone.len();
    let mut blob = b.signed_backbone.clone();
    let offs = offsets(blob.len(), n, 997);
    assert!(offs.len() > 600, "{}", offs.len());
    for &at in &offs {
        blob[at] ^= 0x10;
        let err = Backbone::parse_verified(&blob, &k).unwrap_err();
        expect_refused(err, at, n, "backbone");
        // The engine refuses a backbone parsed without the key, too.
        if let Ok(bb) = Backbone::parse(&blob) {
            let mut arena = vec![0i8; bb.arena_len()];
            let mut params = vec![ChannelRequant::default(); bb.params_len()];
            let e = Engine::new_verified(&bb, &mut arena, &mut params, &k).err();
            assert!(
                matches!(e, Some(Error::Format(f)) if f == err),
                "byte {at}: {e:?} vs {err:?}"
            );
        }
        blob[at] ^= 0x10;
    }
    Backbone::parse_verified(&blob, &k).unwrap();
}

#[test]
fn a_modified_patch_is_refused_and_the_task_stays() {
    let b = blobs();
    let k = vkey();
    let bb = Backbone::parse_verified(&b.signed_backbone, &k).unwrap();
    let x = input(&bb);
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let active = &b.patches[0];
    let active_patch = Patch::parse_verified(&active.2, &k).unwrap();
    let (want, table) = {
        let mut e = Engine::new_verified(&bb, &mut arena, &mut params, &k).unwrap();
        e.apply(active_patch).unwrap();
        let want = e.run_f32(&x).unwrap().quantized().to_vec();
        (want, e.params().to_vec())
    };
    let mut tried = 0;
    for (task, plain, signed) in &b.patches {
        let n = plain.len();
        let mut blob = signed.clone();
        for at in offsets(blob.len(), n, 13) {
            blob[at] ^= 0x01;
            let err = Patch::parse_verified(&blob, &k).unwrap_err();
            expect_refused(err, at, n, task);
            // Parsed without the key (the CRC still holds when the flip
            // is in the trailer; resealed when it is in the content, as an
            // attacker would): the engine's `apply` refuses it, and the
            // task that was active stays, parameters and scores unchanged.
            if (16..n).contains(&at) {
                graftnet::format::patch::seal(&mut blob[..n]);
            }
            if let Ok(p) = Patch::parse(&blob) {
                let mut e = Engine::new_verified(&bb, &mut arena, &mut params, &k).unwrap();
                e.apply(active_patch).unwrap();
                assert!(e.apply(p).is_err(), "{task}: byte {at} accepted by apply");
                assert_eq!(e.task_name(), active.0);
                assert!(e.params() == table.as_slice(), "{task}: byte {at}");
                if tried % 97 == 0 {
                    assert_eq!(e.run_f32(&x).unwrap().quantized(), want.as_slice());
                }
                tried += 1;
            }
            blob.copy_from_slice(signed);
        }
    }
    assert!(tried > 1000, "{tried}");
}

#[test]
fn unsigned_and_foreign_blobs_are_refused_with_a_key() {
    let b = blobs();
    let k = vkey();
    assert_eq!(
        Backbone::parse_verified(&b.backbone, &k).unwrap_err(),
        FormatError::Unsigned
    );
    let plain_bb = Backbone::parse(&b.backbone).unwrap();
    let mut arena = vec![0i8; plain_bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); plain_bb.params_len()];
    assert_eq!(
        Engine::new_verified(&plain_bb, &mut arena, &mut params, &k).err(),
        Some(Error::Format(FormatError::Unsigned))
    );
    // Signed by another key.
    let other = other_key().verify_key();
    let want_wrong = FormatError::WrongKey {
        expected: other.id(),
        found: k.id(),
    };
    assert_eq!(
        Backbone::parse_verified(&b.signed_backbone, &other).unwrap_err(),
        want_wrong
    );
    // A backbone verified with one key is checked again for another.
    let bb = Backbone::parse_verified(&b.signed_backbone, &k).unwrap();
    assert_eq!(bb.verify(&other), Err(want_wrong));
    // Junk after the blob is no signature.
    let mut junk = b.backbone.clone();
    junk.extend_from_slice(&[0u8; TRAILER_LEN]);
    assert_eq!(
        Backbone::parse_verified(&junk, &k).unwrap_err(),
        FormatError::Unsigned
    );
    // Patches: unsigned, another key's, the signature of another patch.
    let mut e = Engine::new_verified(&bb, &mut arena, &mut params, &k).unwrap();
    let x = input(&bb);
    let base = e.run_f32(&x).unwrap().quantized().to_vec();
    let (_, sb_plain, sb_signed) = &b.patches[0];
    let (_, dw_plain, dw_signed) = &b.patches[1];
    assert_eq!(
        Patch::parse_verified(sb_plain, &k).unwrap_err(),
        FormatError::Unsigned
    );
    assert_eq!(
        e.apply(Patch::parse(sb_plain).unwrap()).unwrap_err(),
        FormatError::Unsigned
    );
    let foreign = graftnet_tools::signing::sign_blob(sb_plain, &other_key()).unwrap();
    assert_eq!(
        e.apply(Patch::parse(&foreign).unwrap()).unwrap_err(),
        FormatError::WrongKey {
            expected: k.id(),
            found: other.id()
        }
    );
    // A patch verified with another key is checked again.
    let p = Patch::parse_verified(&foreign, &other).unwrap();
    assert!(matches!(e.apply(p), Err(FormatError::WrongKey { .. })));
    let mut swapped = dw_plain.clone();
    swapped.extend_from_slice(&sb_signed[sb_plain.len()..]);
    assert_eq!(
        e.apply(Patch::parse(&swapped).unwrap()).unwrap_err(),
        FormatError::BadSignature
    );
    assert_eq!(e.task_name(), "base");
    assert_eq!(e.run_f32(&x).unwrap().quantized(), base.as_slice());
    e.apply(Patch::parse(dw_signed).unwrap()).unwrap();
    assert_eq!(e.task_name(), "mnist-dw");
    // A bad key is refused when it is made.
    assert_eq!(VerifyKey::from_bytes(&[0; 32]), Err(FormatError::BadKey));
    assert_eq!(KeyId([0xab; 8]).to_string(), "abababababababab");
    let msg = FormatError::WrongKey {
        expected: k.id(),
        found: other.id(),
    }
    .to_string();
    assert!(msg.contains(&k.id().to_string()) && msg.contains(&other.id().to_string()));
}

#[test]
fn signed_patches_stream_through_embedded_io() {
    let b = blobs();
    let k = vkey();
    let (_, plain, signed) = &b.patches[2];
    let mut buf = vec![0u8; signed.len()];
    let mut reader: &[u8] = signed;
    let p = Patch::read_verified(&mut reader, &mut buf, &k).unwrap();
    assert_eq!(p.bytes(), plain.as_slice());
    // An unsigned stream ends where the trailer would begin.
    let mut reader: &[u8] = plain;
    let mut buf = vec![0u8; signed.len()];
    assert_eq!(
        Patch::read_verified(&mut reader, &mut buf, &k).unwrap_err(),
        FormatError::Unsigned
    );
    // A buffer without room for the trailer, and a modified stream.
    let mut reader: &[u8] = signed;
    let mut small = vec![0u8; signed.len() - 1];
    assert!(matches!(
        Patch::read_verified(&mut reader, &mut small, &k),
        Err(FormatError::BufferTooSmall { need, .. }) if need as usize == signed.len()
    ));
    let mut bad = signed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let mut reader: &[u8] = &bad;
    let mut buf = vec![0u8; signed.len()];
    assert_eq!(
        Patch::read_verified(&mut reader, &mut buf, &k).unwrap_err(),
        FormatError::BadSignature
    );
    // The unsigned reader still reads the patch alone (the trailer stays
    // in the stream).
    let mut reader: &[u8] = signed;
    let mut buf = vec![0u8; plain.len()];
    Patch::read(&mut reader, &mut buf).unwrap();
    assert_eq!(reader.len(), TRAILER_LEN);
}

/// `export --backbone` over a signed backbone: the backbone is compared by
/// its content and kept as it was (signature included) when not signing.
#[test]
fn export_for_a_signed_backbone() {
    let b = blobs();
    let m = models();
    let dir = scratch("signatures-reuse");
    let old = dir.join("old.gnb");
    std::fs::write(&old, &b.signed_backbone).unwrap();
    let opts = ExportOptions {
        base: m.join("mnv2/base.folded.onnx"),
        calib: m.join("data/fashion_calib_x.npy"),
        out: dir.join("out"),
        tasks: vec![("mnist-sb".into(), m.join("mnv2/mnist-sb.folded.onnx"))],
        backbone: Some(old),
        ..Default::default()
    };
    export(&opts).unwrap();
    let out = |f: &str| std::fs::read(dir.join("out").join(f)).unwrap();
    assert_eq!(out("backbone.gnb"), b.signed_backbone);
    assert_eq!(
        out("mnist-sb.gnp"),
        b.patches[0].1,
        "patches unsigned without --sign"
    );
    let _ = std::fs::remove_dir_all(dir);
}
