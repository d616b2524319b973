//! The raw data packages the test fixtures come from: Fashion-MNIST IDX
//! files.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};

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
