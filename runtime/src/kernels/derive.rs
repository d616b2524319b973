//! Task-switch kernel: the conv channels' requantization parameters, many
//! channels at a time.
//!
//! A task switch derives every conv channel of the task from its codes
//! (~17,000 for MobileNetV2-1.0). [`ConvChannels::lanes`] is the branch-free
//! shortcut of that derivation; here it runs over blocks of [`BLOCK`]
//! channels straight into the parameter table, with a flag per channel it
//! defers, a loop the compiler vectorizes (the table's 12-byte entries cost
//! a few shuffles per vector; a separate array per field measured slower
//! once copied into the table). The same safe code is compiled three times: for the target's
//! baseline (`scalar_derive_conv_f64_64`; NEON on aarch64), with AVX2
//! (`avx2_derive_conv_f64x4_64`) and with AVX-512 (`avx512_derive_conv_f64x8_64`),
//! picked by CPU feature token. Every lane computes the same IEEE operations,
//! so the results do not depend on the kernel. Channels the shortcut defers
//! (near a rounding tie, out of its range) go through
//! [`ConvChannels::channel_exact`] afterwards; see `quant` for why the two
//! agree.
#![allow(unsafe_code)]

use crate::quant::ChannelRequant;
use crate::quant::ConvChannels;

/// Channels per block.
pub const BLOCK: usize = 64;

/// A block kernel: codes (LE u16) and weight sums (LE i32) of up to
/// [`BLOCK`] channels in; their parameters out, and which ones the shortcut
/// deferred (their parameters are then meaningless).
type BlockFn = fn(&ConvChannels, &[u8], &[u8], &[u8], &mut [ChannelRequant], &mut [bool; BLOCK]);

/// Derives every channel of a conv op whose kernel reads the weights the
/// `sums` (LE i32 per channel) belong to, from its scale and bias codes
/// (LE u16 per channel), into `out`. Returns false if a channel's
/// multiplier is out of range (`out` is then partly written). Slices
/// shorter than `out` needs (never, after validation) read as zero.
pub fn conv_channels(
    cc: &ConvChannels,
    scale: &[u8],
    bias: &[u8],
    sums: &[u8],
    out: &mut [ChannelRequant],
) -> bool {
    let f = best();
    let mut ok = true;
    let mut defer = [false; BLOCK];
    for (blk, slots) in out.chunks_mut(BLOCK).enumerate() {
        let (c0, n) = (blk * BLOCK, slots.len());
        match (
            scale.get(2 * c0..2 * (c0 + n)),
            bias.get(2 * c0..2 * (c0 + n)),
            sums.get(4 * c0..4 * (c0 + n)),
        ) {
            (Some(s), Some(b), Some(w)) => f(cc, s, b, w, slots, &mut defer),
            _ => defer = [true; BLOCK],
        }
        if !defer.iter().fold(false, |a, &d| a | d) {
            continue;
        }
        for (j, slot) in slots.iter_mut().enumerate() {
            if !defer[j] {
                continue;
            }
            let c = c0 + j;
            let code = |b: &[u8], c: usize| {
                b.get(2 * c..2 * c + 2)
                    .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
            };
            let sum = sums
                .get(4 * c..4 * c + 4)
                .map_or(0, |x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]));
            match cc.channel_exact(code(scale, c), code(bias, c), sum as i64) {
                Some(p) => {
                    *slot = ChannelRequant {
                        mult: p.mult,
                        shift: p.shift,
                        bias: p.bias,
                    }
                }
                None => ok = false,
            }
        }
    }
    ok
}

/// The block kernel for this CPU.
fn best() -> BlockFn {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::Avx512Vnni::try_new().is_some() {
            return avx512_derive_conv_f64x8_64;
        }
        if super::cpu::Avx2::try_new().is_some() {
            return avx2_derive_conv_f64x4_64;
        }
    }
    scalar_derive_conv_f64_64
}

/// The block loop every kernel compiles.
#[inline(always)]
fn block(
    cc: &ConvChannels,
    sc: &[u8],
    bc: &[u8],
    sm: &[u8],
    out: &mut [ChannelRequant],
    defer: &mut [bool; BLOCK],
) {
    let n = (sc.len() / 2)
        .min(bc.len() / 2)
        .min(sm.len() / 4)
        .min(out.len())
        .min(BLOCK);
    let (sc, bc, sm, out) = (&sc[..2 * n], &bc[..2 * n], &sm[..4 * n], &mut out[..n]);
    for i in 0..n {
        let s = u16::from_le_bytes([sc[2 * i], sc[2 * i + 1]]);
        let b = u16::from_le_bytes([bc[2 * i], bc[2 * i + 1]]);
        let w = i32::from_le_bytes([sm[4 * i], sm[4 * i + 1], sm[4 * i + 2], sm[4 * i + 3]]);
        let (mult, shift, bias, d) = cc.lanes(s, b, w);
        out[i] = ChannelRequant { mult, shift, bias };
        defer[i] = d;
    }
    for d in &mut defer[n..] {
        *d = true;
    }
}

/// A block kernel compiled with `$features`; `best` hands it out only
/// while holding the CPU token that proves them.
macro_rules! kernel {
    ($(#[$cfg:meta])* $name:ident, $features:literal) => {
        $(#[$cfg])*
        fn $name(
            cc: &ConvChannels,
            sc: &[u8],
            bc: &[u8],
            sm: &[u8],
            out: &mut [ChannelRequant],
            defer: &mut [bool; BLOCK],
        ) {
            #[target_feature(enable = $features)]
            fn run(
                cc: &ConvChannels,
                sc: &[u8],
                bc: &[u8],
                sm: &[u8],
                out: &mut [ChannelRequant],
                defer: &mut [bool; BLOCK],
            ) {
                block(cc, sc, bc, sm, out, defer)
            }
            // SAFETY: `best` returns this kernel only while holding a CPU
            // token that proves `$features`.
            unsafe { run(cc, sc, bc, sm, out, defer) }
        }
    };
}

fn scalar_derive_conv_f64_64(
    cc: &ConvChannels,
    sc: &[u8],
    bc: &[u8],
    sm: &[u8],
    out: &mut [ChannelRequant],
    defer: &mut [bool; BLOCK],
) {
    block(cc, sc, bc, sm, out, defer)
}

kernel!(
    #[cfg(target_arch = "x86_64")]
    avx2_derive_conv_f64x4_64,
    "avx2"
);
kernel!(
    #[cfg(target_arch = "x86_64")]
    avx512_derive_conv_f64x8_64,
    "avx2,avx512f,avx512bw,avx512vl"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU runs gives the formula's results.
    #[test]
    fn kernels_match_the_formula() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels: [Option<BlockFn>; 3] = [Some(scalar_derive_conv_f64_64), None, None];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::cpu::Avx2::try_new().is_some() {
                kernels[1] = Some(avx2_derive_conv_f64x4_64);
            }
            if super::super::cpu::Avx512Vnni::try_new().is_some() {
                kernels[2] = Some(avx512_derive_conv_f64x8_64);
            }
        }
        for round in 0..200 {
            let cc = ConvChannels::new(
                (1 + next() % 1000) as f32 / 3777.0,
                (1 + next() % 1000) as f32 / 1234.0,
                (next() % 256) as i32 - 128,
            );
            let n = 1 + (next() % BLOCK as u64) as usize;
            let mut sc = [0u8; 2 * BLOCK];
            let mut bc = [0u8; 2 * BLOCK];
            let mut sm = [0u8; 4 * BLOCK];
            for i in 0..n {
                let r = next();
                // Realistic scale codes in half the rounds, any in the rest.
                let s = if round % 2 == 0 {
                    (r as u16 & 0x81ff) | ((34 + (r >> 16) % 16) as u16) << 9
                } else {
                    r as u16
                };
                sc[2 * i..2 * i + 2].copy_from_slice(&s.to_le_bytes());
                bc[2 * i..2 * i + 2].copy_from_slice(&((r >> 24) as u16).to_le_bytes());
                let w = ((r >> 40) as i32 % 400_000).to_le_bytes();
                sm[4 * i..4 * i + 4].copy_from_slice(&w);
            }
            for f in kernels.iter().flatten() {
                let mut out = [ChannelRequant::default(); BLOCK];
                let mut defer = [false; BLOCK];
                f(
                    &cc,
                    &sc[..2 * n],
                    &bc[..2 * n],
                    &sm[..4 * n],
                    &mut out[..n],
                    &mut defer,
                );
                for i in 0..n {
                    let s = u16::from_le_bytes([sc[2 * i], sc[2 * i + 1]]);
                    let b = u16::from_le_bytes([bc[2 * i], bc[2 * i + 1]]);
                    let w = i32::from_le_bytes([
                        sm[4 * i],
                        sm[4 * i + 1],
                        sm[4 * i + 2],
                        sm[4 * i + 3],
                    ]);
                    let exact = cc.channel_exact(s, b, w as i64);
                    assert_eq!(defer[i], cc.lanes(s, b, w).3);
                    if !defer[i] {
                        let got = (out[i].mult, out[i].shift, out[i].bias);
                        assert_eq!(exact.map(|p| (p.mult, p.shift, p.bias)), Some(got));
                    }
                }
            }
            // The driver: every channel, deferred ones included.
            let mut out = [ChannelRequant::default(); BLOCK];
            let ok = conv_channels(&cc, &sc[..2 * n], &bc[..2 * n], &sm[..4 * n], &mut out[..n]);
            for (i, o) in out[..n].iter().enumerate() {
                let s = u16::from_le_bytes([sc[2 * i], sc[2 * i + 1]]);
                let b = u16::from_le_bytes([bc[2 * i], bc[2 * i + 1]]);
                let w =
                    i32::from_le_bytes([sm[4 * i], sm[4 * i + 1], sm[4 * i + 2], sm[4 * i + 3]]);
                match cc.channel_exact(s, b, w as i64) {
                    Some(p) => assert_eq!((o.mult, o.shift, o.bias), (p.mult, p.shift, p.bias)),
                    None => assert!(!ok),
                }
            }
        }
    }
}
