//! Inputs the fuzz targets (`runtime/fuzz`) found, reduced to the change
//! that matters, on the fuzz crate's seed backbone (a real export).

use graftnet::format::backbone::{self, field, TENSOR_LEN};
use graftnet::{Backbone, ChannelRequant, Engine, FormatError};

static TINY: &[u8] = include_bytes!("../fuzz/seeds/backbone/tiny.gnb");

fn resealed(edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = TINY.to_vec();
    edit(&mut b);
    backbone::seal(&mut b);
    b
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn tensor_record(b: &[u8], t: usize) -> usize {
    let off = u32::from_le_bytes(
        b[field::TENSORS_OFF..field::TENSORS_OFF + 4]
            .try_into()
            .unwrap(),
    );
    off as usize + t * TENSOR_LEN
}

fn scores_after(bb: &Backbone<'_>, fill: i8) -> Vec<i8> {
    let mut arena = vec![fill; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(bb, &mut arena, &mut params).unwrap();
    let input: Vec<i8> = (0..bb.input().len()).map(|i| (i * 37) as i8).collect();
    e.run(&input).unwrap().quantized().to_vec()
}

/// backbone_resealed, crash-6c20582a: the header's input tensor moved to
/// an intermediate one (byte 28: 0 -> 20, re-sealed). The graph's first op
/// then read a tensor nothing wrote in that inference, so the scores
/// depended on what the previous inference left in the arena (the AVX-512
/// run and the scalar run after it differed). Now refused at parse.
#[test]
fn an_op_reading_an_unwritten_tensor_is_refused() {
    let bb = Backbone::parse(TINY).unwrap();
    assert_eq!(bb.header().input, 0);
    // The seed's scores do not depend on the arena's previous contents.
    assert_eq!(scores_after(&bb, 0), scores_after(&bb, 0x55));

    let blob = resealed(|b| set_u16(b, field::INPUT, 20));
    assert!(matches!(
        Backbone::parse(&blob),
        Err(FormatError::BadOp {
            op: 0,
            what: "reads a tensor that neither the input nor an earlier op writes"
        })
    ));
}

/// No op may read the class scores: the head writes only the active
/// task's classes.
#[test]
fn an_op_reading_the_output_is_refused() {
    let bb = Backbone::parse(TINY).unwrap();
    let output = bb.header().output;
    // Make the last op before the head read the output instead of its input.
    let head = bb.head_op();
    let ops_off = bb.header().ops_off as usize;
    let blob = resealed(|b| set_u16(b, ops_off + (head - 1) * 48 + 2, output));
    let err = Backbone::parse(&blob).unwrap_err();
    assert!(
        matches!(err, FormatError::BadOp { what, .. } if what.starts_with("reads a tensor")),
        "{err}"
    );
}

/// An alias (reshape) must sit on its root's storage with as many
/// elements; else it reads bytes its root's writer never wrote.
#[test]
fn an_alias_off_its_root_is_refused() {
    let bb = Backbone::parse(TINY).unwrap();
    let op = bb.op(bb.n_ops() - 2);
    let (src, dst) = (op.in0 as usize, op.out as usize);
    // Tensor `dst` as an alias of `src`: refused unless same offset and size.
    let blob = resealed(|b| {
        let at = tensor_record(b, dst);
        set_u16(b, at + 6, src as u16);
    });
    let err = Backbone::parse(&blob).unwrap_err();
    assert!(
        matches!(err, FormatError::BadTensor { what, .. } if what.starts_with("an alias")),
        "{err}"
    );
    // An alias of an alias is refused too.
    let blob = resealed(|b| {
        let at = tensor_record(b, src);
        set_u16(b, at + 6, dst as u16);
        let at = tensor_record(b, dst);
        set_u16(b, at + 6, src as u16);
    });
    assert!(Backbone::parse(&blob).is_err());
}

static TINY_LOGITS: &[u8] = include_bytes!("../fuzz/seeds/patch/tiny-logits.gnp");

/// patch_resealed, crash-6bd3fbd9: the patch header's class count (bytes
/// 28..30) changed from 4 to 36, re-sealed. `apply` took the class count
/// from the entries (4) and accepted the patch, so `Patch::classes()` (what
/// a device reports, e.g. the MCU self-test) disagreed with the scores the
/// engine returned. Now refused, and the active task stays.
#[test]
fn a_patch_whose_header_class_count_disagrees_is_refused() {
    use graftnet::format::patch;
    let bb = Backbone::parse(TINY).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let good = graftnet::Patch::parse(TINY_LOGITS).unwrap();
    assert_eq!(good.classes(), 4);
    e.apply(good).unwrap();
    let before = e.params().to_vec();

    let mut blob = TINY_LOGITS.to_vec();
    set_u16(&mut blob, patch::field::CLASSES, 36);
    patch::seal(&mut blob);
    let p = graftnet::Patch::parse(&blob).unwrap();
    assert_eq!(
        e.apply(p).unwrap_err(),
        FormatError::BadEntry {
            entry: 0,
            op: bb.header().head_op,
            what: "the patch header's class count differs from its task's",
        }
    );
    assert_eq!(e.task_name(), good.name());
    assert_eq!(e.params(), &before[..]);
}
