#!/usr/bin/env bash
# Builds the fuzz targets and runs one (or all) for a while.
#
#   bash runtime/fuzz/run.sh TARGET [SECONDS [libFuzzer flags...]]
#   bash runtime/fuzz/run.sh all 50          # each target in turn (CI)
#
# TARGET: backbone, backbone_resealed, patch, patch_resealed, patch_stream.
# SECONDS: -max_total_time (default 60). The corpus grows in corpus/TARGET
# (not committed); the committed seeds/ are read as a second corpus
# directory. A crash, leak or timeout input is written to artifacts/TARGET/
# and the script fails.
#
# Toolchain: nightly through rustup (`cargo +nightly`); without one, the
# default toolchain with RUSTC_BOOTSTRAP=1 (the sanitizer flags are
# unstable). Build: `cargo fuzz build` when cargo-fuzz is installed, else
# the same rustc flags directly (no install needed), with debug assertions
# and overflow checks on in both cases.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
all=(backbone backbone_resealed patch patch_resealed patch_stream)
target="${1:?usage: run.sh TARGET|all [SECONDS [libFuzzer flags...]]}"
secs="${2:-60}"
shift $(($# < 2 ? $# : 2))

if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
    rustc=(rustc +nightly)
else
    echo "[fuzz] no nightly toolchain: using $(cargo --version) with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
    rustc=(rustc)
fi
triple=$("${rustc[@]}" -vV | sed -n 's/^host: //p')

if [ -z "${GRAFTNET_FUZZ_DIRECT:-}" ] && "${cargo[@]}" fuzz --version >/dev/null 2>&1; then
    (cd "$here/.." && "${cargo[@]}" fuzz build --release --debug-assertions)
else
    # What `cargo fuzz build --release --debug-assertions` passes to rustc.
    RUSTFLAGS="-Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing -Zsanitizer=address -Cforce-frame-pointers \
        -Cdebug-assertions -Coverflow-checks" \
        "${cargo[@]}" build --release --target "$triple" --bins \
        --manifest-path "$here/Cargo.toml"
fi

seeds_of() {
    case "$1" in
    backbone*) echo backbone ;;
    patch_stream) echo patch_stream ;;
    patch*) echo patch ;;
    esac
}

run_one() {
    local t="$1"
    shift
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    echo "[fuzz] $t for ${secs}s"
    "$here/target/$triple/release/$t" -max_total_time="$secs" -print_final_stats=1 \
        -timeout=30 -artifact_prefix="$here/artifacts/$t/" "$@" \
        "$here/corpus/$t" "$here/seeds/$(seeds_of "$t")"
}

if [ "$target" = all ]; then
    for t in "${all[@]}"; do
        run_one "$t" "$@"
    done
else
    run_one "$target" "$@"
fi
