//! Quantization: the canonical 16-bit codes a task is stored in, and the
//! derivation of the integer requantization parameters from them.
//!
//! Why codes: a task patch must be kilobytes, so per output channel it stores
//! two 16-bit numbers — the weight scale (with a sign bit) and the bias — and
//! the device derives the fixed-point multiplier, shift and int32 bias when a
//! patch is applied. The exporter quantizes *every* model (a base, or a task
//! exported alone) through the same codes, so a backbone plus a patch gives
//! exactly the parameters of the task model exported on its own.
//!
//! Derivation uses only IEEE-754 `f64` add/mul/div and bit manipulation, which
//! are correctly rounded on every target (hardware or soft-float): the result
//! is bit-identical on x86, aarch64 and Cortex-M.
//!
//! A task switch derives every conv channel (~17,000 for MobileNetV2-1.0),
//! so [`ConvChannels`] computes it branch-free with one division instead of
//! two (vectorized by `kernels::derive`), and takes the formula itself only
//! where that shortcut could round differently: same integers, over 10×
//! faster.
//!
//! The one rounding rule (requantization):
//! `y = clamp(zp_out + ((x * mult + 2^(shift-1)) >> shift), lo, hi)` with an
//! arithmetic shift, i.e. round half toward +infinity, `x` and `mult` widened
//! to i64, `1 <= shift <= 62`.

/// Scale code: bit 15 negates the channel's weights, bits 14..9 are a biased
/// exponent `e`, bits 8..0 a mantissa `m`; value `(512 + m) * 2^(e - 57)`,
/// i.e. `(1 + m/512) * 2^(e - 48)`, from 2^-48 to just under 2^16.
pub const SCALE_SIGN: u16 = 0x8000;

const SCALE_EXP_BIAS: i32 = 48;

/// Decodes a scale code to its (positive) value and its sign.
pub fn decode_scale(code: u16) -> (f64, bool) {
    let neg = code & SCALE_SIGN != 0;
    let e = ((code >> 9) & 0x3f) as i32;
    let m = (code & 0x1ff) as u64;
    // (512 + m) * 2^(e - 48 - 9): build the f64 from bits, exact.
    let v = (512 + m) as f64 * pow2(e - SCALE_EXP_BIAS - 9);
    (v, neg)
}

/// Encodes a positive scale, rounding *up* to the next code, so that
/// `|w| / decode(code) <= 127` whenever `|w| <= 127 * s`. Non-positive or
/// non-finite input gives the smallest code; values past the range saturate.
pub fn encode_scale_ceil(s: f64, negate: bool) -> u16 {
    let sign = if negate { SCALE_SIGN } else { 0 };
    // (also true for NaN)
    if s.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) {
        return sign;
    }
    if !s.is_finite() {
        return sign | 0x7fff;
    }
    let (f, e) = frexp(s); // s = f * 2^e, f in [0.5, 1)
                           // s = (1 + m/512) * 2^(E - 48) with 1 + m/512 = 2f, E - 48 = e - 1
    let mut exp = e - 1 + SCALE_EXP_BIAS;
    let t = (2.0 * f - 1.0) * 512.0; // in [0, 512)
    let mut m = t as u32;
    if (m as f64) < t {
        m += 1;
    }
    if m == 512 {
        m = 0;
        exp += 1;
    }
    if exp < 0 {
        return sign;
    }
    if exp > 63 {
        return sign | 0x7fff;
    }
    sign | ((exp as u16) << 9) | m as u16
}

/// Encodes a positive scale to the nearest code (ties up): relative error
/// at most 2^-10. The exporter uses this; weights are quantized against
/// `max|w| / 127` itself (see `FORMAT.md`), so the code's rounding only
/// scales a channel's output by at most 0.1 %.
pub fn encode_scale_nearest(s: f64, negate: bool) -> u16 {
    let up = encode_scale_ceil(s, false);
    let (v_up, _) = decode_scale(up);
    let down = if up & 0x7fff == 0 { up } else { up - 1 };
    let (v_down, _) = decode_scale(down);
    let pick = if s - v_down < v_up - s { down } else { up };
    pick | if negate { SCALE_SIGN } else { 0 }
}

/// Why a scale code is out of range, or `None`. The one refused value is
/// the saturated code (magnitude bits all ones, about 2^16): the encoder
/// writes it for a scale beyond the code's range or an infinite one, so it
/// stands for a weight scale the format cannot hold. The other extreme,
/// code 0 (2^-48), is what an all-zero (dead) channel gets and is valid.
pub fn scale_code_problem(code: u16) -> Option<&'static str> {
    (code & !SCALE_SIGN == 0x7fff)
        .then_some("is the saturated scale code (weight scale beyond 2^16)")
}

/// Why a bias code is out of range, or `None`: an infinity or NaN
/// (exponent bits all ones), or the saturated value ±65504, which the
/// encoder writes for any bias it cannot hold.
pub fn bias_code_problem(code: u16) -> Option<&'static str> {
    if (code >> 10) & 0x1f == 0x1f {
        Some("is an infinite or NaN bias")
    } else if code & 0x7fff == 0x7bff {
        Some("is the saturated bias ±65504 (bias beyond binary16)")
    } else {
        None
    }
}

/// Decodes an IEEE-754 binary16 bias code.
pub fn decode_bias(code: u16) -> f64 {
    let sign = if code & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 10) & 0x1f) as i32;
    let m = (code & 0x3ff) as f64;
    let mag = if e == 0 {
        m * pow2(-24)
    } else if e == 31 {
        // Inf/NaN never come out of the encoder and validation refuses them
        // (`bias_code_problem`); read them as the largest value.
        65504.0
    } else {
        (1024.0 + m) * pow2(e - 25)
    };
    sign * mag
}

/// Encodes a bias as IEEE-754 binary16, round to nearest even, saturating
/// at +-65504 (NaN reads as 0). Validation refuses the saturated code
/// ([`bias_code_problem`]), so an exporter must not write one.
pub fn encode_bias(b: f64) -> u16 {
    if b.is_nan() {
        return 0;
    }
    let sign: u16 = if b < 0.0 || (b == 0.0 && b.is_sign_negative()) {
        0x8000
    } else {
        0
    };
    let a = if b < 0.0 { -b } else { b };
    if a >= 65504.0 {
        return sign | 0x7bff;
    }
    if a == 0.0 {
        return sign;
    }
    let (_, e) = frexp(a); // a in [2^(e-1), 2^e)
    let exp = e - 1; // unbiased binary16 exponent
    if exp < -14 {
        // subnormal: units of 2^-24
        let q = round_half_even(a * pow2(24));
        return sign | q as u16; // q <= 1024 rolls into the smallest normal
    }
    // normal: (1 + m/1024) * 2^exp
    let q = round_half_even(a * pow2(10 - exp)); // in [1024, 2048]
    let (q, exp) = if q >= 2048 { (1024, exp + 1) } else { (q, exp) };
    if exp > 15 {
        return sign | 0x7bff;
    }
    sign | (((exp + 15) as u16) << 10) | (q as u16 - 1024)
}

/// A fixed-point multiplier: real value `mult * 2^-shift`, `|mult|` in
/// `[2^30, 2^31)` or zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multiplier {
    /// signed Q31 mantissa
    pub mult: i32,
    /// right shift, 1..=62
    pub shift: i32,
}

/// Quantizes a real multiplier `m` (any sign). Returns `None` for
/// non-finite values or `|m| >= 2^30`. Values below `2^-31` become zero.
pub fn quantize_multiplier(m: f64) -> Option<Multiplier> {
    if !m.is_finite() {
        return None;
    }
    let neg = m < 0.0;
    let a = if neg { -m } else { m };
    if a == 0.0 {
        return Some(Multiplier { mult: 0, shift: 31 });
    }
    let (f, e) = frexp(a); // a = f * 2^e, f in [0.5, 1)
    let mut q = round_half_away(f * pow2(31)); // in [2^30, 2^31]
    let mut e = e;
    if q == 1i64 << 31 {
        q = 1 << 30;
        e += 1;
    }
    let shift = 31 - e;
    if shift < 1 {
        return None;
    }
    if shift > 62 {
        return Some(Multiplier { mult: 0, shift: 31 });
    }
    let q = q as i32;
    Some(Multiplier {
        mult: if neg { -q } else { q },
        shift,
    })
}

/// The largest |bias| of a conv channel, so that accumulator + bias stays
/// inside i32: `b / (s_in·s_w)` is clamped to `±BIAS_LIMIT` before
/// rounding, and the final bias (after `− zp_in·Σw`) is clamped again.
pub const BIAS_LIMIT: i64 = 1 << 30;

/// One conv channel's integer parameters (see [`ConvChannels`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelParams {
    /// signed Q31 multiplier
    pub mult: i32,
    /// right shift
    pub shift: i32,
    /// int32 bias, `zp_in·Σw` folded in
    pub bias: i32,
}

/// Derivation of the conv channels of one op: the per-op constants, and
/// [`ConvChannels::channel`] for each channel.
///
/// The result is *defined* by the plain formula of `FORMAT.md` (one
/// correctly rounded `f64` division each for `M = s_in·s_w / s_out` and for
/// `b / (s_in·s_w)`; [`ConvChannels::channel_exact`] spells it out), but a
/// task switch derives ~17,000 channels, so `channel` gets the multiplier
/// without dividing and the bias with one division by a per-channel value
/// known anyway, branch-free ([`ConvChannels::lanes`]), and falls back to
/// the formula only where that could differ. Why the shortcut is exact:
///
/// - `s_w = k·2^(e−57)` with `k = 512 + m < 2^10`, and `s_in` (an `f32`) has
///   24 significant bits, so `real = s_in·s_w` is exact and
///   `M = RN(s_in·k / s_out)·2^(e−57)` (every value stays a normal `f64`).
///   `y = RN(RN(s_in / s_out)·k)` is within 3 ulps of `RN(s_in·k / s_out)`.
///   The multiplier keeps the top 31 bits of the significand and rounds on
///   the 22 below; its result changes only where those 22 bits are exactly
///   `0b10…0` (a tie). When `y`'s low 22 bits are more than 16 ulps from
///   that pattern no tie lies between `y` and the exact quotient, so both
///   give the same `(mult, shift)` — across a power of two too, where the
///   rounded significand carries to `2^31` and renormalizes.
/// - `b / real` is approximated as `b·2^(57−e) / RN(y·s_out)` (a normal
///   binary16 bias code read as an `f64` by bits), four roundings from the
///   exact quotient: relative error below `2^−50`, so below `2^−21` absolute
///   while `|q| < 2^29`. Rounding half away from zero changes only at half
///   integers, so when the approximation's fraction is more than `2^−16`
///   from ±0.5 it rounds like the exact quotient.
/// - With `|Σw| < 2^23` the rest is exact in i32.
///
/// Everything else (near ties, `|q| >= 2^29`, subnormal or infinite bias
/// codes, shifts outside `1..=62`, `|Σw| >= 2^23`) goes through
/// `channel_exact`: 6 of the 17,066 channels of the MobileNetV2 `sb` patch.
/// The two paths are checked against each other in this module's tests
/// and in `kernels::derive`'s.
#[derive(Clone, Copy, Debug)]
pub struct ConvChannels {
    s_in: f64,
    s_out: f64,
    ratio: f64,
    zp_in: i64,
    /// the scales are finite and positive (always, after validation)
    fast: bool,
}

impl ConvChannels {
    /// Constants of an op with input scale `s_in`, output scale `s_out`
    /// (both finite and positive, as validated) and input zero point.
    pub fn new(s_in: f32, s_out: f32, zp_in: i32) -> Self {
        let (s_in, s_out) = (s_in as f64, s_out as f64);
        let ratio = s_in / s_out;
        ConvChannels {
            s_in,
            s_out,
            ratio,
            zp_in: zp_in as i64,
            fast: ratio > 0.0 && ratio.is_finite() && s_out > 0.0 && s_out.is_finite(),
        }
    }

    /// Derives one channel from its scale code, bias code and the sum of the
    /// weights the kernel reads for it. `None` if the multiplier is out of
    /// range (`M >= 2^30`) or the scales are not finite and positive.
    #[inline]
    pub fn channel(
        &self,
        scale_code: u16,
        bias_code: u16,
        weight_sum: i32,
    ) -> Option<ChannelParams> {
        match self.lanes(scale_code, bias_code, weight_sum) {
            (mult, shift, bias, false) => Some(ChannelParams { mult, shift, bias }),
            _ => self.channel_exact(scale_code, bias_code, weight_sum as i64),
        }
    }

    /// The shortcut of [`ConvChannels::channel`], branch-free over a channel's
    /// codes and weight sum: `(mult, shift, bias, defer)`. Where `defer` is
    /// set the other values are meaningless and `channel_exact` decides.
    #[inline(always)]
    pub fn lanes(&self, scale_code: u16, bias_code: u16, weight_sum: i32) -> (i32, i32, i32, bool) {
        const MASK52: u64 = (1 << 52) - 1;
        // 1.5·2^52: adding it rounds an |x| < 2^51 to an integer (ties even,
        // and ties are deferred), which its low bits then hold.
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        let (sc, bc) = (scale_code as u64, bias_code as u64);
        let m = sc & 0x1ff;
        let e = (sc >> 9) & 0x3f;
        // Multiplier from y = RN(s_in/s_out)·k, k = 512 + m = 2^9·(1 + m/512).
        let k = f64::from_bits(((1023 + 9) << 52) | (m << 43));
        let yb = (self.ratio * k).to_bits();
        let mant = yb & MASK52;
        let tie = (mant & 0x3f_ffff).wrapping_sub(0x20_0000 - 16) <= 32;
        let q = ((mant | (1 << 52)) + (1 << 21)) >> 22; // in [2^30, 2^31]
        let carry = q >> 31;
        let q = q >> carry;
        let fe = (yb >> 52) as i64 - 1022 + e as i64 - 57 + carry as i64;
        let shift = 31 - fe;
        let bad_shift = (shift - 1) as u64 > 61;
        // Bias: b·2^(57−e) by bits (binary16 normal: exponent be − 15), then
        // q_b = that / (y·s_out), y·s_out ≈ s_in·k.
        let be = (bc >> 10) & 0x1f;
        let zero = bc & 0x7fff == 0;
        let normal = be.wrapping_sub(1) < 30;
        let bbits = ((bc & 0x8000) << 48) | ((be + 1008 + 57 - e) << 52) | ((bc & 0x3ff) << 42);
        let bval = if zero { 0.0 } else { f64::from_bits(bbits) };
        let qb = bval / (f64::from_bits(yb) * self.s_out);
        let r = qb + MAGIC;
        let acc = (r.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
        let near_half = (qb - (r - MAGIC)).abs() >= 0.5 - 1.0 / 65536.0;
        let big = qb.abs() >= (1u64 << 29) as f64;
        // |Σw| < 2^23 keeps zp_in·Σw and the bias in i32 (real sums are
        // below 127·32768 < 2^22).
        let wide = (weight_sum as u32).wrapping_add(1 << 23) >= 1 << 24;
        let defer = tie | bad_shift | big | near_half | !(normal | zero) | wide | !self.fast;
        // Wrapping arithmetic from here: a deferred lane may hold anything,
        // and must not trip overflow checks; a kept lane never wraps.
        let s = -((sc >> 15) as i32); // 0 or −1: negate
        let mult = (q as i32 ^ s).wrapping_sub(s);
        let acc = (acc as i32 ^ s).wrapping_sub(s);
        let limit = BIAS_LIMIT as i32;
        let zw = (self.zp_in as i32).wrapping_mul(weight_sum);
        let bias = acc.wrapping_sub(zw).clamp(-limit, limit);
        (mult, shift as i32, bias, defer)
    }

    /// The defining formula of `FORMAT.md`, step by step: `channel` agrees
    /// with it everywhere and calls it where its shortcut could differ.
    #[cold]
    #[inline(never)]
    pub fn channel_exact(
        &self,
        scale_code: u16,
        bias_code: u16,
        weight_sum: i64,
    ) -> Option<ChannelParams> {
        let (s_w, neg) = decode_scale(scale_code);
        let b = decode_bias(bias_code);
        let real = self.s_in * s_w;
        let m = real / self.s_out;
        let Multiplier { mult, shift } = quantize_multiplier(if neg { -m } else { m })?;
        let mut acc = round_half_away((b / real).clamp(-(BIAS_LIMIT as f64), BIAS_LIMIT as f64));
        if neg {
            acc = -acc;
        }
        let bias = (acc - self.zp_in * weight_sum).clamp(-BIAS_LIMIT, BIAS_LIMIT);
        Some(ChannelParams {
            mult,
            shift,
            bias: bias as i32,
        })
    }
}

/// `round(x * m / 2^shift)` by the crate's one rounding rule (half toward
/// +infinity); `x * mult` must fit i64 (it does for every op's bounds).
#[inline(always)]
pub fn apply_multiplier(x: i64, mult: i32, shift: i32) -> i64 {
    (x * mult as i64 + (1i64 << (shift - 1))) >> shift
}

/// The real value of int8 `q` on the grid `(scale, zp)`: `scale · (q − zp)`
/// in `f32`. The one definition of a dequantized score
/// ([`crate::Scores::get`]); clients that receive int8 scores (the device
/// protocol) call it to get the same bits as the device.
#[inline]
pub fn dequantize(q: i8, scale: f32, zp: i32) -> f32 {
    scale * (q as i32 - zp) as f32
}

/// Quantizes a real value `v` to the int8 grid `(scale, zp)`, clamped to
/// `[-128, 127]`, rounding half away from zero.
pub fn quantize_value(v: f64, scale: f64, zp: i32) -> i32 {
    let q = v / scale;
    let r = if q.is_nan() {
        0
    } else if q > 1e9 {
        1_000_000_000
    } else if q < -1e9 {
        -1_000_000_000
    } else {
        round_half_away(q)
    };
    (r + zp as i64).clamp(-128, 127) as i32
}

/// Round half away from zero, for |x| < 2^62; exact (no libm).
pub fn round_half_away(x: f64) -> i64 {
    let t = x as i64; // truncates toward zero
    let frac = x - t as f64; // exact for |x| < 2^52
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

fn round_half_even(x: f64) -> i64 {
    let t = x as i64;
    let frac = x - t as f64;
    if frac > 0.5 || (frac == 0.5 && t & 1 == 1) {
        t + 1
    } else {
        t
    }
}

/// `2^e` for `-1022 <= e <= 1023`, exact.
pub fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `x = f * 2^e` with `f` in `[0.5, 1)`, for finite positive normal `x`.
/// Subnormal inputs are scaled first.
pub fn frexp(x: f64) -> (f64, i32) {
    let mut bits = x.to_bits();
    let mut adj = 0;
    if (bits >> 52) & 0x7ff == 0 {
        // subnormal: scale by 2^64
        let y = x * pow2(64);
        bits = y.to_bits();
        adj = -64;
    }
    let e = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let f = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (f, e + adj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_codes_round_up_and_round_trip() {
        for &s in &[1e-9, 3.3e-5, 0.0123, 0.5, 1.0, 1.5, 7.77, 1000.0] {
            let c = encode_scale_ceil(s, false);
            let (v, neg) = decode_scale(c);
            assert!(!neg);
            assert!(v >= s, "{s} -> {v}");
            assert!(v <= s * (1.0 + 1.0 / 512.0) + 1e-300, "{s} -> {v}");
            assert_eq!(encode_scale_ceil(v, false), c);
            let cn = encode_scale_ceil(s, true);
            assert_eq!(cn, c | SCALE_SIGN);
            assert_eq!(decode_scale(cn), (v, true));
        }
        assert_eq!(encode_scale_ceil(0.0, false), 0);
        for &s in &[1e-9, 3.3e-5, 0.0123, 0.5, 1.0, 1.5, 7.77, 1000.0] {
            let (v, _) = decode_scale(encode_scale_nearest(s, false));
            assert!((v - s).abs() <= s / 1024.0, "{s} -> {v}");
        }
        assert_eq!(
            encode_scale_nearest(1.0, true),
            encode_scale_ceil(1.0, true)
        );
        assert_eq!(decode_scale(0).0, pow2(-48));
    }

    #[test]
    fn bias_codes_are_binary16() {
        // Known binary16 encodings.
        assert_eq!(encode_bias(1.0), 0x3c00);
        assert_eq!(encode_bias(-2.0), 0xc000);
        assert_eq!(encode_bias(65504.0), 0x7bff);
        assert_eq!(encode_bias(1e9), 0x7bff);
        assert_eq!(encode_bias(0.333251953125), 0x3555);
        assert_eq!(encode_bias(5.960464477539063e-8), 0x0001);
        assert_eq!(encode_bias(0.0), 0);
        for &b in &[0.1, -3.75, 123.456, 1e-6, -6e-5, 2047.5] {
            let c = encode_bias(b);
            let v = decode_bias(c);
            assert!((v - b).abs() <= b.abs() * 4.9e-4 + 6e-8, "{b} {v}");
            assert_eq!(encode_bias(v), c);
        }
    }

    #[test]
    fn multipliers() {
        let m = quantize_multiplier(0.5).unwrap();
        assert_eq!(
            m,
            Multiplier {
                mult: 1 << 30,
                shift: 31
            }
        );
        let m = quantize_multiplier(-0.75).unwrap();
        assert_eq!(
            m,
            Multiplier {
                mult: -(3 << 29),
                shift: 31
            }
        );
        assert!(quantize_multiplier(2f64.powi(30)).is_none());
        assert!(quantize_multiplier(f64::NAN).is_none());
        let m = quantize_multiplier(3.0).unwrap();
        assert_eq!(apply_multiplier(10, m.mult, m.shift), 30);
        // half rounds toward +inf
        let m = quantize_multiplier(0.5).unwrap();
        assert_eq!(apply_multiplier(3, m.mult, m.shift), 2);
        assert_eq!(apply_multiplier(-3, m.mult, m.shift), -1);
    }

    /// A small deterministic generator for the property tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A positive finite f32: log-uniform over most of the range, or
        /// any bit pattern.
        fn scale(&mut self) -> f32 {
            let r = self.next();
            if r & 7 == 0 {
                let v = f32::from_bits((r >> 32) as u32 & 0x7fff_ffff);
                if v.is_finite() && v > 0.0 {
                    return v;
                }
            }
            let e = ((r >> 8) % 40) as i32 - 30;
            let m = 1.0 + ((r >> 20) & 0xffff) as f32 / 65536.0;
            (m as f64 * pow2(e)) as f32
        }
    }

    #[test]
    fn conv_channels_shortcut_equals_the_formula() {
        let mut g = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut short = 0;
        for _ in 0..400_000 {
            let cc = ConvChannels::new(g.scale(), g.scale(), (g.next() as u8) as i8 as i32);
            let r = g.next();
            let (sc, bc) = (r as u16, (r >> 16) as u16);
            let sum = (r >> 32) as i32 >> 8;
            let exact = cc.channel_exact(sc, bc, sum as i64);
            assert_eq!(
                cc.channel(sc, bc, sum),
                exact,
                "{cc:?} {sc:#x} {bc:#x} {sum}"
            );
            if let (mult, shift, bias, false) = cc.lanes(sc, bc, sum) {
                assert_eq!(Some(ChannelParams { mult, shift, bias }), exact);
                short += 1;
            }
        }
        // Random codes often give huge biases or multipliers (the formula's
        // job); still most take the shortcut.
        assert!(short > 100_000, "{short}");
        // Realistic codes: every scale code against a few op scales.
        for &(si, so) in &[
            (0.0235f32, 0.0471f32),
            (0.5, 0.00390625),
            (1.0, 1.0),
            (3e-3, 7.5e-2),
        ] {
            let cc = ConvChannels::new(si, so, -3);
            let mut short = 0;
            // Codes of realistic weight scales (2^-14 .. 2^2) and biases (normal, |b| < 2).
            for sc in (34 << 9)..(50 << 9) {
                for neg in [0, SCALE_SIGN] {
                    let r = g.next();
                    let bc = (r as u16 & 0x83ff) | ((1 + (r >> 16) % 15) as u16) << 10;
                    let exact = cc.channel_exact(sc | neg, bc, 1234);
                    assert_eq!(cc.channel(sc | neg, bc, 1234), exact);
                    if let (mult, shift, bias, false) = cc.lanes(sc | neg, bc, 1234) {
                        assert_eq!(Some(ChannelParams { mult, shift, bias }), exact);
                        short += 1;
                    }
                }
            }
            // Genuine ties (s_in = 1 with k = 512 gives dyadic quotients) take
            // the formula.
            assert!(short > 2 * (16 << 9) * 99 / 100, "{short}");
        }
    }

    #[test]
    fn conv_channels_ties_take_the_formula() {
        // Bias ties: s_in = 1, s_w = 1 (code 48 << 9), b = n + 0.5.
        let cc = ConvChannels::new(1.0, 1.0, 0);
        for (b, want) in [
            (2.5f64, 3),
            (-2.5, -3),
            (0.5, 1),
            (-0.5, -1),
            (1023.5, 1024),
        ] {
            let p = cc.channel(48 << 9, encode_bias(b), 0).unwrap();
            assert_eq!(p.bias, want, "{b}");
            assert_eq!(Some(p), cc.channel_exact(48 << 9, encode_bias(b), 0));
            // Negated channel: bias and multiplier flip sign.
            let n = cc.channel(SCALE_SIGN | 48 << 9, encode_bias(b), 0).unwrap();
            assert_eq!((n.bias, n.mult), (-want, -p.mult));
        }
        // Multiplier ties: s_in·k / s_out = N·2^p with N odd of 32 bits puts
        // the rounding bit exactly at a half.
        let mut ties = 0;
        for m in (1..512u16).step_by(2) {
            let k = 512 + m as u64;
            let lo = (1u64 << 31).div_ceil(k) | 1;
            for n in (lo..lo + 64).step_by(2) {
                let prod = n * k;
                if n >= 1 << 24 || prod >> 31 != 1 {
                    continue;
                }
                let cc = ConvChannels::new(n as f32, 1.0, 0);
                let sc = 20 << 9 | m;
                let p = cc.channel(sc, 0, 0);
                assert_eq!(p, cc.channel_exact(sc, 0, 0));
                // Half away from zero: the 31-bit mantissa rounds up.
                let p = p.unwrap();
                assert_eq!(p.mult as u64, (prod + 1) >> 1, "{n} {k}");
                ties += 1;
            }
        }
        assert!(ties > 100);
    }

    #[test]
    fn frexp_and_round() {
        assert_eq!(frexp(1.0), (0.5, 1));
        assert_eq!(frexp(0.75), (0.75, 0));
        assert_eq!(frexp(1e-310).1, -1029);
        assert_eq!(round_half_away(2.5), 3);
        assert_eq!(round_half_away(-2.5), -3);
        assert_eq!(round_half_away(-2.4), -2);
        assert_eq!(quantize_value(0.0, 0.1, -128), -128);
        assert_eq!(quantize_value(1e30, 0.1, 0), 127);
    }
}
