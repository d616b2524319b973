//! `.npy` arrays: reading NumPy format 1.0/2.0/3.0, writing 1.0 (see the
//! module doc of [`crate::data`]).

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

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
