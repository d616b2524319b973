#!/usr/bin/env bash
# scripts/tract_icount.sh: dynamic A64 instructions of one fp32 inference in
# tract (tract-onnx, the version the tools crate uses), counted under
# qemu-aarch64, for comparison with graftnet's counts (BENCHMARKS.md,
# "aarch64: instruction counts").
#
#   bash scripts/tract_icount.sh MODEL.onnx [--cpus "cortex-a72 cortex-a76"]
#        [--runs A,B] [--macs N] [--out DIR] [--top N] [--no-build]
#
# 1. cross-builds targets/tract-icount (its own workspace and Cargo.lock) for
#    aarch64-unknown-linux-gnu with Debian's /usr/bin/rustc and /usr/bin/cargo
#    (linker aarch64-linux-gnu-gcc);
# 2. for every CPU, counts `tract-icount MODEL --runs A` and `--runs B`
#    (default 1 and 11) with aarch64-icount (--clean-env --argv0 tract-icount
#    --detail, classes fmla=fmla and fmul=fmul,fmadd); one inference =
#    (count(runs B) - count(runs A)) / (B - A), so start-up, loading and
#    optimizing cancel -- up to ~0.35 M instructions apart: tract's own
#    count varies from process to process (likely its randomly seeded
#    HashMaps while loading and optimizing); B - A = 10 divides that noise by 10 (--runs 1,2 is
#    the BENCHMARKS.md method, exact for graftnet, about +-0.3 M for tract);
# 3. prints one line per CPU: instructions per inference, and every --detail
#    field per inference; with --macs N also MACs per instruction.
#
# --macs: MACs per inference of the model (299.5e6 for MobileNetV2-1.0-224).
# --top N: write the N most executed mnemonics of one inference (difference of
# the two runs' histograms) to DIR/top.CPU.txt.
# The raw result lines are kept in DIR (default targets/tract-icount/target/icount).
#
# Environment: AARCH64_ICOUNT (the counting tool, default
# /work/shared/tools/aarch64-icount/aarch64-icount, else `aarch64-icount` on PATH),
# CARGO_TARGET_DIR (default targets/tract-icount/target).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
CRATE="$ROOT/targets/tract-icount"

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

MODEL=""
CPUS="cortex-a72 cortex-a76"
RA=1 RB=11
MACS=""
OUT=""
TOP=""
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cpus) CPUS="$2"; shift 2 ;;
        --macs) MACS="$2"; shift 2 ;;
        --runs) RA="${2%,*}" RB="${2#*,}"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --top) TOP="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$MODEL" ] || usage; MODEL="$1"; shift ;;
    esac
done
[ -n "$MODEL" ] || usage
[[ "$RA" =~ ^[0-9]+$ && "$RB" =~ ^[0-9]+$ && "$RB" -gt "$RA" ]] || { echo "--runs A,B with B > A" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "no such model: $MODEL" >&2; exit 2; }
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"

ICOUNT="${AARCH64_ICOUNT:-}"
if [ -z "$ICOUNT" ]; then
    if [ -x /work/shared/tools/aarch64-icount/aarch64-icount ]; then
        ICOUNT=/work/shared/tools/aarch64-icount/aarch64-icount
    else
        ICOUNT="$(command -v aarch64-icount || true)"
    fi
fi
[ -n "$ICOUNT" ] || { echo "aarch64-icount not found; set AARCH64_ICOUNT" >&2; exit 2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CRATE/target}"
OUT="${OUT:-$CARGO_TARGET_DIR/icount}"
mkdir -p "$OUT"
BIN="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/tract-icount"

if [ "$BUILD" = 1 ]; then
    # Debian's toolchain (rustc-web 1.96 with the aarch64 std), not rustup's.
    (cd "$CRATE" && RUSTC=/usr/bin/rustc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        /usr/bin/cargo build --release --locked --target aarch64-unknown-linux-gnu) >&2
fi
[ -x "$BIN" ] || { echo "not built: $BIN" >&2; exit 1; }

# value of key=N in a result line
field() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" "$2"; }

TOPARGS=()
[ -n "$TOP" ] && TOPARGS=(--top 100000)   # every mnemonic; diffed and cut to TOP below
for cpu in $CPUS; do
    for r in "$RA" "$RB"; do
        "$ICOUNT" --cpu "$cpu" --clean-env --argv0 tract-icount --detail \
            --class fmla=fmla --class fmul=fmul,fmadd ${TOPARGS[@]+"${TOPARGS[@]}"} \
            -o "$OUT/ic.$cpu.$r.txt" -- "$BIN" "$MODEL" --runs "$r" \
            >"$OUT/stdout.$cpu.$r.txt" 2>"$OUT/stderr.$cpu.$r.txt" || {
            echo "$cpu runs=$r failed; see $OUT/stderr.$cpu.$r.txt" >&2
            tail -3 "$OUT/stderr.$cpu.$r.txt" >&2
            exit 1
        }
    done
    f1="$OUT/ic.$cpu.$RA.txt" f2="$OUT/ic.$cpu.$RB.txt"
    line="$cpu (per inference, runs $RB - runs $RA):"
    for k in instructions simd vec simd_scalar fp simd_ldst sve ldst branch fmla fmul; do
        a=$(field "$k" "$f1") b=$(field "$k" "$f2")
        [ -n "$a" ] && [ -n "$b" ] && line="$line $k=$(( (b - a + (RB - RA) / 2) / (RB - RA) ))"
    done
    n=$(( ($(field instructions "$f2") - $(field instructions "$f1")) / (RB - RA) ))
    if [ -n "$MACS" ]; then
        line="$line macs_per_instr=$(awk -v m="$MACS" -v n="$n" 'BEGIN{printf "%.3f", m/n}')"
    fi
    line="$line threads=$(field threads "$f2") out=[$(sed -n 's/.*checksum=\([0-9a-f]*\).*argmax=\([0-9]*\).*/checksum=\1 argmax=\2/p' "$OUT/stdout.$cpu.$RB.txt")]"
    echo "$line"
    if [ -n "$TOP" ]; then
        # per-inference mnemonic counts from the "--top" lines "  COUNT  PCT%  MNEMONIC"
        # (tract prints nothing to stderr)
        awk -v top="$TOP" '
            FNR == 1 { f++ }
            /^ *[0-9]/ { c = $1; m = $NF; if (f == 1) a[m] += c; else b[m] += c; seen[m] = 1 }
            END { for (m in seen) { d = int((b[m] - a[m]) / span + 0.5); if (d != 0) print d, m } }' \
            span=$((RB - RA)) "$OUT/stderr.$cpu.$RA.txt" "$OUT/stderr.$cpu.$RB.txt" | sort -k1,1nr | head -n "$TOP" \
            >"$OUT/top.$cpu.txt"
        echo "  top $TOP mnemonics per inference: $OUT/top.$cpu.txt" >&2
    fi
done
