//! splitmix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number
//! generators", 2014): the project's one seeded generator, for the kernel
//! tests and the no_std kernel self-test ([`crate::kernels`]), the
//! integration tests, and, through `graftnet_tools::rng`, the tools'
//! synthetic weights and trainer. Tiny, deterministic on every target (all
//! arithmetic in `u64`), not for secrets.

/// The generator; the field is its state (`SplitMix64(seed)` starts there).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An index in `0..n` (`n > 0`), by `u64` modulo: the same on 32- and
    /// 64-bit targets.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi` (modulo bias aside).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// One element of `v` (not empty).
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}
