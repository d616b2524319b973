#!/usr/bin/env bash
# Regenerates the fuzz seeds (seeds/) with the release `graftnet` exporter
# (seeds/mnv3.gnb is the backbone of the mnv3 patches, not a seed):
#   - tiny: a synthetic MobileNetV3-Small (`graftnet-fixture`, 16x16x1,
#     width 0.1, 4 classes) with S/B, DW and logits tasks, exported with
#     task version 2: small, so the fuzzer runs it thousands of times a second;
#     and a task with its own head (FC-ReLU-FC, 32 hidden units);
#   - mnv3: the shipped PyTorch MobileNetV3-Small-0.5 (tests/models/mnv3)
#     with its two S/B tasks: a real trained model (lookup tables, SE muls).
# Then the streaming target's seeds: each patch behind a 6-byte control
# prefix (fail_after u32, chunk u8, mode u8; see src/lib.rs `stream_case`).
# The exporter is deterministic, so re-running gives the same bytes unless
# the exporter changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/../.."
models="$root/tests/models"
bin="${GRAFTNET:-$root/target/release/graftnet}"
fixture="${GRAFTNET_FIXTURE:-$root/target/release/graftnet-fixture}"
if [ ! -x "$bin" ] || [ ! -x "$fixture" ]; then
    (cd "$root" && cargo build --release -p graftnet-tools -p graftnet-fixtures)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$fixture" --arch mnv3 --width 0.1 --resolution 16 --channels 1 --classes 4 \
    --calib 8 --seed 7 --out "$work/tiny" >/dev/null
"$bin" export --base "$work/tiny/base.onnx" \
    --task sb="$work/tiny/sb.onnx" --task dw="$work/tiny/dw.onnx" \
    --task logits="$work/tiny/logits.onnx" --task head="$work/tiny/head.onnx" \
    --calib "$work/tiny/calib.npy" --task-version 2 --out "$work/tiny-export" >/dev/null

"$bin" export --base "$models/mnv3/base.folded.onnx" \
    --task mnist-sb="$models/mnv3/mnist-sb.folded.onnx" \
    --task fashion-updown-sb="$models/mnv3/fashion-updown-sb.folded.onnx" \
    --calib "$models/data/fashion_calib_x.npy" \
    --calib-task mnist-sb="$models/data/mnist_calib_x.npy" \
    --calib-task fashion-updown-sb="$models/data/fashion-updown_calib_x.npy" \
    --calib-limit 16 --out "$work/mnv3-export" >/dev/null

seeds="$here/seeds"
rm -rf "$seeds"
mkdir -p "$seeds/backbone" "$seeds/patch" "$seeds/patch_stream"
cp "$work/tiny-export/backbone.gnb" "$seeds/backbone/tiny.gnb"
# the patch targets' second backbone, not a backbone seed (see src/lib.rs)
cp "$work/mnv3-export/backbone.gnb" "$seeds/mnv3.gnb"
for t in sb dw logits head; do
    cp "$work/tiny-export/$t.gnp" "$seeds/patch/tiny-$t.gnp"
done
for t in mnist-sb fashion-updown-sb; do
    cp "$work/mnv3-export/$t.gnp" "$seeds/patch/mnv3-$t.gnp"
done

# control prefix: fail_after (u32 LE), chunk, mode
prefix() { printf "\\x$1\\x$2\\x$3\\x$4\\x$5\\x$6"; }
for t in sb dw logits; do
    { prefix ff ff ff ff 00 00; cat "$seeds/patch/tiny-$t.gnp"; } >"$seeds/patch_stream/tiny-$t"
done
# fails after 100 bytes, 7-byte reads
{ prefix 64 00 00 00 07 00; cat "$seeds/patch/tiny-sb.gnp"; } >"$seeds/patch_stream/tiny-sb-fail100"
# ends after 40 bytes (inside the header)
{ prefix 28 00 00 00 00 01; cat "$seeds/patch/tiny-dw.gnp"; } >"$seeds/patch_stream/tiny-dw-eof40"
# buffer 8 bytes short
{ prefix ff ff ff ff 00 22; cat "$seeds/patch/tiny-logits.gnp"; } >"$seeds/patch_stream/tiny-logits-short"
{ prefix ff ff ff ff 00 00; cat "$seeds/patch/mnv3-mnist-sb.gnp"; } >"$seeds/patch_stream/mnv3-mnist-sb"

du -ab "$seeds" | sort -k2
