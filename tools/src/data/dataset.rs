//! Datasets (`.npy` or image folders) and single inputs for the CLI.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::npy::read_npy;
use super::preprocess::{load_image, Preprocess};

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
