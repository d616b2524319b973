#!/usr/bin/env bash
# The paper's experiment at small scale, with graftnet alone (tools/LEARN.md):
#   1. a MobileNetV2-0.35 base (32x32 grayscale, stem stride 1) trained from
#      scratch on 30,000 Fashion-MNIST images (`graftnet learn --patch full`);
#   2. two new tasks (MNIST digits; upside-down Fashion-MNIST), each learned
#      four ways: logits only, S/B + logits, DW + logits, full fine-tuning;
#   3. the same two tasks learned together (S/B + logits), with the shared
#      network frozen and trained;
#   4. every patch exported through the normal path and evaluated at int8
#      against its float model on the full test splits.
# Writes $OUT/*.json and prints the tables of LEARN.md.
#
#   bash scripts/learn_paper.sh            # OUT=out/learn THREADS=2 (GRAFTNET=binary)
#
# Needs the full data sets: bash tests/data/setup.sh (test splits) and
# python3 tests/data/train_sets.py (training splits). About 25 minutes on
# 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-out/learn}
THREADS=${THREADS:-2}
# Empirical bias correction at export (LEARN.md, "int8"): without it the
# logits-only MNIST patch loses 1.45 points at int8, with it 0.55.
BIAS_CORRECTION=${BIAS_CORRECTION:-64}
G=tests/data/generated
mkdir -p "$OUT"
[ -f "$G/fashion_test_x.npy" ] || bash tests/data/setup.sh
[ -f "$G/fashion_train_x.npy" ] || python3 tests/data/train_sets.py --out "$G"
if [ -z "${GRAFTNET:-}" ]; then
    cargo build --release -p graftnet-tools -q
fi
B=${GRAFTNET:-target/release/graftnet}
log() { echo "[learn_paper] $*" >&2; }

if [ ! -f "$OUT/base.onnx" ]; then
    log "base: MobileNetV2-0.35 from scratch on Fashion-MNIST"
    $B learn --arch mobilenet_v2:0.35 --input-shape 1,32,32 --stem-stride 1 \
        --train $G/fashion_train_x.npy --train-labels $G/fashion_train_y.npy \
        --val $G/fashion_test_x.npy --val-labels $G/fashion_test_y.npy \
        --patch full --epochs 3 --batch 64 --lr 5e-3 --threads "$THREADS" --seed 0 \
        --out "$OUT/base.onnx" --json > "$OUT/base.json"
fi

TASKS="mnist fashion-updown"
for t in $TASKS; do
    for p in logits sb+logits dw+logits full; do
        f="$OUT/$t-${p//+/-}"
        [ -f "$f.onnx" ] && continue
        log "$t: $p"
        $B learn --base "$OUT/base.onnx" \
            --train $G/${t}_train_x.npy --train-labels $G/${t}_train_y.npy \
            --val $G/${t}_test_x.npy --val-labels $G/${t}_test_y.npy \
            --patch "$p" --epochs 2 --batch 32 --threads "$THREADS" --seed 0 \
            --out "$f.onnx" --json > "$f.json"
    done
done

for shared in frozen train; do
    d="$OUT/multi-$shared"
    [ -f "$d.json" ] && continue
    log "multi-task, shared network $shared"
    $B learn --base "$OUT/base.onnx" \
        --task mnist=$G/mnist_train_x.npy,$G/mnist_train_y.npy \
        --task fashion-updown=$G/fashion-updown_train_x.npy,$G/fashion-updown_train_y.npy \
        --task-val mnist=$G/mnist_test_x.npy,$G/mnist_test_y.npy \
        --task-val fashion-updown=$G/fashion-updown_test_x.npy,$G/fashion-updown_test_y.npy \
        --patch sb+logits --shared $shared --epochs 2 --batch 32 --threads "$THREADS" --seed 0 \
        --out "$d" --json > "$d.json"
done

# Export every patch-shaped model against the learned base (full fine-tunes
# change every weight: they are the accuracy ceiling, not patches).
export_dir() { # OUT BASE NAME=MODEL:CALIB ...
    local out=$1 base=$2; shift 2
    local args=()
    for spec in "$@"; do
        local name=${spec%%=*} rest=${spec#*=}
        args+=(--task "$name=${rest%%:*}" --calib-task "$name=${rest#*:}")
    done
    $B export --base "$base" --calib $G/fashion_calib_x.npy "${args[@]}" \
        --bias-correction "$BIAS_CORRECTION" --out "$out" --json > "$out.json"
}
specs=()
for t in $TASKS; do
    for p in logits sb-logits dw-logits; do
        specs+=("$t-$p=$OUT/$t-$p.onnx:$G/${t}_calib_x.npy")
    done
    specs+=("$t-multi=$OUT/multi-frozen/$t.onnx:$G/${t}_calib_x.npy")
done
log "export"
export_dir "$OUT/export" "$OUT/base.onnx" "${specs[@]}"
export_dir "$OUT/export-shared" "$OUT/multi-train/base.onnx" \
    "mnist=$OUT/multi-train/mnist.onnx:$G/mnist_calib_x.npy" \
    "fashion-updown=$OUT/multi-train/fashion-updown.onnx:$G/fashion-updown_calib_x.npy"

log "int8 evaluation"
evaluate() { # DIR TASK MODEL DATA
    $B eval "$1" --task "$2" --data $G/${4}_test_x.npy --labels $G/${4}_test_y.npy \
        --reference "$3" --json > "$1-$2.eval.json"
}
evaluate "$OUT/export" base "$OUT/base.onnx" fashion
for t in $TASKS; do
    for p in logits sb-logits dw-logits; do
        evaluate "$OUT/export" "$t-$p" "$OUT/$t-$p.onnx" "$t"
    done
    evaluate "$OUT/export" "$t-multi" "$OUT/multi-frozen/$t.onnx" "$t"
    evaluate "$OUT/export-shared" "$t" "$OUT/multi-train/$t.onnx" "$t"
done

python3 scripts/learn_tables.py "$OUT"
