#!/usr/bin/env bash
# Training throughput of `graftnet learn` beside PyTorch's on the CPU, same
# setting, same run (alternating, RUNS times each): S/B + logits (default)
# on MobileNetV2-0.5, 1x64x64 inputs (Fashion-MNIST resized), batch 128,
# THREADS threads. Prints one JSON line per run and the medians.
#
#   pip install torch torchvision          # the peer (about 3 GB); not a test dependency
#   bash scripts/learn_bench.sh            # PATCH=sb+logits THREADS=2 RUNS=3 STEPS=20
#
# Throughput, for both: batch / median step time (PyTorch's script times
# each step after 3 warm-up steps; graftnet reports its median step, and
# its whole-epoch average as epoch_images_per_s).
# Peak memory: graftnet's is the process's maximum RSS (/usr/bin/time),
# PyTorch's the same measure from getrusage; both include the loaded data
# and the runtime's own baseline (for PyTorch, about 300 MB of libraries).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATCH=${PATCH:-sb+logits}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
STEPS=${STEPS:-20}
BATCH=128
WORK=${WORK:-out/learn-bench}
F=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$WORK"
cargo build --release -p graftnet-tools -p graftnet-fixtures -q
B=target/release/graftnet
[ -f "$F/train-images-idx3-ubyte.gz" ] || bash tests/data/setup.sh
# A MobileNetV2-0.5 base for 1x64x64 inputs (torchvision's structure, stem stride 2).
[ -f "$WORK/mnv2-0.5-64/base.onnx" ] ||
    target/release/graftnet-fixture --arch mnv2 --width 0.5 --resolution 64 --channels 1 --classes 10 --calib 1 \
        --out "$WORK/mnv2-0.5-64" > /dev/null
python3 -c "import torch" 2>/dev/null || { echo "PyTorch is not installed: pip install torch torchvision" >&2; exit 1; }
# Three warm-up steps, then STEPS timed ones (graftnet times its whole epoch).
N=$((BATCH * (STEPS + 3)))
for i in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%M" -o "$WORK/rss" $B learn --base "$WORK/mnv2-0.5-64/base.onnx" \
        --train "$F/train-images-idx3-ubyte.gz" --train-labels "$F/train-labels-idx1-ubyte.gz" \
        --size 64,64 --mean 0.5 --std 0.5 --limit "$N" --patch "$PATCH" --epochs 1 \
        --batch $BATCH --threads "$THREADS" --bn-samples 0 --lr 1e-3 \
        --out "$WORK/learned.onnx" --json |
        python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({'peer':'graftnet','patch':j['patch'],'batch':j['batch'],'threads':j['threads'],'images_per_s':round(j['batch']*1000/j['step_ms_median'],1),'step_ms_median':round(j['step_ms_median'],2),'epoch_images_per_s':round(j['images_per_s'],1),'peak_rss_mb':round(int(open('$WORK/rss').read().split()[-1])/1024,1),'trainable_params':j['trainable_params'],'load':open('/proc/loadavg').read().split()[0]}))" |
        tee -a "$WORK/runs.jsonl"
    python3 scripts/learn_peer.py --patch "$PATCH" --threads "$THREADS" --batch $BATCH \
        --width 0.5 --resolution 64 --in-channels 1 --steps "$STEPS" | tee -a "$WORK/runs.jsonl"
done
python3 - "$WORK/runs.jsonl" "$RUNS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-2 * int(sys.argv[2]):]
med = {}
for peer in ("graftnet", "pytorch"):
    r = [x for x in rows if x.get("peer") == peer]
    med[peer] = (statistics.median(x["images_per_s"] for x in r), statistics.median(x["peak_rss_mb"] for x in r))
    print(f"{peer:9s} median {med[peer][0]:7.1f} images/s, peak RSS {med[peer][1]:7.1f} MB over {len(r)} runs")
print(f"graftnet / pytorch throughput: {med['graftnet'][0] / med['pytorch'][0]:.2f}x")
EOF
