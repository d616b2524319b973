//! Multi-threaded inference (feature `std`): every large convolution is
//! split into slabs of output rows, one per thread; everything else runs on
//! the calling thread. The threads live for one inference and meet at a
//! barrier after every op, so an op only starts when its inputs are complete.
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
//!   wait at the barrier holding no views;
//! - every view is dropped before the thread reaches the barrier.
//!
//! Results are bit-identical to the single-threaded run: a slab is computed
//! by the same kernel with the geometry of those rows (`row_slab`).
#![allow(unsafe_code)]

extern crate std;

use core::sync::atomic::{AtomicUsize, Ordering};

use super::{row_slab, run_conv, run_op, split_io, Engine, TaskView};
use crate::format::OpKind;

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

/// Output rows `[oy0, oy1)` of thread `t` out of `n` for `oh` rows.
fn slab(t: usize, n: usize, oh: usize) -> (usize, usize) {
    let per = oh.div_ceil(n);
    ((t * per).min(oh), ((t + 1) * per).min(oh))
}

/// Runs one inference on `n` threads.
pub(super) fn execute(e: &mut Engine<'_, '_>, n: usize) {
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
    let barrier = SpinBarrier::new(n);
    let worker = |t: usize| {
        let (mut base, mut patch) = (base0.clone(), patch0.clone());
        let mut off = 0usize;
        for i in 0..view.bb.n_ops() {
            let (run, slots) = view.prepare(i, &mut base, &mut patch, off);
            let g = run.g;
            let conv = matches!(run.op.kind, OpKind::Conv | OpKind::DwConv);
            let macs = g.oh * g.ow * g.cout * g.row_len();
            // Only ordinary geometry is split: padding smaller than the
            // kernel keeps every slab's first input row inside the input.
            let sane = run.op.pads.iter().all(|&p| (p as usize) < g.kh.max(g.kw));
            let split = conv && sane && g.oh >= n && macs >= MIN_PARALLEL_MACS;
            if split {
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
                            arena.view(run.ta.arena_off as usize + in_off, run.ta.len() - in_off),
                            arena.view_mut(
                                run.to.arena_off as usize + oy0 * row_bytes,
                                (oy1 - oy0) * row_bytes,
                            ),
                        )
                    };
                    run_conv(&kernels, &run, &sub, a, out);
                }
            } else if t == 0 {
                // SAFETY: the other threads wait at the barrier holding no
                // views, so thread 0 has the arena to itself for this op.
                let whole = unsafe { arena.view_mut(0, arena.len) };
                let (a, b, out) = split_io(whole, &run.ta, run.tb.as_ref(), &run.to, run.out_len);
                run_op(&kernels, &run, a, b, out);
            }
            off += slots;
            barrier.wait();
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
