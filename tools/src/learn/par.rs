//! Deterministic data parallelism for the trainer.
//!
//! Work is cut into `threads` contiguous pieces whose bounds depend only on
//! the problem size and the thread count, each piece runs on its own scoped
//! thread, and partial results (weight gradients, batch statistics) are
//! summed in piece order. So a training run is bit-for-bit repeatable for a
//! given seed and thread count, whatever the scheduler does. (rayon's work
//! stealing would make the summation order, and so the bits, vary.)

use std::ops::Range;

/// Below this many multiply-adds a piece is not worth a thread.
const MIN_WORK_PER_THREAD: usize = 1 << 15;

/// `n` items cut into at most `parts` contiguous non-empty ranges.
pub fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (n * i / parts)..(n * (i + 1) / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// How many threads `n` items of `work_per_item` each deserve.
pub fn threads_for(threads: usize, n: usize, work_per_item: usize) -> usize {
    let total = n.saturating_mul(work_per_item.max(1));
    threads
        .clamp(1, (total / MIN_WORK_PER_THREAD).max(1))
        .min(n.max(1))
}

/// Runs `f` on each range of [`split`]`(n, threads)`, in parallel, and
/// returns the results in range order.
pub fn map<T: Send>(threads: usize, n: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let ranges = split(n, threads);
    if ranges.len() <= 1 {
        return ranges.into_iter().map(&f).collect();
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ranges.into_iter().map(|r| s.spawn(move || f(r))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("trainer worker thread panicked"))
            .collect()
    })
}

/// Splits `out` (rows of `row_len` values) into the row ranges of
/// [`split`]`(rows, threads)` and runs `f(row_range, rows_slice)` on each in
/// parallel; returns the results in range order.
pub fn map_rows<T: Send>(
    threads: usize,
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> T + Sync,
) -> Vec<T> {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let ranges = split(rows, threads);
    if ranges.len() <= 1 {
        return ranges.into_iter().map(|r| f(r, &mut *out)).collect();
    }
    std::thread::scope(|s| {
        let f = &f;
        let mut rest = out;
        let mut handles = Vec::new();
        for r in ranges {
            let (piece, tail) = rest.split_at_mut(r.len() * row_len);
            rest = tail;
            handles.push(s.spawn(move || f(r, piece)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("trainer worker thread panicked"))
            .collect()
    })
}

/// Runs `f(offset, piece)` over `threads` contiguous pieces of `out` in
/// parallel (for element-wise work; `offset` is the piece's start).
pub fn for_each_piece(threads: usize, out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    let t = threads_for(threads, out.len(), 1);
    map_rows(t, out, 1, |r, piece| f(r.start, piece));
}

/// Element-wise sum of equally long vectors, in order.
pub fn sum_in_order(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut it = parts.into_iter();
    let mut acc = it.next().unwrap_or_default();
    for p in it {
        for (a, b) in acc.iter_mut().zip(&p) {
            *a += b;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in [0, 1, 2, 7, 128] {
            for t in 1..5 {
                let r = split(n, t);
                let total: usize = r.iter().map(|r| r.len()).sum();
                assert_eq!(total, n);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }

    #[test]
    fn map_rows_gives_each_range_its_rows() {
        let mut v = vec![0f32; 10 * 3];
        map_rows(3, &mut v, 3, |r, rows| {
            for (i, row) in rows.chunks_mut(3).enumerate() {
                row.fill((r.start + i) as f32);
            }
        });
        for (i, row) in v.chunks(3).enumerate() {
            assert!(row.iter().all(|&x| x == i as f32));
        }
    }
}
