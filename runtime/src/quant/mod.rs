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
    if !(s > 0.0) {
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

/// Decodes an IEEE-754 binary16 bias code.
pub fn decode_bias(code: u16) -> f64 {
    let sign = if code & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 10) & 0x1f) as i32;
    let m = (code & 0x3ff) as f64;
    let mag = if e == 0 {
        m * pow2(-24)
    } else if e == 31 {
        // Inf/NaN never come out of the encoder; read them as the largest value.
        65504.0
    } else {
        (1024.0 + m) * pow2(e - 25)
    };
    sign * mag
}

/// Encodes a bias as IEEE-754 binary16, round to nearest even, saturating
/// at +-65504 (NaN reads as 0).
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

/// `round(x * m / 2^shift)` by the crate's one rounding rule (half toward
/// +infinity); `x * mult` must fit i64 (it does for every op's bounds).
#[inline(always)]
pub fn apply_multiplier(x: i64, mult: i32, shift: i32) -> i64 {
    (x * mult as i64 + (1i64 << (shift - 1))) >> shift
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
