//! Armv7E-M kernel table (Cortex-M4, M7): [`dsp`] (`smlad`).

pub(super) mod dsp;
