//! The parameter table's entry: one channel's requantization.

/// One entry of the parameter table (`Engine::new`'s `params`): a
/// channel's fixed-point multiplier, shift and int32 bias (see the rounding
/// rule in [`crate::quant`]); for adds and other ops, the entries their
/// kernels read (zero points in `bias`).
///
/// The first entry of each op's block is not a channel: it is the op's
/// header, its output zero point and clamp. Write and read it through
/// [`ChannelRequant::op_header`], [`ChannelRequant::header_zp`] and
/// [`ChannelRequant::header_clamp`] (stored as `bias` = zero point, `mult`
/// = low bound, `shift` = high bound; the table's layout is unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelRequant {
    /// Q31 multiplier (signed)
    pub mult: i32,
    /// right shift
    pub shift: i32,
    /// bias added to the accumulator before scaling
    pub bias: i32,
}

impl ChannelRequant {
    /// The header entry of an op: output zero point `zp`, clamp `lo..=hi`.
    pub const fn op_header(zp: i32, lo: i32, hi: i32) -> Self {
        ChannelRequant {
            mult: lo,
            shift: hi,
            bias: zp,
        }
    }

    /// The output zero point of a header entry ([`ChannelRequant::op_header`]).
    pub const fn header_zp(&self) -> i32 {
        self.bias
    }

    /// The output clamp `(lo, hi)` of a header entry.
    pub const fn header_clamp(&self) -> (i32, i32) {
        (self.mult, self.shift)
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelRequant;

    #[test]
    fn header_round_trip() {
        let h = ChannelRequant::op_header(-5, -128, 90);
        assert_eq!(h.header_zp(), -5);
        assert_eq!(h.header_clamp(), (-128, 90));
    }
}
