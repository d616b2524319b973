//! Multi-threaded inference (feature `std`): every large convolution is
//! split into slabs of output rows (1x1 convolutions into ranges of pixels,
//! which balances 7x7 maps too), and large residual adds, squeeze-excite
//! multiplies and lookups into ranges of pixels, one per thread; everything
//! else runs on the calling thread. The threads live for one inference. They
//! meet at a barrier after an op they shared and before an op they will
//! share; between two ops that thread 0 runs alone nobody waits.
//!
//! Why unsafe: all threads write into the one arena at once. Borrow checking
//! cannot see that their output slabs are disjoint and that the barrier
//! orders one op's writes before the next op's reads, so the arena is shared
//! as a raw pointer and each thread re-borrows exactly the ranges it owns.
//! The invariants that make this sound:
//! - the backbone's validation guarantees an op's output storage overlaps
//!   none of its inputs (so shared input views and the output slabs never
//!   alias);
//! - slabs of one op are disjoint row ranges of its output;
//! - ops that are not split run on thread 0 only, while the other threads
//!   hold no views (they wait at the barrier before the next shared op);
//! - every view is dropped before the thread reaches the barrier.
//!
//! Results are bit-identical to the single-threaded run: a slab is computed
//! by the same kernel with the geometry of those rows (`row_slab`).
#![allow(unsafe_code)]

extern crate std;

use core::sync::atomic::{AtomicUsize, Ordering};

use super::{row_slab, run_conv, run_op, split_io, Engine, OpRun, TaskView};
use crate::format::OpKind;
use crate::kernels::ConvGeom;

/// Convolutions below this many multiply-accumulates run on one thread:
/// waking the others costs more than it saves.
const MIN_PARALLEL_MACS: usize = 1 << 18;

/// A spinning barrier: ops take tens of microseconds, far less than waking
/// a sleeping thread, so waiters spin (yielding after a while, for
/// oversubscribed machines).
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == gen {
            if spins < 1 << 11 {
                core::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// The arena as a raw pointer shared by the worker threads.
#[derive(Clone, Copy)]
struct ArenaPtr {
    ptr: *mut i8,
    len: usize,
}

// SAFETY: the pointer is only dereferenced through `view` / `view_mut`,
// whose callers uphold the disjointness rules in the module doc.
unsafe impl Send for ArenaPtr {}
// SAFETY: as above.
unsafe impl Sync for ArenaPtr {}

impl ArenaPtr {
    /// A shared view of `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len`, and no thread writes these bytes while the
    /// view lives.
    unsafe fn view<'x>(self, off: usize, len: usize) -> &'x [i8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds (caller), not written concurrently (caller).
        unsafe { core::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// An exclusive view of `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len`, and no other view of these bytes (shared or
    /// exclusive, on any thread) lives at the same time.
    unsafe fn view_mut<'x>(self, off: usize, len: usize) -> &'x mut [i8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds and unaliased (caller).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

/// How one op is shared among the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// thread 0 alone
    No,
    /// a convolution, by slabs of output rows
    Rows,
    /// a 1x1 convolution, by ranges of pixels
    Pixels,
    /// `Add`, `Mul`, `Lut`: by ranges of pixels of the output
    Elementwise,
}

/// Elementwise ops below this many output bytes run on one thread.
const MIN_PARALLEL_ELEMS: usize = 1 << 13;

fn split_of(run: &OpRun<'_>, n: usize) -> Split {
    let g = run.g;
    match run.op.kind {
        OpKind::Conv | OpKind::DwConv => {
            let macs = g.oh * g.ow * g.cout * g.row_len();
            // Only ordinary geometry is split: padding smaller than the
            // kernel keeps every slab's first input row inside the input.
            let sane = run.op.pads.iter().all(|&p| (p as usize) < g.kh.max(g.kw));
            if macs < MIN_PARALLEL_MACS || !sane {
                Split::No
            } else if run.op.kind == OpKind::Conv && g.is_pointwise() && g.oh * g.ow >= n {
                Split::Pixels
            } else if g.oh >= n {
                Split::Rows
            } else {
                Split::No
            }
        }
        OpKind::Add | OpKind::Mul | OpKind::Lut => {
            let c = run.to.c as usize;
            let ok = c > 0
                && run.out_len >= MIN_PARALLEL_ELEMS
                && run.out_len.is_multiple_of(c)
                && run.ta.len() == run.out_len
                && run
                    .tb
                    .is_none_or(|tb| tb.len() == run.out_len || tb.len() == c);
            if ok && run.out_len / c >= n {
                Split::Elementwise
            } else {
                Split::No
            }
        }
        _ => Split::No,
    }
}

/// Output rows `[oy0, oy1)` of thread `t` out of `n` for `oh` rows.
fn slab(t: usize, n: usize, oh: usize) -> (usize, usize) {
    let per = oh.div_ceil(n);
    ((t * per).min(oh), ((t + 1) * per).min(oh))
}

/// Runs ops `[from, to)` of an inference on `n` threads.
pub(super) fn execute(e: &mut Engine<'_, '_>, n: usize, from: usize, to: usize) {
    let arena = ArenaPtr {
        ptr: e.arena.as_mut_ptr(),
        len: e.arena.len(),
    };
    let view = TaskView {
        bb: &e.bb,
        tq: e.tq,
        classes: e.classes,
        params: e.params,
    };
    let kernels = e.kernels;
    let (base0, patch0) = e.cursors();
    let off0 = e.param_offset(from);
    let barrier = SpinBarrier::new(n);
    let worker = |t: usize| {
        let (mut base, mut patch) = (base0.clone(), patch0.clone());
        let mut off = off0;
        let n_ops = to.min(view.bb.n_ops());
        // Every thread walks the ops and takes the same decisions, one op
        // ahead, so it knows whether the next op needs the others.
        let mut next = (from < n_ops).then(|| {
            let (first, slots) = view.prepare(from, &mut base, &mut patch, off);
            off += slots;
            let sp = split_of(&first, n);
            (first, sp)
        });
        for i in from..n_ops {
            let Some((run, split)) = next.take() else {
                break;
            };
            match split {
                Split::Rows => {
                    let g = run.g;
                    let (oy0, oy1) = slab(t, n, g.oh);
                    // (with `sane` geometry a non-empty slab starts inside the input)
                    let slab_geom = (oy0 < oy1).then(|| row_slab(&g, oy0, oy1));
                    if let Some((sub, in_off)) = slab_geom.filter(|&(_, off)| off < run.ta.len()) {
                        let row_bytes = g.ow * g.cout;
                        // SAFETY: the input tensor lies in the arena (validated)
                        // and no thread writes it during this op (outputs never
                        // overlap inputs); the output slab is this thread's own
                        // row range of the op's output.
                        let (a, out) = unsafe {
                            (
                                arena.view(
                                    run.ta.arena_off as usize + in_off,
                                    run.ta.len() - in_off,
                                ),
                                arena.view_mut(
                                    run.to.arena_off as usize + oy0 * row_bytes,
                                    (oy1 - oy0) * row_bytes,
                                ),
                            )
                        };
                        run_conv(&kernels, &run, &sub, a, out);
                    }
                }
                Split::Pixels => {
                    let g = run.g;
                    let (p0, p1) = slab(t, n, g.oh * g.ow);
                    if p0 < p1 {
                        // A 1x1 conv is a GEMM over pixels: pixels [p0, p1)
                        // are a 1-row image of their own.
                        let sub = ConvGeom {
                            ih: 1,
                            iw: p1 - p0,
                            oh: 1,
                            ow: p1 - p0,
                            ..g
                        };
                        // SAFETY: as for `Split::Rows`: input not written
                        // during the op, output range owned by this thread.
                        let (a, out) = unsafe {
                            (
                                arena.view(
                                    run.ta.arena_off as usize + p0 * g.cin,
                                    (p1 - p0) * g.cin,
                                ),
                                arena.view_mut(
                                    run.to.arena_off as usize + p0 * g.cout,
                                    (p1 - p0) * g.cout,
                                ),
                            )
                        };
                        run_conv(&kernels, &run, &sub, a, out);
                    }
                }
                Split::Elementwise => {
                    let c = run.to.c as usize;
                    let (p0, p1) = slab(t, n, run.out_len / c);
                    if p0 < p1 {
                        let (o0, len) = (p0 * c, (p1 - p0) * c);
                        // SAFETY: as for `Split::Rows`; a broadcast operand
                        // (one value per channel) is read whole by every
                        // thread, and nobody writes it during the op.
                        let (a, b, out) = unsafe {
                            let b = match run.tb {
                                Some(tb) if tb.len() == run.ta.len() => {
                                    arena.view(tb.arena_off as usize + o0, len)
                                }
                                Some(tb) => arena.view(tb.arena_off as usize, tb.len()),
                                None => &[],
                            };
                            (
                                arena.view(run.ta.arena_off as usize + o0, len),
                                b,
                                arena.view_mut(run.to.arena_off as usize + o0, len),
                            )
                        };
                        run_op(&kernels, &run, a, b, out);
                    }
                }
                Split::No => {
                    if t == 0 {
                        // SAFETY: the other threads are at a barrier or
                        // running ahead through unsplit ops without views,
                        // so thread 0 has the arena to itself for this op.
                        let whole = unsafe { arena.view_mut(0, arena.len) };
                        let (a, b, out) =
                            split_io(whole, &run.ta, run.tb.as_ref(), &run.to, run.out_len);
                        run_op(&kernels, &run, a, b, out);
                    }
                }
            }
            let next_split = if i + 1 < n_ops {
                let (run, slots) = view.prepare(i + 1, &mut base, &mut patch, off);
                off += slots;
                let sp = split_of(&run, n);
                next = Some((run, sp));
                sp != Split::No
            } else {
                false
            };
            // Threads meet when this op's output was written by several of
            // them, or when the next op needs thread 0's output. Between
            // two unsplit ops thread 0 runs on alone.
            if split != Split::No || next_split {
                barrier.wait();
            }
        }
    };
    std::thread::scope(|s| {
        for t in 1..n {
            let w = &worker;
            s.spawn(move || w(t));
        }
        worker(0);
    });
}
