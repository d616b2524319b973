//! Stack high-water mark, for the memory report.
//!
//! Contract: the board enables cortex-m-rt's `paint-stack` feature, which
//! fills the stack region (`_stack_end` .. `_stack_start`, both from
//! cortex-m-rt's link.x) with `0xCCCC_CCCC` at reset. The deepest word that
//! no longer holds the paint marks the most stack ever used (a frame that
//! happened to store the paint value exactly would be missed; it does not
//! matter for a size report).

/// The paint value of cortex-m-rt's `paint-stack`.
const PAINT: u32 = 0xcccc_cccc;

/// `(bytes of stack used so far, bytes of stack region)`.
pub fn high_water() -> (usize, usize) {
    extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    // SAFETY: cortex-m-rt's link.x defines both symbols as the bounds of the
    // stack region (4-aligned, `_stack_end <= _stack_start`, checked by the
    // linker script), which is RAM and readable. The words below the current
    // stack pointer are plain memory nobody else writes while we read them
    // (single core, no interrupts in use); they are read volatile because the
    // compiler cannot know their contents.
    unsafe {
        let top = core::ptr::addr_of!(_stack_start) as usize;
        let mut p = core::ptr::addr_of!(_stack_end);
        let bottom = p as usize;
        while (p as usize) < top && core::ptr::read_volatile(p) == PAINT {
            p = p.add(1);
        }
        (top - p as usize, top - bottom)
    }
}
