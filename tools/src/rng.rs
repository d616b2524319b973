//! The tools' one pseudo-random generator: splitmix64, seedable, with an
//! independent stream per name. It fixes the synthetic fixtures' weights
//! (changing it changes every fixture model's bytes) and the trainer's
//! shuffles, initial weights and augmentations (`graftnet learn` is
//! deterministic for a seed and a thread count).

use graftnet::splitmix::SplitMix64;

/// splitmix64 (the runtime's [`SplitMix64`]), seeded through a mix of the
/// seed: tiny, good enough for test weights.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut r = Rng(SplitMix64(seed ^ 0x6a09_e667_f3bc_c909));
        r.next_u64();
        r
    }

    /// An independent stream per (seed, name): changing or removing one
    /// layer does not shift the weights of any other.
    pub fn for_name(seed: u64, name: &str) -> Self {
        // FNV-1a
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.unit()) as f32
    }

    pub fn normal(&mut self, mean: f64, std: f64) -> f32 {
        // Box-Muller; 1 - unit() lies in (0, 1], so ln is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (mean + std * z) as f32
    }

    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| self.normal(0.0, std)).collect()
    }
}

/// `n * c * h * w` values uniform in [-1, 1], NCHW order, seeded.
pub fn random_inputs(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::for_name(seed, "random_inputs");
    (0..n * c * h * w).map(|_| rng.uniform(-1.0, 1.0)).collect()
}
