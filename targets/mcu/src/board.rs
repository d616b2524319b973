//! What a firmware build compiles in from its export (`build.rs`, bare-metal
//! targets only): the backbone placed in flash, the patch partition image at
//! the start of the PATCHES region, the self-test samples and the sizes the
//! firmware allocates.

/// `T` at a 64-byte boundary (the backbone's weight section is 64-aligned
/// relative to the blob start; SIMD kernels may rely on it).
#[repr(C, align(64))]
pub struct Aligned64<T: ?Sized>(pub T);

/// `T` at a 4-byte boundary.
#[repr(C, align(4))]
pub struct Aligned4<T: ?Sized>(pub T);

/// A sample the host ran: which task, and its results.
#[derive(Clone, Copy, Debug)]
pub struct SampleInfo {
    /// task name
    pub task: &'static str,
    /// index in the task's test data
    pub index: u32,
    /// classes of the task
    pub classes: usize,
    /// the host's top-1 class
    pub top1: usize,
}

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

/// The backbone, in flash, used in place.
#[link_section = ".rodata.graftnet_backbone"]
pub static BACKBONE: Aligned64<[u8; BACKBONE_LEN]> =
    Aligned64(*include_bytes!(concat!(env!("OUT_DIR"), "/backbone.gnb")));

/// The patch partition image built from the export, placed by the linker
/// script at the start of the PATCHES region. Read it through
/// [`patch_region`].
#[used]
#[link_section = ".graftnet_patches"]
pub static PATCH_PARTITION_IMAGE: Aligned64<[u8; PARTITION_IMAGE_LEN]> =
    Aligned64(*include_bytes!(concat!(env!("OUT_DIR"), "/patches.bin")));

/// Flash taken by the test samples and the host's results.
pub const SAMPLE_BYTES: usize = SAMPLES.len() * (INPUT_LEN * 5 + MAX_CLASSES);

/// Sample inputs (f32, NCHW, little-endian), one [`INPUT_LEN`] block per sample.
static SAMPLE_INPUTS: Aligned4<[u8; SAMPLES.len() * INPUT_LEN * 4]> = Aligned4(*include_bytes!(
    concat!(env!("OUT_DIR"), "/samples_f32.bin")
));
/// The host's quantized inputs (int8, NHWC), one block per sample.
static SAMPLE_INPUTS_I8: [u8; SAMPLES.len() * INPUT_LEN] =
    *include_bytes!(concat!(env!("OUT_DIR"), "/samples_i8.bin"));
/// The host's int8 scores, [`MAX_CLASSES`] per sample (zero padded).
static SAMPLE_SCORES_I8: [u8; SAMPLES.len() * MAX_CLASSES] =
    *include_bytes!(concat!(env!("OUT_DIR"), "/scores_i8.bin"));

/// The whole PATCHES flash region, from the linker script's symbols.
pub fn patch_region() -> &'static [u8] {
    extern "C" {
        static __graftnet_patches_start: u8;
        static __graftnet_patches_end: u8;
    }
    // SAFETY: memory.x defines both symbols as the bounds of the PATCHES flash
    // region (start <= end), which is mapped, readable and never written while
    // the firmware runs; u8 has no alignment or validity requirements.
    unsafe {
        let start = core::ptr::addr_of!(__graftnet_patches_start);
        let end = core::ptr::addr_of!(__graftnet_patches_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The PATCHES region for writing: its start and length (the slot store's
/// flash under qemu, [`crate::flash::ram`]).
///
/// # Safety
/// The region must be writable memory (qemu's mps2 code memory is; real
/// flash is not, use its controller) and the caller its only writer; the
/// self-test's [`patch_region`] must not be used alongside.
pub unsafe fn patch_region_mut() -> (*mut u8, usize) {
    extern "C" {
        static mut __graftnet_patches_start: u8;
        static mut __graftnet_patches_end: u8;
    }
    let start = core::ptr::addr_of_mut!(__graftnet_patches_start);
    let end = core::ptr::addr_of_mut!(__graftnet_patches_end);
    (start, end as usize - start as usize)
}

/// Sample `i`'s float input value `j`.
pub(crate) fn sample_input(i: usize, j: usize) -> f32 {
    let o = (i * INPUT_LEN + j) * 4;
    let b = &SAMPLE_INPUTS.0[o..o + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The host's quantized input of sample `i`.
pub(crate) fn sample_input_i8(i: usize) -> &'static [u8] {
    &SAMPLE_INPUTS_I8[i * INPUT_LEN..(i + 1) * INPUT_LEN]
}

/// The host's int8 scores of sample `i`.
pub(crate) fn sample_scores_i8(i: usize) -> &'static [u8] {
    &SAMPLE_SCORES_I8[i * MAX_CLASSES..i * MAX_CLASSES + SAMPLES[i].classes]
}
