//! Backbone blob (`.gnb`): graph, arena plan, base task and int8 weights.
//!
//! Layout (normative spec in `FORMAT.md`):
//!
//! ```text
//! header (80 B) | tensor records (16 B each) | op records (48 B each)
//!   | base task entries (4-aligned) | zero pad to 64 | weights (64-aligned)
//! ```
//!
//! [`Backbone::parse`] validates the whole blob once (checksum, section
//! bounds, every tensor and op record, the base task's entries); afterwards
//! no accessor panics and the weights are used in place.

mod task;

use super::entry::EntryIter;
use super::signature::Trailer;
#[cfg(feature = "verify")]
use super::signature::{VerifyKey, PUBLIC_KEY_LEN};
use super::{
    align_up, blob_checksum, in_bounds, rd_f32, rd_u16, rd_u32, rd_u64, wr_u16, wr_u32, wr_u64,
    Act, OpKind, ARENA_ALIGN, BACKBONE_MAGIC, NONE, VERSION, WEIGHT_ALIGN,
};
use crate::error::FormatError;
use core::cmp::Ordering;

/// Header field offsets.
pub mod field {
    #![allow(missing_docs)]
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const HEADER_LEN: usize = 6;
    pub const TOTAL_LEN: usize = 8;
    pub const CHECKSUM: usize = 12;
    pub const FINGERPRINT: usize = 16;
    pub const N_TENSORS: usize = 24;
    pub const N_OPS: usize = 26;
    pub const INPUT: usize = 28;
    pub const OUTPUT: usize = 30;
    pub const HEAD_OP: usize = 32;
    pub const MAX_CLASSES: usize = 34;
    pub const FLAGS: usize = 36;
    pub const TENSORS_OFF: usize = 40;
    pub const OPS_OFF: usize = 44;
    pub const TASK_OFF: usize = 48;
    pub const TASK_LEN: usize = 52;
    pub const WEIGHTS_OFF: usize = 56;
    pub const WEIGHTS_LEN: usize = 60;
    pub const ARENA_LEN: usize = 64;
    pub const PARAMS_LEN: usize = 68;
    pub const N_TASK_ENTRIES: usize = 72;
    pub const RESERVED: usize = 76;
}

/// Header length.
pub const HEADER_LEN: usize = 80;
/// Tensor record length.
pub const TENSOR_LEN: usize = 16;
/// Op record length.
pub const OP_LEN: usize = 48;
/// Header flag: the model ends in softmax (applied to dequantized scores).
pub const FLAG_SOFTMAX: u16 = 1;
/// Op flag: average pooling counts padded cells in the divisor.
pub const OP_FLAG_COUNT_INCLUDE_PAD: u16 = 1;
/// Largest weight row (`cin/groups * kh * kw`): keeps every int32
/// accumulator below 2^30.
pub const MAX_ROW_LEN: usize = 32768;

/// A tensor record: an int8 activation `(c, h, w)` stored NHWC in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// channels
    pub c: u16,
    /// height
    pub h: u16,
    /// width
    pub w: u16,
    /// the tensor shares storage with this one (a reshape), or `0xffff`
    pub alias_of: u16,
    /// byte offset in the arena
    pub arena_off: u32,
    /// bytes reserved (>= c*h*w; the output reserves room for `max_classes`)
    pub capacity: u32,
}

impl TensorInfo {
    /// Elements (= bytes).
    pub fn len(&self) -> usize {
        self.c as usize * self.h as usize * self.w as usize
    }
    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn parse(b: &[u8]) -> Self {
        TensorInfo {
            c: rd_u16(b, 0),
            h: rd_u16(b, 2),
            w: rd_u16(b, 4),
            alias_of: rd_u16(b, 6),
            arena_off: rd_u32(b, 8),
            capacity: rd_u32(b, 12),
        }
    }
    /// Writes the 16-byte record.
    ///
    /// # Panics
    /// If `b` is shorter than [`TENSOR_LEN`].
    pub fn emit(&self, b: &mut [u8]) {
        wr_u16(b, 0, self.c);
        wr_u16(b, 2, self.h);
        wr_u16(b, 4, self.w);
        wr_u16(b, 6, self.alias_of);
        wr_u32(b, 8, self.arena_off);
        wr_u32(b, 12, self.capacity);
    }
}

/// An op record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpInfo {
    /// kind
    pub kind: OpKind,
    /// fused clamp
    pub act: Act,
    /// first input tensor
    pub in0: u16,
    /// second input tensor or `0xffff`
    pub in1: u16,
    /// output tensor
    pub out: u16,
    /// kernel / window height
    pub kh: u8,
    /// kernel / window width
    pub kw: u8,
    /// stride (h)
    pub sh: u8,
    /// stride (w)
    pub sw: u8,
    /// padding top, left, bottom, right
    pub pads: [u8; 4],
    /// conv groups
    pub groups: u16,
    /// op flags
    pub flags: u16,
    /// offset of the int8 weights in the weight section
    pub weight_off: u32,
    /// offset of the per-channel int32 weight sums in the weight section
    pub sums_off: u32,
    /// clamp low bound (real)
    pub act_lo: f32,
    /// clamp high bound (real)
    pub act_hi: f32,
}

impl OpInfo {
    fn parse(b: &[u8; OP_LEN]) -> Result<Self, &'static str> {
        let kind = OpKind::from_u8(b[0]).ok_or("unknown op kind")?;
        let act = match b[1] {
            0 => Act::None,
            1 => Act::Clamp,
            _ => return Err("unknown activation"),
        };
        Ok(OpInfo {
            kind,
            act,
            in0: rd_u16(b, 2),
            in1: rd_u16(b, 4),
            out: rd_u16(b, 6),
            kh: b[8],
            kw: b[9],
            sh: b[10],
            sw: b[11],
            pads: [b[12], b[13], b[14], b[15]],
            groups: rd_u16(b, 16),
            flags: rd_u16(b, 18),
            weight_off: rd_u32(b, 20),
            sums_off: rd_u32(b, 24),
            act_lo: rd_f32(b, 32),
            act_hi: rd_f32(b, 36),
        })
    }
    /// Writes the 48-byte record.
    ///
    /// # Panics
    /// If `b` is shorter than [`OP_LEN`].
    #[allow(clippy::indexing_slicing)]
    pub fn emit(&self, b: &mut [u8]) {
        b[..OP_LEN].fill(0);
        b[0] = self.kind as u8;
        b[1] = self.act as u8;
        wr_u16(b, 2, self.in0);
        wr_u16(b, 4, self.in1);
        wr_u16(b, 6, self.out);
        b[8] = self.kh;
        b[9] = self.kw;
        b[10] = self.sh;
        b[11] = self.sw;
        b[12..16].copy_from_slice(&self.pads);
        wr_u16(b, 16, self.groups);
        wr_u16(b, 18, self.flags);
        wr_u32(b, 20, self.weight_off);
        wr_u32(b, 24, self.sums_off);
        wr_u32(b, 32, self.act_lo.to_bits());
        wr_u32(b, 36, self.act_hi.to_bits());
    }
}

/// Header values, as parsed or to be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    /// total blob length
    pub total_len: u32,
    /// content fingerprint (FNV-1a 64 of everything after the header)
    pub fingerprint: u64,
    /// tensor count
    pub n_tensors: u16,
    /// op count
    pub n_ops: u16,
    /// graph input tensor
    pub input: u16,
    /// graph output tensor (the classifier's scores)
    pub output: u16,
    /// the classifier op
    pub head_op: u16,
    /// the most classes a patch may have (the output's arena capacity)
    pub max_classes: u16,
    /// flags (`FLAG_SOFTMAX`)
    pub flags: u16,
    /// tensor section offset
    pub tensors_off: u32,
    /// op section offset
    pub ops_off: u32,
    /// base task offset
    pub task_off: u32,
    /// base task length
    pub task_len: u32,
    /// weight section offset (64-aligned)
    pub weights_off: u32,
    /// weight section length
    pub weights_len: u32,
    /// activation arena bytes the plan needs
    pub arena_len: u32,
    /// per-channel parameter entries the engine needs
    pub params_len: u32,
    /// entries in the base task
    pub n_task_entries: u32,
}

/// Section offsets for a backbone with the given section sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// tensor records
    pub tensors_off: usize,
    /// op records
    pub ops_off: usize,
    /// base task
    pub task_off: usize,
    /// weights
    pub weights_off: usize,
    /// whole blob
    pub total_len: usize,
}

impl Layout {
    /// The one layout rule: sections in order, task 4-aligned, weights
    /// 64-aligned.
    ///
    /// The arithmetic saturates, so header values that would overflow
    /// `usize` (a 32-bit target reading `u32` lengths) give offsets no blob
    /// can have, and the parser's comparison with the stored offsets and
    /// the blob length refuses them.
    pub fn new(n_tensors: usize, n_ops: usize, task_len: usize, weights_len: usize) -> Self {
        let tensors_off = HEADER_LEN;
        let ops_off = tensors_off.saturating_add(n_tensors.saturating_mul(TENSOR_LEN));
        let task_off = align_up(ops_off.saturating_add(n_ops.saturating_mul(OP_LEN)), 4);
        let weights_off = align_up(task_off.saturating_add(task_len), WEIGHT_ALIGN);
        Layout {
            tensors_off,
            ops_off,
            task_off,
            weights_off,
            total_len: weights_off.saturating_add(weights_len),
        }
    }
}

impl HeaderRepr {
    /// Writes the header into `blob[..80]`; the checksum and fingerprint are
    /// filled by [`seal`] once the rest of the blob is written.
    ///
    /// # Panics
    /// If `blob` is shorter than [`HEADER_LEN`].
    #[allow(clippy::indexing_slicing)]
    pub fn emit(&self, blob: &mut [u8]) {
        let b = &mut blob[..HEADER_LEN];
        b.fill(0);
        b[field::MAGIC].copy_from_slice(&BACKBONE_MAGIC);
        wr_u16(b, field::VERSION, VERSION);
        wr_u16(b, field::HEADER_LEN, HEADER_LEN as u16);
        wr_u32(b, field::TOTAL_LEN, self.total_len);
        wr_u64(b, field::FINGERPRINT, self.fingerprint);
        wr_u16(b, field::N_TENSORS, self.n_tensors);
        wr_u16(b, field::N_OPS, self.n_ops);
        wr_u16(b, field::INPUT, self.input);
        wr_u16(b, field::OUTPUT, self.output);
        wr_u16(b, field::HEAD_OP, self.head_op);
        wr_u16(b, field::MAX_CLASSES, self.max_classes);
        wr_u16(b, field::FLAGS, self.flags);
        wr_u32(b, field::TENSORS_OFF, self.tensors_off);
        wr_u32(b, field::OPS_OFF, self.ops_off);
        wr_u32(b, field::TASK_OFF, self.task_off);
        wr_u32(b, field::TASK_LEN, self.task_len);
        wr_u32(b, field::WEIGHTS_OFF, self.weights_off);
        wr_u32(b, field::WEIGHTS_LEN, self.weights_len);
        wr_u32(b, field::ARENA_LEN, self.arena_len);
        wr_u32(b, field::PARAMS_LEN, self.params_len);
        wr_u32(b, field::N_TASK_ENTRIES, self.n_task_entries);
    }

    fn parse(b: &[u8]) -> Self {
        HeaderRepr {
            total_len: rd_u32(b, field::TOTAL_LEN),
            fingerprint: rd_u64(b, field::FINGERPRINT),
            n_tensors: rd_u16(b, field::N_TENSORS),
            n_ops: rd_u16(b, field::N_OPS),
            input: rd_u16(b, field::INPUT),
            output: rd_u16(b, field::OUTPUT),
            head_op: rd_u16(b, field::HEAD_OP),
            max_classes: rd_u16(b, field::MAX_CLASSES),
            flags: rd_u16(b, field::FLAGS),
            tensors_off: rd_u32(b, field::TENSORS_OFF),
            ops_off: rd_u32(b, field::OPS_OFF),
            task_off: rd_u32(b, field::TASK_OFF),
            task_len: rd_u32(b, field::TASK_LEN),
            weights_off: rd_u32(b, field::WEIGHTS_OFF),
            weights_len: rd_u32(b, field::WEIGHTS_LEN),
            arena_len: rd_u32(b, field::ARENA_LEN),
            params_len: rd_u32(b, field::PARAMS_LEN),
            n_task_entries: rd_u32(b, field::N_TASK_ENTRIES),
        }
    }
}

/// Fills in the fingerprint and checksum of a fully written backbone blob.
///
/// # Panics
/// If `blob` is shorter than [`HEADER_LEN`].
pub fn seal(blob: &mut [u8]) {
    let fp = super::fnv1a64(blob.get(HEADER_LEN..).unwrap_or(&[]));
    wr_u64(blob, field::FINGERPRINT, fp);
    let crc = blob_checksum(blob);
    wr_u32(blob, field::CHECKSUM, crc);
}

/// Parameter-table entries an op needs (see `engine`).
pub fn param_slots(op: &OpInfo, cout: usize) -> usize {
    match op.kind {
        OpKind::Conv | OpKind::DwConv => 1 + cout,
        OpKind::Add | OpKind::Concat | OpKind::Mul => 3,
        OpKind::GlobalAvgPool => 2,
        OpKind::AvgPool => 1 + op.kh as usize * op.kw as usize,
        OpKind::MaxPool | OpKind::Lut => 1,
    }
}

/// What a validated task section says beyond its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    /// the classifier's class count under this task
    pub classes: u16,
}

/// A parsed, validated backbone borrowed from flash, an mmap or a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Backbone<'a> {
    blob: &'a [u8],
    hdr: HeaderRepr,
    base: TaskSummary,
    trailer: Option<Trailer<'a>>,
    /// The public key whose signature `parse_verified` checked.
    #[cfg(feature = "verify")]
    verified: Option<[u8; PUBLIC_KEY_LEN]>,
}

impl<'a> Backbone<'a> {
    /// Validates `blob` completely (see the module doc) and returns a view.
    ///
    /// A signature trailer after the blob (`FORMAT.md`, "Signatures") is
    /// recognized ([`Backbone::signature`]) but not checked: see
    /// `Backbone::parse_verified`.
    pub fn parse(blob: &'a [u8]) -> Result<Self, FormatError> {
        let (hdr, content) = Self::check_fixed(blob)?;
        Self::parse_content(content, hdr, Trailer::find(blob, content.len()))
    }

    /// [`Backbone::parse`] of a blob that must carry `key`'s signature.
    /// The signature is checked first, right after the fixed header
    /// fields that locate it, so nothing else of an unauthenticated blob
    /// is parsed. Errors: [`FormatError::Unsigned`],
    /// [`FormatError::WrongKey`], [`FormatError::BadSignature`], then any
    /// of `parse`'s.
    #[cfg(feature = "verify")]
    pub fn parse_verified(blob: &'a [u8], key: &VerifyKey) -> Result<Self, FormatError> {
        let (hdr, content) = Self::check_fixed(blob)?;
        let trailer = Trailer::find(blob, content.len());
        key.verify(content, trailer)?;
        let mut bb = Self::parse_content(content, hdr, trailer)?;
        bb.verified = Some(key.to_bytes());
        Ok(bb)
    }

    /// Checks that the backbone carries `key`'s signature (at once if
    /// `parse_verified` checked it with this key).
    #[cfg(feature = "verify")]
    pub fn verify(&self, key: &VerifyKey) -> Result<(), FormatError> {
        if self.verified == Some(key.to_bytes()) {
            return Ok(());
        }
        key.verify(self.blob, self.trailer)
    }

    /// The signature trailer after the blob, if any (not verified by
    /// `parse`).
    pub fn signature(&self) -> Option<Trailer<'a>> {
        self.trailer
    }

    /// The header fields that locate the content (magic, version, header
    /// and total length) and the content, `total_len` bytes.
    fn check_fixed(blob: &'a [u8]) -> Result<(HeaderRepr, &'a [u8]), FormatError> {
        let have = blob.len() as u32;
        if blob.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                need: HEADER_LEN as u32,
                have,
            });
        }
        let magic: [u8; 4] = super::rd(blob, field::MAGIC.start);
        if magic != BACKBONE_MAGIC {
            return Err(FormatError::BadMagic {
                expected: BACKBONE_MAGIC,
                found: magic,
            });
        }
        let version = rd_u16(blob, field::VERSION);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        if rd_u16(blob, field::HEADER_LEN) as usize != HEADER_LEN {
            return Err(FormatError::BadLayout { section: "header" });
        }
        let hdr = HeaderRepr::parse(blob);
        if (hdr.total_len as usize) < HEADER_LEN {
            return Err(FormatError::TooShort {
                declared: hdr.total_len,
                min: HEADER_LEN as u32,
            });
        }
        let Some(blob) = blob.get(..hdr.total_len as usize) else {
            return Err(FormatError::Truncated {
                need: hdr.total_len,
                have,
            });
        };
        Ok((hdr, blob))
    }

    /// The rest of `parse`, on the content (`total_len` bytes).
    fn parse_content(
        blob: &'a [u8],
        hdr: HeaderRepr,
        trailer: Option<Trailer<'a>>,
    ) -> Result<Self, FormatError> {
        let stored = rd_u32(blob, field::CHECKSUM);
        let computed = blob_checksum(blob);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        let layout = Layout::new(
            hdr.n_tensors as usize,
            hdr.n_ops as usize,
            hdr.task_len as usize,
            hdr.weights_len as usize,
        );
        let sections = [
            ("tensors", hdr.tensors_off as usize, layout.tensors_off),
            ("ops", hdr.ops_off as usize, layout.ops_off),
            ("task", hdr.task_off as usize, layout.task_off),
            ("weights", hdr.weights_off as usize, layout.weights_off),
        ];
        for (section, got, want) in sections {
            if got != want {
                return Err(FormatError::BadLayout { section });
            }
        }
        if layout.total_len != blob.len() {
            return Err(FormatError::BadLayout { section: "weights" });
        }
        let mut bb = Backbone {
            blob,
            hdr,
            base: TaskSummary { classes: 0 },
            trailer,
            #[cfg(feature = "verify")]
            verified: None,
        };
        bb.validate_graph()?;
        let task = bb.section(hdr.task_off, hdr.task_len);
        bb.base = bb.validate_task(task, hdr.n_task_entries, true)?;
        Ok(bb)
    }

    /// Bytes `off..off + len` (validated at parse; empty if not).
    fn section(&self, off: u32, len: u32) -> &'a [u8] {
        let off = off as usize;
        self.blob
            .get(off..off.saturating_add(len as usize))
            .unwrap_or(&[])
    }

    /// Op record `i`, if it lies in the blob.
    fn op_record(&self, i: usize) -> Option<&'a [u8; OP_LEN]> {
        let off = (self.hdr.ops_off as usize).saturating_add(i.saturating_mul(OP_LEN));
        self.blob
            .get(off..off.saturating_add(OP_LEN))
            .and_then(|b| b.try_into().ok())
    }

    /// The whole blob (its `total_len` bytes, without a signature trailer).
    pub fn bytes(&self) -> &'a [u8] {
        self.blob
    }
    /// Header values.
    pub fn header(&self) -> &HeaderRepr {
        &self.hdr
    }
    /// Content fingerprint; a patch names the backbone it belongs to by it.
    pub fn fingerprint(&self) -> u64 {
        self.hdr.fingerprint
    }
    /// Number of tensors.
    pub fn n_tensors(&self) -> usize {
        self.hdr.n_tensors as usize
    }
    /// Number of ops.
    pub fn n_ops(&self) -> usize {
        self.hdr.n_ops as usize
    }
    /// Arena bytes the export-time plan needs.
    pub fn arena_len(&self) -> usize {
        self.hdr.arena_len as usize
    }
    /// Parameter-table entries the engine needs.
    pub fn params_len(&self) -> usize {
        self.hdr.params_len as usize
    }
    /// The graph input.
    pub fn input(&self) -> TensorInfo {
        self.tensor(self.hdr.input as usize)
    }
    /// The graph output under the base task.
    pub fn output(&self) -> TensorInfo {
        self.tensor(self.hdr.output as usize)
    }
    /// The classifier op.
    pub fn head_op(&self) -> usize {
        self.hdr.head_op as usize
    }
    /// Classes of the base task.
    pub fn base_classes(&self) -> u16 {
        self.base.classes
    }
    /// The most classes any patch may have.
    pub fn max_classes(&self) -> u16 {
        self.hdr.max_classes
    }
    /// Scores pass through softmax.
    pub fn softmax(&self) -> bool {
        self.hdr.flags & FLAG_SOFTMAX != 0
    }
    /// Tensor `i` (`i < n_tensors()`, else a zero-sized record).
    pub fn tensor(&self, i: usize) -> TensorInfo {
        let off = self.hdr.tensors_off as usize + i * TENSOR_LEN;
        match self.blob.get(off..off + TENSOR_LEN) {
            Some(b) => TensorInfo::parse(b),
            None => TensorInfo {
                c: 0,
                h: 0,
                w: 0,
                alias_of: NONE,
                arena_off: 0,
                capacity: 0,
            },
        }
    }
    /// Op `i` (`i < n_ops()`; validated at parse).
    pub fn op(&self, i: usize) -> OpInfo {
        self.op_record(i)
            .and_then(|b| OpInfo::parse(b).ok())
            .unwrap_or(OpInfo {
                kind: OpKind::MaxPool,
                act: Act::None,
                in0: 0,
                in1: NONE,
                out: 0,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                pads: [0; 4],
                groups: 1,
                flags: 0,
                weight_off: 0,
                sums_off: 0,
                act_lo: 0.0,
                act_hi: 0.0,
            })
    }
    /// The weight section.
    pub fn weights(&self) -> &'a [u8] {
        self.section(self.hdr.weights_off, self.hdr.weights_len)
    }
    /// The base task's entries.
    pub fn base_entries(&self) -> EntryIter<'a> {
        EntryIter::new(
            self.section(self.hdr.task_off, self.hdr.task_len),
            self.hdr.n_task_entries,
        )
    }

    /// Weight-row length (`cin/groups * kh * kw`) of a conv op.
    pub fn row_len(&self, op: &OpInfo) -> usize {
        let cin = self.tensor(op.in0 as usize).c as usize;
        let g = (op.groups as usize).max(1);
        (cin / g) * op.kh as usize * op.kw as usize
    }
    /// Output channels of a conv op under a task with `classes` classes.
    pub fn cout(&self, op_index: usize, op: &OpInfo, classes: u16) -> usize {
        if op_index == self.head_op() {
            classes as usize
        } else {
            self.tensor(op.out as usize).c as usize
        }
    }
    /// The op's backbone weights (empty for ops without weights).
    pub fn op_weights(&self, op: &OpInfo) -> &'a [u8] {
        if !op.kind.has_weights() {
            return &[];
        }
        let n = self.tensor(op.out as usize).c as usize * self.row_len(op);
        let w = self.weights();
        w.get(op.weight_off as usize..op.weight_off as usize + n)
            .unwrap_or(&[])
    }
    /// The per-channel int32 weight sums of a conv op (little-endian).
    pub fn op_weight_sums(&self, op: &OpInfo) -> &'a [u8] {
        if !op.kind.has_weights() {
            return &[];
        }
        let n = 4 * self.tensor(op.out as usize).c as usize;
        let w = self.weights();
        w.get(op.sums_off as usize..op.sums_off as usize + n)
            .unwrap_or(&[])
    }
    /// Sum of the backbone weights of output channel `c` of a conv op.
    pub fn weight_sum(&self, op: &OpInfo, c: usize) -> i32 {
        let at = op.sums_off as usize + 4 * c;
        let w = self.weights();
        if at + 4 <= w.len() {
            super::rd_i32(w, at)
        } else {
            0
        }
    }

    fn validate_graph(&self) -> Result<(), FormatError> {
        let n_t = self.hdr.n_tensors;
        let arena = self.hdr.arena_len as usize;
        if self.hdr.input >= n_t || self.hdr.output >= n_t || self.hdr.head_op >= self.hdr.n_ops {
            return Err(FormatError::BadLayout { section: "header" });
        }
        // All tensors side by side, each 16-aligned: no plan needs more.
        let mut side_by_side = 0u64;
        for i in 0..n_t {
            let t = self.tensor(i as usize);
            let bad = |what| Err(FormatError::BadTensor { tensor: i, what });
            if t.c == 0 || t.h == 0 || t.w == 0 {
                return bad("zero-sized dimension");
            }
            // In u64: c·h·w can pass 2^32 before validation (32-bit targets).
            let len = t.c as u64 * t.h as u64 * t.w as u64;
            if (t.capacity as u64) < len {
                return bad("capacity smaller than its shape");
            }
            let cap_max = len.max(self.hdr.max_classes as u64);
            if t.capacity as u64 > cap_max {
                return Err(FormatError::Oversized {
                    what: "tensor capacity",
                    declared: t.capacity,
                    max: cap_max,
                });
            }
            if !in_bounds(t.arena_off as usize, t.capacity as usize, arena) {
                return bad("lies outside the arena");
            }
            if t.alias_of != NONE && t.alias_of >= n_t {
                return bad("aliases a tensor that does not exist");
            }
            // A reshape reads what its root's writer wrote: same bytes.
            if t.alias_of != NONE {
                let r = self.tensor(t.alias_of as usize);
                if r.alias_of != NONE || r.arena_off != t.arena_off || r.len() != t.len() {
                    return bad("an alias must share its root tensor's storage and size");
                }
            }
            if t.alias_of == NONE {
                let a = ARENA_ALIGN as u64;
                side_by_side += (t.capacity as u64 + a - 1) & !(a - 1);
            }
        }
        if self.hdr.arena_len as u64 > side_by_side {
            return Err(FormatError::Oversized {
                what: "arena",
                declared: self.hdr.arena_len,
                max: side_by_side,
            });
        }
        let out = self.output();
        if out.h != 1 || out.w != 1 || (out.capacity as usize) < self.hdr.max_classes as usize {
            return Err(FormatError::BadTensor {
                tensor: self.hdr.output,
                what: "output must be (classes,1,1) with room for max_classes",
            });
        }
        let mut params = 0usize;
        let wlen = self.hdr.weights_len as usize;
        for i in 0..self.hdr.n_ops {
            let bad = |what| Err(FormatError::BadOp { op: i, what });
            let Some(rec) = self.op_record(i as usize) else {
                return bad("record lies outside the blob");
            };
            let op = match OpInfo::parse(rec) {
                Ok(op) => op,
                Err(what) => return bad(what),
            };
            if op.in0 >= n_t || op.out >= n_t || (op.in1 != NONE && op.in1 >= n_t) {
                return bad("tensor index out of range");
            }
            // Every tensor an op reads holds this inference's values: the
            // input, or what an earlier op wrote (an alias, its root's),
            // never the class scores (the head writes only the active
            // task's classes). Else the scores would depend on what earlier
            // inferences left in the arena.
            let root = |t: u16| match self.tensor(t as usize).alias_of {
                NONE => t,
                a => a,
            };
            let written = |t: u16| {
                let r = root(t);
                r != root(self.hdr.output)
                    && (r == root(self.hdr.input)
                        || (0..i).any(|j| {
                            self.op_record(j as usize)
                                .is_some_and(|rec| root(rd_u16(rec, 6)) == r)
                        }))
            };
            if !written(op.in0) || (op.in1 != NONE && !written(op.in1)) {
                return bad("reads a tensor that neither the input nor an earlier op writes");
            }
            let a = self.tensor(op.in0 as usize);
            let o = self.tensor(op.out as usize);
            let b = if op.in1 != NONE {
                Some(self.tensor(op.in1 as usize))
            } else {
                None
            };
            // Output storage must not overlap any input: kernels read inputs
            // while writing the output.
            let ov = |x: &TensorInfo| {
                let (s0, e0) = (
                    x.arena_off as usize,
                    x.arena_off as usize + x.capacity as usize,
                );
                let (s1, e1) = (
                    o.arena_off as usize,
                    o.arena_off as usize + o.capacity as usize,
                );
                s0 < e1 && s1 < e0
            };
            if ov(&a) || b.as_ref().is_some_and(ov) {
                return bad("output storage overlaps an input");
            }
            let needs_in1 = matches!(op.kind, OpKind::Add | OpKind::Mul | OpKind::Concat);
            if needs_in1 != b.is_some() {
                return bad("wrong number of inputs");
            }
            let is_head = i == self.hdr.head_op;
            let geometry_ok = |o: &TensorInfo| {
                if op.kh == 0 || op.kw == 0 || op.sh == 0 || op.sw == 0 {
                    return false;
                }
                let hp = a.h as usize + op.pads[0] as usize + op.pads[2] as usize;
                let wp = a.w as usize + op.pads[1] as usize + op.pads[3] as usize;
                hp >= op.kh as usize
                    && wp >= op.kw as usize
                    && (hp - op.kh as usize) / op.sh as usize + 1 == o.h as usize
                    && (wp - op.kw as usize) / op.sw as usize + 1 == o.w as usize
            };
            match op.kind {
                OpKind::Conv | OpKind::DwConv => {
                    let g = op.groups as usize;
                    if !geometry_ok(&o) {
                        return bad("output shape does not follow from kernel, stride and padding");
                    }
                    if g == 0
                        || !(a.c as usize).is_multiple_of(g)
                        || !(o.c as usize).is_multiple_of(g)
                    {
                        return bad("groups do not divide the channels");
                    }
                    if op.kind == OpKind::DwConv && (g != a.c as usize || o.c != a.c) {
                        return bad("depthwise conv must have groups = cin = cout");
                    }
                    let row = self.row_len(&op);
                    if row == 0 || row > MAX_ROW_LEN {
                        return bad("weight row length out of range");
                    }
                    let n = o.c as usize * row;
                    if !in_bounds(op.weight_off as usize, n, wlen) {
                        return bad("weights lie outside the weight section");
                    }
                    if op.sums_off % 4 != 0
                        || !in_bounds(op.sums_off as usize, 4 * o.c as usize, wlen)
                    {
                        return bad("weight sums lie outside the weight section");
                    }
                    if is_head && (g != 1 || op.kind != OpKind::Conv) {
                        return bad("the classifier must be a dense conv");
                    }
                    // (`partial_cmp`: NaN bounds are refused too)
                    if op.act == Act::Clamp
                        && !matches!(
                            op.act_lo.partial_cmp(&op.act_hi),
                            Some(Ordering::Less | Ordering::Equal)
                        )
                    {
                        return bad("clamp bounds are not ordered");
                    }
                }
                OpKind::Add => {
                    let b = b.unwrap_or(a);
                    if (a.c, a.h, a.w) != (o.c, o.h, o.w) || (b.c, b.h, b.w) != (o.c, o.h, o.w) {
                        return bad("add inputs and output must have the same shape");
                    }
                }
                OpKind::Mul => {
                    let b = b.unwrap_or(a);
                    let same = (b.c, b.h, b.w) == (o.c, o.h, o.w);
                    let bcast = b.c == o.c && b.h == 1 && b.w == 1;
                    if (a.c, a.h, a.w) != (o.c, o.h, o.w) || !(same || bcast) {
                        return bad("mul shapes must match or broadcast (c,1,1)");
                    }
                }
                OpKind::Lut | OpKind::MaxPool | OpKind::AvgPool => {
                    if op.kind == OpKind::Lut {
                        if (a.c, a.h, a.w) != (o.c, o.h, o.w) {
                            return bad("lookup-table input and output must have the same shape");
                        }
                    } else if a.c != o.c || !geometry_ok(&o) {
                        return bad(
                            "pooling output shape does not follow from window, stride and padding",
                        );
                    }
                }
                OpKind::GlobalAvgPool => {
                    if o.c != a.c || o.h != 1 || o.w != 1 {
                        return bad("global pooling output must be (c,1,1)");
                    }
                }
                OpKind::Concat => {
                    let b = b.unwrap_or(a);
                    if a.h != o.h
                        || a.w != o.w
                        || b.h != o.h
                        || b.w != o.w
                        || a.c as usize + b.c as usize != o.c as usize
                    {
                        return bad("concat shapes do not add up");
                    }
                }
            }
            if is_head && (op.out != self.hdr.output || op.kind != OpKind::Conv) {
                return bad("the head op must be the conv that writes the output");
            }
            let cout = if is_head {
                self.hdr.max_classes as usize
            } else {
                o.c as usize
            };
            params += param_slots(&op, cout);
        }
        if params != self.hdr.params_len as usize {
            return Err(FormatError::BadLayout {
                section: "params_len",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Issue 13, finding 1: `"GNBB" 01 00 50 00` and 72 zero bytes (total
    /// length 0) used to pass `total_len <= blob.len()` and then panic
    /// reading the checksum. Every declared length below the header is a
    /// typed error now.
    #[test]
    fn total_length_below_the_header_is_refused() {
        let mut blob = [0u8; 80];
        blob[..8].copy_from_slice(&[b'G', b'N', b'B', b'B', 0x01, 0x00, 0x50, 0x00]);
        assert_eq!(
            Backbone::parse(&blob).unwrap_err(),
            FormatError::TooShort {
                declared: 0,
                min: 80
            }
        );
        for declared in 0..80u32 {
            blob[8..12].copy_from_slice(&declared.to_le_bytes());
            assert_eq!(
                Backbone::parse(&blob).unwrap_err(),
                FormatError::TooShort { declared, min: 80 }
            );
        }
    }

    /// Header counts and lengths near `u32::MAX` give a layout no blob
    /// has (saturating, not wrapping, on 32-bit targets too), so a header
    /// resealed with them is refused, not sliced.
    #[test]
    fn huge_section_lengths_are_refused_without_overflow() {
        let l = Layout::new(0xffff, 0xffff, u32::MAX as usize, u32::MAX as usize);
        assert!(l.total_len > u32::MAX as usize || usize::BITS == 32);
        let l = Layout::new(usize::MAX, usize::MAX, usize::MAX, usize::MAX);
        assert!(l.total_len >= usize::MAX - WEIGHT_ALIGN);
        let mut blob = [0u8; 80];
        blob[..8].copy_from_slice(b"GNBB\x01\x00\x50\x00");
        blob[8..12].copy_from_slice(&80u32.to_le_bytes());
        for f in [field::TASK_LEN, field::WEIGHTS_LEN] {
            blob[f..f + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        let crc = blob_checksum(&blob);
        blob[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Backbone::parse(&blob),
            Err(FormatError::BadLayout { .. })
        ));
    }
}
