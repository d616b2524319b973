#!/usr/bin/env python3
"""Time an ONNX model on onnxruntime (fp32 and static int8 QDQ), side by
side with graftnet's export of the same model.

    python3 scripts/peer_bench.py MODEL.onnx [--shape 3,224,224]
        [--iters 50] [--threads 1,2] [--calib CALIB.npy]
        [--graftnet-dir EXPORT_DIR] [--graftnet-bin target/release/graftnet]
        [--kernels all] [--json]

onnxruntime int8: `onnxruntime.quantization.quantize_static` with
QuantFormat.QDQ, per-channel weights (per_channel=True), int8 activations
and weights (QInt8/QInt8, the TFLite-like scheme graftnet uses), calibrated
on a few samples (CALIB.npy (N,C,H,W) float32 if given, else seeded random
inputs). Each configuration runs with intra_op_num_threads = 1 and 2
(inter_op 1, sequential execution, all graph optimizations). Medians are
over --iters runs after warm-up.

With --graftnet-dir, runs `graftnet bench DIR --json --iters N [--kernels K]`
and prints graftnet's median next to the peers and the ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat,
                                      QuantType, quantize_static)


def input_info(path):
    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    for i in m.graph.input:
        if i.name not in inits:
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in i.type.tensor_type.shape.dim]
            return i.name, dims
    raise SystemExit(f"{path}: no input")


class Reader(CalibrationDataReader):
    def __init__(self, name, samples):
        self.it = iter([{name: s[None]} for s in samples])

    def get_next(self):
        return next(self.it, None)


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_session(sess, name, x, iters):
    feed = {name: x}
    for _ in range(max(3, iters // 10)):
        sess.run(None, feed)
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append((time.perf_counter() - t0) * 1e3)
    t.sort()
    return statistics.median(t), t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--shape", help="C,H,W (default: the model's static input shape)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--calib", help=".npy (N,C,H,W) float32 calibration samples")
    ap.add_argument("--calib-n", type=int, default=8)
    ap.add_argument("--graftnet-dir")
    ap.add_argument("--graftnet-bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "graftnet"))
    ap.add_argument("--kernels", help="graftnet kernel table (or 'all')")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ort.set_default_logger_severity(3)  # no per-initializer warnings

    name, dims = input_info(a.model)
    if a.shape:
        c, h, w = (int(v) for v in a.shape.split(","))
    else:
        if len(dims) != 4 or any(d in (None, 0) for d in dims[1:]):
            raise SystemExit(f"input {name} has shape {dims}; pass --shape C,H,W")
        c, h, w = dims[1:]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(1, c, h, w)).astype(np.float32)
    if a.calib:
        calib = np.load(a.calib).astype(np.float32)[: a.calib_n]
    else:
        calib = rng.uniform(-1, 1, size=(a.calib_n, c, h, w)).astype(np.float32)

    tmp = tempfile.mkdtemp(prefix="peer_bench_")
    qpath = os.path.join(tmp, "model.int8.qdq.onnx")
    t0 = time.perf_counter()
    quantize_static(a.model, qpath, Reader(name, calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    quant_s = time.perf_counter() - t0

    rows = []
    for threads in (int(t) for t in a.threads.split(",")):
        for label, path in (("onnxruntime fp32", a.model), ("onnxruntime int8 QDQ", qpath)):
            med, p90 = time_session(session(path, threads), name, x, a.iters)
            rows.append({"runtime": label, "threads": threads, "median_ms": med, "p90_ms": p90})

    gn = None
    if a.graftnet_dir:
        cmd = [a.graftnet_bin, "bench", a.graftnet_dir, "--json", "--iters", str(a.iters)]
        if a.kernels:
            cmd += ["--kernels", a.kernels]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        gn = json.loads(out)
        per = gn.get("per_table") or {gn["kernels"]: {"median_ms": gn["median_ms"], "p90_ms": gn["p90_ms"]}}
        for table, r in per.items():
            rows.append({"runtime": f"graftnet int8 ({table})", "threads": gn.get("threads", 1),
                         "median_ms": r["median_ms"], "p90_ms": r["p90_ms"]})
        if gn.get("tract_median_ms") is not None:
            rows.append({"runtime": "tract fp32", "threads": 1, "median_ms": gn["tract_median_ms"], "p90_ms": None})

    if a.json:
        print(json.dumps({"model": a.model, "shape": [c, h, w], "onnxruntime": ort.__version__,
                          "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                          "quantize_s": quant_s, "rows": rows, "graftnet": gn}, indent=2))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {a.model}  input {c}x{h}x{w}  onnxruntime {ort.__version__}  ({a.iters} iterations, load average {load:.2f})")
    print(f"{'runtime':<30} {'threads':>7} {'median ms':>10} {'p90 ms':>8}")
    for r in rows:
        p90 = f"{r['p90_ms']:.3f}" if r["p90_ms"] is not None else "-"
        print(f"{r['runtime']:<30} {r['threads']:>7} {r['median_ms']:>10.3f} {p90:>8}")
    if gn:
        g = gn["median_ms"]
        print(f"\nratios: peer median / graftnet ({gn['kernels']}, 1 thread) median")
        for r in rows:
            if not r["runtime"].startswith("graftnet"):
                print(f"  {r['runtime']:<28} x{r['threads']}  {r['median_ms'] / g:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
