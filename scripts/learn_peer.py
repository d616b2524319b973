#!/usr/bin/env python3
"""PyTorch CPU peer for `graftnet learn`: time one "model patch" training
step (Mudrakarta et al., "K for the Price of 1", ICLR 2019) through a
MobileNetV2.

Install (default PyPI only; the wheel PyPI serves may be the CUDA build,
about 3 GB, which runs on CPU just the same):

    pip install torch torchvision numpy

Run:

    python3 scripts/learn_peer.py [--patch sb+logits|logits|dw+logits|full]
        [--threads 2] [--steps 20] [--batch 128] [--resolution 64]
        [--width 0.5] [--in-channels 1] [--classes 10] [--data X.npy]
        [--labels Y.npy] [--seed 0]

Model: torchvision.models.mobilenet_v2(width_mult=W, num_classes=10) with
features[0][0] replaced by Conv2d(in_channels, make_divisible(32*W, 8), 3,
stride=2, padding=1, bias=False) (1 grayscale channel by default). Weights
are torchvision's random initialisation (fixed seed); this measures speed,
not accuracy.

Patches (the trainable set; everything else has requires_grad=False, but
gradients still flow through every frozen conv, depthwise included):
  sb+logits  every BatchNorm2d weight and bias, and the final Linear
  logits     the final Linear only
  dw+logits  every depthwise Conv2d (groups == in_channels) and the final Linear
  full       every parameter

The model is in train mode (BatchNorm uses batch statistics and updates its
running statistics; the classifier's Dropout(0.2) is active). Optimizer:
Adam, lr 1e-3, over the trainable parameters only. Input: seeded random
N(0,1) images (B, C, R, R) and random labels, or --data X.npy (N, C, R, R)
float32 (batches drawn cyclically; --labels Y.npy int, else random labels).

Timing: torch.set_num_threads(T) (and interop threads 1); 3 warm-up steps,
then --steps timed steps (zero_grad, forward, cross-entropy, backward,
optimizer step), each timed alone with time.perf_counter.
images_per_s = batch / median step time.

Memory: baseline_rss_mb is ru_maxrss (resource.getrusage(RUSAGE_SELF))
before the model is created (after importing torch and making the input
batch); peak_rss_mb is ru_maxrss right after the timed loop. The training
increment is their difference.

Prints one JSON line:
  {"peer":"pytorch","torch_version":..,"patch":..,"batch":..,"resolution":..,
   "width":..,"threads":..,"images_per_s":..,"step_ms_median":..,
   "step_ms_min":..,"step_ms_max":..,"baseline_rss_mb":..,"peak_rss_mb":..,
   "trainable_params":..,"total_params":..,"in_channels":..,"steps":..}
"""

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision


def make_divisible(v, divisor=8, min_value=None):
    # Same rounding as torchvision.models._utils._make_divisible.
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def rss_mb():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_model(width, in_channels, classes):
    m = torchvision.models.mobilenet_v2(width_mult=width, num_classes=classes)
    first = make_divisible(32 * width, 8)
    m.features[0][0] = nn.Conv2d(in_channels, first, 3, stride=2, padding=1,
                                 bias=False)
    # Same init torchvision gives its convs.
    nn.init.kaiming_normal_(m.features[0][0].weight, mode="fan_out")
    return m


def trainable(model, patch):
    """Set requires_grad for the patch; return the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(patch == "full")
    if patch == "full":
        return list(model.parameters())
    mods = [model.classifier[-1]]  # the final Linear
    if patch == "sb+logits":
        mods += [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    elif patch == "dw+logits":
        mods += [m for m in model.modules() if isinstance(m, nn.Conv2d)
                 and m.groups == m.in_channels and m.groups > 1]
    elif patch != "logits":
        raise SystemExit(f"unknown patch {patch!r}")
    params = []
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patch", default="sb+logits",
                    choices=["sb+logits", "logits", "dw+logits", "full"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--data", help="float32 .npy of shape (N, C, R, R)")
    ap.add_argument("--labels", help="integer .npy of shape (N,)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    B, C, R = a.batch, a.in_channels, a.resolution
    if a.data:
        data = np.load(a.data).astype(np.float32, copy=False)
        if data.ndim != 4 or data.shape[1] != C:
            raise SystemExit(f"{a.data}: shape {data.shape}, want (N, {C}, H, W)")
        R = data.shape[2]
        if a.labels:
            labels = np.load(a.labels).astype(np.int64)
        else:
            labels = rng.integers(0, a.classes, size=len(data))
        data = torch.from_numpy(np.ascontiguousarray(data))
        labels = torch.from_numpy(labels)
        n = len(data)

        def batch(i):
            idx = torch.arange(i * B, (i + 1) * B) % n
            return data[idx], labels[idx]
    else:
        x = torch.randn(B, C, R, R)
        y = torch.randint(0, a.classes, (B,))

        def batch(i):
            return x, y

    baseline = rss_mb()
    model = build_model(a.width, C, a.classes)
    model.train()
    params = trainable(model, a.patch)
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        xb, yb = batch(i)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    for i in range(a.warmup):
        step(i)
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        loss = step(a.warmup + i)
        times.append(time.perf_counter() - t0)
    peak = rss_mb()
    if not torch.isfinite(loss):
        print("warning: loss is not finite", file=sys.stderr)

    med = statistics.median(times)
    print(json.dumps({
        "peer": "pytorch",
        "torch_version": torch.__version__,
        "patch": a.patch,
        "batch": B,
        "resolution": R,
        "width": a.width,
        "in_channels": C,
        "threads": a.threads,
        "steps": a.steps,
        "images_per_s": round(B / med, 1),
        "step_ms_median": round(med * 1e3, 2),
        "step_ms_min": round(min(times) * 1e3, 2),
        "step_ms_max": round(max(times) * 1e3, 2),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "trainable_params": n_train,
        "total_params": n_total,
    }))


if __name__ == "__main__":
    main()
