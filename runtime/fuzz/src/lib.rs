//! The checks behind the fuzz targets (`fuzz_targets/*.rs`, one line each).
//!
//! Every target feeds bytes to the runtime as a device would get them and
//! asserts the runtime's contracts, beyond "does not panic":
//!
//! - an accepted backbone re-emits its header and records byte for byte
//!   (reserved bytes and the checksum aside): parse → emit round trip;
//! - an accepted task runs, its scores have the task's class count, and the
//!   best kernel table gives the scalar reference's scores bit for bit;
//! - a refused patch leaves the engine exactly as it was: task name, class
//!   count, active patch, parameter table, input quantization and the scores
//!   of a fresh run;
//! - an accepted patch can be switched away (`reset`) back to the base
//!   task's exact state and applied again with the same scores;
//! - the streaming loader gives exactly what parsing the whole blob gives,
//!   or the error its first failing step must give, with a reader that
//!   fails or ends early at any byte.
//!
//! The "resealed" variants fix up the checksum (and the fingerprint a patch
//! names) of the mutated bytes before parsing, with the runtime's own
//! `seal`, so mutations get past the CRC and reach the graph, entry and
//! quantization checks.
//!
//! The seed blobs (`seeds/`, written by `seeds.sh`) are real exports; the
//! patch targets apply patches to the two seed backbones compiled in here.

use std::sync::OnceLock;

use graftnet::format::backbone::{self, HEADER_LEN, OP_LEN, TENSOR_LEN};
use graftnet::format::patch;
use graftnet::format::OpKind;
use graftnet::kernels::Kernels;
use graftnet::{Backbone, Engine, FormatError, Patch, ChannelRequant};

/// The backbones of the seed patches (`seeds.sh`): the backbone targets'
/// seed, and the shipped MobileNetV3 (not a backbone seed: at 214 KB it runs
/// about 3x slower per input).
pub static BACKBONES: [&[u8]; 2] = [
    include_bytes!("../seeds/backbone/tiny.gnb"),
    include_bytes!("../seeds/mnv3.gnb"),
];

/// The seed patches, for both backbones (`seeds.sh`).
pub static PATCHES: [&[u8]; 6] = [
    include_bytes!("../seeds/patch/tiny-sb.gnp"),
    include_bytes!("../seeds/patch/tiny-dw.gnp"),
    include_bytes!("../seeds/patch/tiny-logits.gnp"),
    include_bytes!("../seeds/patch/tiny-head.gnp"),
    include_bytes!("../seeds/patch/mnv3-mnist-sb.gnp"),
    include_bytes!("../seeds/patch/mnv3-fashion-updown-sb.gnp"),
];

/// A backbone whose arena or parameter table is larger is parsed and
/// round-tripped but not run: a fuzzed graph may legitimately declare
/// large tensors, and allocating them would only measure the allocator.
pub const MAX_ARENA: usize = 8 << 20;
/// See [`MAX_ARENA`].
pub const MAX_PARAMS: usize = 1 << 20;
/// A backbone whose graph needs more multiply-accumulates is not run (a
/// fuzzed 255x255 pool over a large map would take seconds per input).
pub const MAX_WORK: u64 = 20_000_000;

/// The seed backbones, parsed once.
pub fn backbones() -> &'static [Backbone<'static>] {
    static PARSED: OnceLock<Vec<Backbone<'static>>> = OnceLock::new();
    PARSED.get_or_init(|| {
        BACKBONES
            .iter()
            .map(|b| Backbone::parse(b).expect("seed backbone parses (run seeds.sh)"))
            .collect()
    })
}

/// Fixes up a mutated backbone: total length = the bytes given, then the
/// runtime's `seal` (fingerprint and checksum over those bytes).
pub fn reseal_backbone(blob: &mut [u8]) {
    if blob.len() < HEADER_LEN {
        return;
    }
    let len = blob.len() as u32;
    blob[backbone::field::TOTAL_LEN..backbone::field::TOTAL_LEN + 4]
        .copy_from_slice(&len.to_le_bytes());
    backbone::seal(blob);
}

/// Fixes up a mutated patch: total length = the bytes given, the backbone
/// fingerprint = `fingerprint`, then the runtime's `seal` (checksum).
pub fn reseal_patch(blob: &mut [u8], fingerprint: u64) {
    if blob.len() < patch::HEADER_LEN {
        return;
    }
    let len = blob.len() as u32;
    blob[patch::field::TOTAL_LEN..patch::field::TOTAL_LEN + 4].copy_from_slice(&len.to_le_bytes());
    blob[patch::field::BACKBONE..patch::field::BACKBONE + 8]
        .copy_from_slice(&fingerprint.to_le_bytes());
    patch::seal(blob);
}

/// Backbone target: parse, round-trip the records, `Engine::new`, run, and
/// apply one of the seed patches (picked by the input's length and last
/// byte) retargeted at it (fingerprint and checksum fixed up), checked like
/// [`patch_case`]'s.
pub fn backbone_case(data: &[u8], reseal: bool) {
    let mut owned;
    let blob = if reseal {
        owned = data.to_vec();
        reseal_backbone(&mut owned);
        &owned[..]
    } else {
        data
    };
    let Ok(bb) = Backbone::parse(blob) else {
        return;
    };
    records_round_trip(&bb);
    if bb.arena_len() > MAX_ARENA || bb.params_len() > MAX_PARAMS || work(&bb) > MAX_WORK {
        return;
    }
    let pick = (blob.len() + blob.last().map_or(0, |&b| b as usize)) % PATCHES.len();
    let mut retargeted = PATCHES[pick].to_vec();
    reseal_patch(&mut retargeted, bb.fingerprint());
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    // A base task whose parameters cannot be derived is refused here
    // (`BadQuantization`), as `graftnet export` would refuse it.
    let Ok(mut e) = Engine::new(&bb, &mut arena, &mut params) else {
        return;
    };
    let input = input_for(&bb);
    let base = State::checked(&mut e, &input);
    let p = Patch::parse(&retargeted).expect("a resealed seed patch parses");
    if apply_checked(&mut e, p, &input, None, &base).is_some() {
        e.reset();
        assert_eq!(State::of(&mut e, &input), base, "reset after a patch");
    }
}

/// Patch target: parse; on the seed backbone the patch names (else one
/// picked by the input's length), optionally with another task active
/// first, apply it (`apply_newer` for some inputs) and check the engine.
pub fn patch_case(data: &[u8], reseal: bool) {
    let bbs = backbones();
    let named = |fp: u64| bbs.iter().position(|b| b.fingerprint() == fp);
    let stored_fp = data
        .get(patch::field::BACKBONE..patch::field::BACKBONE + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let which = stored_fp.and_then(named).unwrap_or(data.len() % bbs.len());
    let mut owned;
    let blob = if reseal {
        owned = data.to_vec();
        reseal_patch(&mut owned, bbs[which].fingerprint());
        &owned[..]
    } else {
        data
    };
    let Ok(p) = Patch::parse(blob) else {
        return;
    };
    check_patch(&bbs[which], p, data.len());
}

/// Applies `p` on a fresh engine over `bb`, checked. `salt` picks whether
/// a seed task is active first and whether `apply_newer` is used.
fn check_patch<'a>(bb: &Backbone<'a>, p: Patch<'a>, salt: usize) {
    // Room for a head the patch brings, within bounds (a larger claim is
    // refused by `apply` with `ArenaTooSmall` / `ParamsTooSmall`).
    let sizes = bb.engine_sizes(&[p]);
    let mut arena = vec![0i8; sizes.arena.min(MAX_ARENA).max(bb.arena_len())];
    let mut params = vec![ChannelRequant::default(); sizes.params.min(MAX_PARAMS).max(bb.params_len())];
    let mut e = Engine::new(bb, &mut arena, &mut params).expect("seed backbone engine");
    let input = input_for(bb);
    let base = State::checked(&mut e, &input);
    let before = if salt % 3 == 1 {
        // Another task active first: a refusal must keep it, not the base.
        let prior = PATCHES
            .iter()
            .filter_map(|b| Patch::parse(b).ok())
            .find(|q| q.backbone_fingerprint() == bb.fingerprint())
            .expect("a seed patch for every seed backbone");
        e.apply(prior).expect("seed patch applies");
        State::of(&mut e, &input)
    } else {
        base.clone()
    };
    let min_version = (salt % 2 == 1).then_some((salt / 2 % 4) as u32);
    if let Some(first) = apply_checked(&mut e, p, &input, min_version, &before) {
        e.reset();
        assert_eq!(State::of(&mut e, &input), base, "reset after a patch");
        e.apply(p).expect("a patch accepted once is accepted again");
        assert_eq!(
            State::of(&mut e, &input),
            first,
            "same patch, different task"
        );
    }
}

/// A reader that hands out at most `chunk` bytes per call and fails (or,
/// with `eof`, ends) once `fail_after` bytes have been read.
pub struct FailingReader<'d> {
    data: &'d [u8],
    pos: usize,
    fail_after: usize,
    chunk: usize,
    eof: bool,
}

impl embedded_io::ErrorType for FailingReader<'_> {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let end = self.data.len().min(self.fail_after);
        if self.pos >= end && !buf.is_empty() {
            return if self.eof || self.pos >= self.data.len() {
                Ok(0)
            } else {
                Err(embedded_io::ErrorKind::Other)
            };
        }
        let n = buf.len().min(end - self.pos).min(self.chunk);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Streaming target. Input: `fail_after: u32 LE`, `chunk: u8` (0: no
/// limit), `mode: u8` (bit 0: end of stream instead of an error; bit 1:
/// buffer `mode >> 2` bytes shorter than the blob, else that much longer),
/// then the patch bytes. `Patch::read` must return what `Patch::parse` of
/// the whole blob returns, or exactly the error of its first failing step,
/// and read no byte past the patch; an accepted patch is then applied as in
/// [`patch_case`].
pub fn stream_case(data: &[u8]) {
    let Some((ctl, blob)) = data.split_first_chunk::<6>() else {
        return;
    };
    let fail_after = u32::from_le_bytes([ctl[0], ctl[1], ctl[2], ctl[3]]) as usize;
    let chunk = if ctl[4] == 0 {
        usize::MAX
    } else {
        ctl[4] as usize
    };
    let mode = ctl[5];
    let slack = (mode >> 2) as usize;
    let buf_len = if mode & 2 != 0 {
        blob.len().saturating_sub(slack)
    } else {
        blob.len() + slack
    };
    let mut reader = FailingReader {
        data: blob,
        pos: 0,
        fail_after,
        chunk,
        eof: mode & 1 != 0,
    };
    let mut buf = vec![0u8; buf_len];
    let got = Patch::read(&mut reader, &mut buf);
    let read = reader.pos;

    // What each step must give.
    let avail = fail_after.min(blob.len());
    let want: Result<&[u8], FormatError> = (|| {
        let hl = patch::HEADER_LEN;
        if buf_len < hl {
            return Err(FormatError::BufferTooSmall {
                need: hl as u32,
                have: buf_len as u32,
            });
        }
        if avail < hl {
            return Err(FormatError::Io);
        }
        let total = Patch::required_len(&blob[..hl])?;
        if buf_len < total {
            return Err(FormatError::BufferTooSmall {
                need: total as u32,
                have: buf_len as u32,
            });
        }
        if avail < total {
            return Err(FormatError::Io);
        }
        Patch::parse(blob).map(|p| p.bytes())
    })();
    match (&got, want) {
        (Ok(p), Ok(w)) => {
            assert_eq!(p.bytes(), w, "streamed bytes differ");
            assert_eq!(read, w.len(), "the loader read past the patch");
        }
        (Err(g), Err(w)) => assert_eq!(*g, w, "streamed error differs"),
        (g, w) => panic!("Patch::read gave {g:?}, expected {w:?}"),
    }
    if let Ok(p) = got {
        let bbs = backbones();
        let which = bbs
            .iter()
            .position(|b| b.fingerprint() == p.backbone_fingerprint())
            .unwrap_or(0);
        check_patch(&bbs[which], p, data.len());
    }
}

/// What a task switch must leave alone when it is refused.
#[derive(Clone, Debug, PartialEq)]
struct State {
    name: String,
    classes: usize,
    patch: Option<(usize, usize)>,
    params: Vec<ChannelRequant>,
    input_quant: (u32, i32),
    scores: Vec<i8>,
}

impl State {
    fn of(e: &mut Engine<'_, '_>, input: &[i8]) -> State {
        let scores = e
            .run(input)
            .expect("an accepted task runs")
            .quantized()
            .to_vec();
        State::with(e, scores)
    }
    /// [`State::of`], with the scores checked against the scalar reference.
    fn checked(e: &mut Engine<'_, '_>, input: &[i8]) -> State {
        let scores = run_checked(e, input);
        State::with(e, scores)
    }
    fn with(e: &Engine<'_, '_>, scores: Vec<i8>) -> State {
        let (s, zp) = e.input_quant();
        State {
            name: e.task_name().to_string(),
            classes: e.classes(),
            patch: e
                .patch()
                .map(|p| (p.bytes().as_ptr() as usize, p.bytes().len())),
            params: e.params().to_vec(),
            input_quant: (s.to_bits(), zp),
            scores,
        }
    }
}

/// Applies `p` (with `apply_newer` if `min_version` is given) to the
/// engine in state `before`; on refusal checks that nothing changed, on
/// success that the task runs (checked against the scalar reference).
/// Returns the new state if it was accepted.
fn apply_checked<'a>(
    e: &mut Engine<'a, '_>,
    p: Patch<'a>,
    input: &[i8],
    min_version: Option<u32>,
    before: &State,
) -> Option<State> {
    let r = match min_version {
        Some(m) => e.apply_newer(p, m),
        None => e.apply(p),
    };
    match r {
        Err(err) => {
            if let Some(min) = min_version.filter(|&m| p.task_version() < m) {
                assert_eq!(
                    err,
                    FormatError::OlderVersion {
                        version: p.task_version(),
                        min
                    }
                );
            }
            assert_eq!(
                &State::of(e, input),
                before,
                "a refused patch ({err}) changed the engine"
            );
            None
        }
        Ok(()) => {
            assert_eq!(e.task_name(), p.name());
            assert_eq!(e.classes(), p.classes() as usize);
            Some(State::checked(e, input))
        }
    }
}

/// Runs the active task with the best table and with the scalar reference;
/// they must agree bit for bit. Returns the int8 scores.
fn run_checked(e: &mut Engine<'_, '_>, input: &[i8]) -> Vec<i8> {
    let classes = e.classes();
    let best = e
        .run(input)
        .expect("an accepted task runs")
        .quantized()
        .to_vec();
    assert_eq!(best.len(), classes);
    let k = e.kernels();
    if k.name != "scalar" {
        e.set_kernels(Kernels::scalar());
        let reference = e
            .run(input)
            .expect("an accepted task runs")
            .quantized()
            .to_vec();
        e.set_kernels(k);
        assert_eq!(
            best, reference,
            "kernel table {} != scalar reference",
            k.name
        );
    }
    best
}

/// A fixed input covering the int8 range.
fn input_for(bb: &Backbone<'_>) -> Vec<i8> {
    (0..bb.input().len())
        .map(|i| (i.wrapping_mul(37) ^ (i >> 3)) as i8)
        .collect()
}

/// Multiply-accumulates (and elementwise steps) of one inference, roughly.
fn work(bb: &Backbone<'_>) -> u64 {
    (0..bb.n_ops())
        .map(|i| {
            let op = bb.op(i);
            let out = bb.tensor(op.out as usize).len() as u64;
            let taps = op.kh as u64 * op.kw as u64;
            let per = match op.kind {
                OpKind::Conv => bb.row_len(&op) as u64,
                OpKind::GlobalAvgPool => {
                    let t = bb.tensor(op.in0 as usize);
                    t.h as u64 * t.w as u64
                }
                OpKind::DwConv | OpKind::AvgPool | OpKind::MaxPool => taps,
                _ => 1,
            };
            out.saturating_mul(per.max(1))
        })
        .fold(0u64, u64::saturating_add)
}

/// The header, tensor and op records re-emitted from their parsed values
/// equal the blob's bytes, except the checksum and reserved bytes (written
/// as zero, ignored on read).
fn records_round_trip(bb: &Backbone<'_>) {
    let blob = bb.bytes();
    let h = bb.header();
    let mut got = [0u8; HEADER_LEN];
    h.emit(&mut got);
    let mut want: [u8; HEADER_LEN] = blob[..HEADER_LEN].try_into().unwrap();
    for r in [
        backbone::field::CHECKSUM..backbone::field::CHECKSUM + 4,
        38..40,
        backbone::field::RESERVED..HEADER_LEN,
    ] {
        want[r].fill(0);
    }
    assert_eq!(got, want, "header round trip");
    for t in 0..bb.n_tensors() {
        let at = h.tensors_off as usize + t * TENSOR_LEN;
        let mut got = [0u8; TENSOR_LEN];
        bb.tensor(t).emit(&mut got);
        assert_eq!(got[..], blob[at..at + TENSOR_LEN], "tensor {t} round trip");
    }
    for i in 0..bb.n_ops() {
        let at = h.ops_off as usize + i * OP_LEN;
        let mut got = [0u8; OP_LEN];
        bb.op(i).emit(&mut got);
        let mut want: [u8; OP_LEN] = blob[at..at + OP_LEN].try_into().unwrap();
        want[28..32].fill(0);
        want[40..48].fill(0);
        assert_eq!(got, want, "op {i} round trip");
    }
}
