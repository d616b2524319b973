#!/usr/bin/env bash
# scripts/share_prefix_accuracy.sh [MODELS] [OUT]: the accuracy cost of
# `graftnet export --share-prefix`, per task, on full test splits.
#
# MODELS holds the models `scripts/learn_paper.sh` writes (base.onnx and
# TASK-{logits,sb-logits,dw-logits}.onnx for TASK in mnist, fashion-updown;
# default /work/exp3-results, the run LEARN.md reports). Each task is
# exported against base.onnx twice, with its own calibration data, with and
# without --share-prefix (bias correction 64, as learn_paper.sh), then
# evaluated in int8 against its float model on the whole test split.
# Prints a markdown table: int8 top-1 both ways, the difference, ops shared
# with the base, patch bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-/work/exp3-results}
OUT=${2:-target/share-prefix-accuracy}
G=tests/data/generated
[ -f "$G/fashion_test_x.npy" ] || bash tests/data/setup.sh
cargo build --release -q -p graftnet-tools
B=target/release/graftnet
mkdir -p "$OUT"
tasks=()
for t in mnist fashion-updown; do
    for p in logits sb-logits dw-logits; do tasks+=("$t:$t-$p"); done
done
for mode in plain share; do
    args=()
    for tp in "${tasks[@]}"; do
        data=${tp%%:*} name=${tp#*:}
        args+=(--task "$name=$MODELS/$name.onnx" --calib-task "$name=$G/${data}_calib_x.npy")
    done
    extra=(); [ $mode = share ] && extra=(--share-prefix)
    $B export --base "$MODELS/base.onnx" --calib $G/fashion_calib_x.npy "${args[@]}" \
        --bias-correction 64 "${extra[@]}" --out "$OUT/$mode" --json > "$OUT/$mode.json"
    for tp in "${tasks[@]}"; do
        data=${tp%%:*} name=${tp#*:}
        $B eval "$OUT/$mode" --task "$name" --data $G/${data}_test_x.npy \
            --labels $G/${data}_test_y.npy --reference "$MODELS/$name.onnx" --json \
            > "$OUT/$mode-$name.eval.json"
    done
done
python3 - "$OUT" "${tasks[@]}" <<'PY'
import json, sys
out, tasks = sys.argv[1], [t.split(':')[1] for t in sys.argv[2:]]
rep = {m: {t['name']: t for t in json.load(open(f'{out}/{m}.json'))['tasks']} for m in ('plain', 'share')}
print('| task | test images | float | int8 | int8 --share-prefix | difference | ops shared (of all) | patch bytes plain / shared |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
for t in tasks:
    e = {m: json.load(open(f'{out}/{m}-{t}.eval.json')) for m in ('plain', 'share')}
    p, s = 100 * e['plain']['top1'], 100 * e['share']['top1']
    n_ops = rep['share'][t].get('ops_shared_with_base')
    print(f"| {t} | {e['plain']['count']} | {100 * e['plain']['reference_top1']:.2f} | {p:.2f} | {s:.2f} | {s - p:+.2f} | "
          f"{n_ops} | {rep['plain'][t]['patch_bytes']} / {rep['share'][t]['patch_bytes']} |")
PY
