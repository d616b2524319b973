#!/usr/bin/env bash
# scripts/device_overhead.sh [WORK_DIR]: the round-trip overhead of one
# inference request to graftnet-device on this host (issue 11, "Done means"
# point 4), binary protocol against JSON lines, on a MobileNetV2-1.0-224
# export (`graftnet fixture`, as BENCHMARKS.md makes it) with a 224x224x3
# int8 input.
#
# For each protocol it starts the host graftnet-device on a Unix socket and
# runs `graftnet device bench`: COUNT requests (default 100, after one
# warm-up), each timed from the client's first byte out to its last byte
# in; the overhead of a request is that round trip minus the time the
# device reports for the task (its engine set-up, input copy into the arena
# and inference), i.e. framing, encoding, the socket and the copies.
# Medians, printed as a share of the device's median time. Needs an idle
# machine for a meaningful figure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/graftnet-device-overhead}"
COUNT="${GRAFTNET_BENCH_COUNT:-100}"
cargo build --release -q -p graftnet-tools --manifest-path "$ROOT/Cargo.toml"
cargo build --release -q --manifest-path "$ROOT/targets/device/Cargo.toml"
G="$ROOT/target/release/graftnet"
DEV="$ROOT/targets/device/target/release/graftnet-device"
mkdir -p "$WORK"
if [ ! -f "$WORK/export/backbone.gnb" ]; then
    "$G" fixture --width 1.0 --resolution 224 --classes 10 --out "$WORK/m" >"$WORK/fixture.log"
    "$G" export --base "$WORK/m/base.onnx" --task sb="$WORK/m/sb.onnx" --calib "$WORK/m/calib.npy" \
        --out "$WORK/export" >"$WORK/export.log"
fi
for proto in postcard json; do
    sock="$WORK/$proto.sock"
    rm -f "$sock"
    "$DEV" --dir "$WORK/export" --protocol "$proto" --socket "$sock" </dev/null 2>"$WORK/$proto.stderr" &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    extra=()
    [ "$proto" = json ] && extra=(--protocol json --shape 3,224,224)
    "$G" device --connect "unix:$sock" bench --count "$COUNT" --task sb "${extra[@]}" || { kill "$pid"; exit 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
