//! Image preprocessing: decode, gray/RGB, scale, bilinear resize (torch's),
//! normalize (see the module doc of [`crate::data`]).

use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Source indices and weights along one axis, as ATen computes them for
/// `align_corners=False` (`compute_source_index_and_lambda`), in `f32`.
fn linear_axis(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    if in_size == out_size {
        return (0..out_size).map(|i| (i, i, 1.0, 0.0)).collect();
    }
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|dst| {
            // x86-64 builds of ATen compile `scale * (dst + 0.5) - 0.5` with
            // a fused multiply-add; exact either way whenever the product is
            // (e.g. 28 -> 32: every value is a multiple of 1/16).
            let src = scale.mul_add(dst as f32 + 0.5, -0.5);
            let src = if src < 0.0 { 0.0 } else { src };
            let i0 = (src.floor() as usize).min(in_size - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize of a C x H x W planar (CHW) `f32` image to
/// C x `out_h` x `out_w`, reproducing PyTorch's
/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)`
/// (half-pixel centres, no antialiasing, edge pixels repeated).
///
/// Per axis (all in `f32`), for output index `d`:
/// ```text
/// scale = in / out
/// src   = max(scale * (d + 0.5) - 0.5, 0)
/// i0    = min(floor(src), in - 1),   i1 = i0 + 1 if i0 < in - 1 else i0
/// l1    = clamp(src - i0, 0, 1),     l0 = 1 - l1
/// ```
/// (`in == out`: `i0 = i1 = d`, `l0 = 1`, `l1 = 0`), and with `h*`/`w*` from
/// the height and width axes:
/// ```text
/// w00 = lh0 * lw0   w01 = lh0 * lw1   w10 = lh1 * lw0   w11 = lh1 * lw1
/// out = fma(x[h1,w1], w11, fma(x[h1,w0], w10, fma(x[h0,w0], w00, x[h0,w1] * w01)))
/// ```
/// which is the exact rounding sequence of ATen's CPU kernel
/// (`cpu_upsample_linear_channels_last`, chosen for outputs with
/// `out_h + out_w <= 128`, scalar loop for < 8 channels, FMA-contracted in
/// the x86-64 builds); it reproduces the 28x28 -> 32x32 test fixtures bit
/// for bit. For larger outputs ATen uses a generic kernel that rounds in a
/// different order, so results may differ from torch's by an ulp or so.
/// Weights are never merged: at the border (`i0 == i1`) the same pixel is
/// weighted twice, as in torch.
///
/// Example (2x2 -> 4x4): `[[0, 1], [2, 3]]` becomes
/// `[[0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]]`.
///
/// Panics if `src.len() != c * h * w`, or if `h` or `w` is 0 while the
/// output is not empty.
pub fn resize_bilinear(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        c * h * w,
        "resize_bilinear: input length is not c*h*w"
    );
    let mut out = Vec::with_capacity(c * out_h * out_w);
    if out_h * out_w == 0 {
        return out;
    }
    assert!(h > 0 && w > 0, "resize_bilinear: empty input");
    let ha = linear_axis(h, out_h);
    let wa = linear_axis(w, out_w);
    for plane in src.chunks_exact(h * w) {
        for &(h0, h1, lh0, lh1) in &ha {
            let (r0, r1) = (&plane[h0 * w..h0 * w + w], &plane[h1 * w..h1 * w + w]);
            for &(w0, w1, lw0, lw1) in &wa {
                let (w00, w01, w10, w11) = (lh0 * lw0, lh0 * lw1, lh1 * lw0, lh1 * lw1);
                let v = r0[w0].mul_add(w00, r0[w1] * w01);
                let v = r1[w0].mul_add(w10, v);
                out.push(r1[w1].mul_add(w11, v));
            }
        }
    }
    out
}

// ====================================================================== datasets

/// How images are turned into model input (see the module documentation for
/// the exact steps).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Output (height, width); `None` keeps each image's own size.
    pub size: Option<(usize, usize)>,
    /// Per-channel mean, applied after scaling to [0, 1]; one value or `channels` values.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation; one value or `channels` values.
    pub std: Vec<f32>,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

impl Default for Preprocess {
    /// Grayscale, original size, values in [0, 1].
    fn default() -> Self {
        Preprocess {
            size: None,
            mean: vec![0.0],
            std: vec![1.0],
            channels: 1,
        }
    }
}

impl Preprocess {
    /// The preprocessing of the test models in `tests/models` (README, "Model
    /// interface"): grayscale, 32x32, `(x - 0.5) / 0.5`.
    pub fn fixture_models() -> Self {
        Preprocess {
            size: Some((32, 32)),
            mean: vec![0.5],
            std: vec![0.5],
            channels: 1,
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        ensure!(
            self.channels == 1 || self.channels == 3,
            "channels must be 1 or 3, not {}",
            self.channels
        );
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            ensure!(
                v.len() == 1 || v.len() == self.channels,
                "{name} has {} values; give 1 or {} (one per channel)",
                v.len(),
                self.channels
            );
        }
        ensure!(
            self.std.iter().all(|&s| s != 0.0 && s.is_finite()),
            "std must be finite and non-zero"
        );
        ensure!(
            self.mean.iter().all(|m| m.is_finite()),
            "mean must be finite"
        );
        if let Some((h, w)) = self.size {
            ensure!(h > 0 && w > 0, "size must be positive, not {h}x{w}");
        }
        Ok(())
    }
}

/// Gray or RGB planes (CHW) in [0, 1] from a decoded image.
fn image_planes(img: &image::DynamicImage, channels: usize) -> (usize, usize, Vec<f32>) {
    use image::DynamicImage as D;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let eight_bit = matches!(
        img,
        D::ImageLuma8(_) | D::ImageLumaA8(_) | D::ImageRgb8(_) | D::ImageRgba8(_)
    );
    let gray: Vec<f32> = if !img.color().has_color() {
        if eight_bit {
            img.to_luma8()
                .into_raw()
                .into_iter()
                .map(|v| v as f32 / 255.0)
                .collect()
        } else {
            img.to_luma32f().into_raw()
        }
    } else if channels == 3 {
        let rgb: Vec<f32> = if eight_bit {
            img.to_rgb8()
                .into_raw()
                .into_iter()
                .map(|v| v as f32 / 255.0)
                .collect()
        } else {
            img.to_rgb32f().into_raw()
        };
        let mut planes = vec![0.0; 3 * h * w];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                planes[ch * h * w + i] = px[ch];
            }
        }
        return (h, w, planes);
    } else if eight_bit {
        img.to_rgb8()
            .into_raw()
            .chunks_exact(3)
            .map(|p| {
                // PIL's convert("L") (ITU-R 601-2 luma, 16-bit fixed point)
                let l =
                    (19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16;
                l as f32 / 255.0
            })
            .collect()
    } else {
        img.to_rgb32f()
            .into_raw()
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect()
    };
    let planes = if channels == 3 { gray.repeat(3) } else { gray };
    (h, w, planes)
}

/// Preprocesses a decoded image; returns ((C, H, W), CHW data).
pub fn preprocess_image(
    img: &image::DynamicImage,
    prep: &Preprocess,
) -> Result<((usize, usize, usize), Vec<f32>)> {
    prep.check()?;
    let c = prep.channels;
    let (h, w, mut x) = image_planes(img, c);
    ensure!(h > 0 && w > 0, "empty image");
    let (oh, ow) = prep.size.unwrap_or((h, w));
    if (oh, ow) != (h, w) {
        x = resize_bilinear(&x, c, h, w, oh, ow);
    }
    for (ch, plane) in x.chunks_exact_mut(oh * ow).enumerate() {
        let m = prep.mean[if prep.mean.len() == 1 { 0 } else { ch }];
        let s = prep.std[if prep.std.len() == 1 { 0 } else { ch }];
        plane.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
    Ok(((c, oh, ow), x))
}

/// Decodes and preprocesses one image file (format from its content).
pub fn load_image(path: &Path, prep: &Preprocess) -> Result<((usize, usize, usize), Vec<f32>)> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("opening {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {}", path.display()))?;
    preprocess_image(&img, prep).with_context(|| format!("preprocessing {}", path.display()))
}
