#!/usr/bin/env bash
# targets/qemu-test.sh: build every board package and test it under qemu.
#
#   bash targets/qemu-test.sh
#
# 1. installs what it needs from Debian (only if something is missing);
# 2. builds the host exporter and targets/host-ref, makes a signing key and
#    exports the MobileNetV2 test models (tests/models/mnv2), signed, to
#    targets/target/export/mnv2, and writes
#    the host's results: MCU samples (selftest.json) and a device request
#    stream with the expected response of every line;
# 3. runs the runtime's own tests for aarch64 under qemu-aarch64 -cpu cortex-a72
#    and -cpu cortex-a76, and the MCU slot store's power-cut tests on the host;
# 4. builds rpi4, rpi5 and jetson-orin and runs graftnet-device under
#    qemu-aarch64 with --verify-key on every request (stdin) and over its
#    Unix socket (two concurrent clients), checking every response against
#    the host; then each with --protocol postcard on a socket over a
#    directory holding only the backbone: `graftnet device` uploads two
#    signed patches, runs GRAFTNET_POSTCARD_REQUESTS inferences alternating
#    three tasks (each checked against the host runtime, bit for bit), and
#    sees a corrupted upload, an unknown task and garbage refused;
# 5. builds cortex-m4 and cortex-m7 (and the STM32H743 layout) and runs both
#    firmwares under qemu-system-arm: exit 0 only if every result is
#    bit-identical to the host's; the cortex-m4 firmware also with feature
#    verify (the export's signatures checked against the compiled-in key, a
#    modified and an unsigned patch refused); then both kernel self-test
#    firmwares (the dsp kernels against the scalar reference); then the MCU
#    device service for m4 and m7 (targets/mcu-serve.sh): two patches uploaded
#    over the UART socket, 200 inferences against the host, a patch exported
#    later, typed refusals (graftnet-host-ref mcu);
# 6. prints a table; exits non-zero on any failure or mismatch.
#
# Environment: GRAFTNET_REQUESTS (valid device requests per board, default
# 10000), GRAFTNET_POSTCARD_REQUESTS (binary-protocol inferences per board,
# default 300), GRAFTNET_MCU_SAMPLES (samples per task in the firmware, default 8),
# GRAFTNET_NO_INSTALL=1 (never call apt-get). Everything is written under
# targets/target/ (logs in targets/target/logs/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WORK="$HERE/target"
LOGS="$WORK/logs"
EXPORT="$WORK/export/mnv2"
DT="$WORK/device-test"
N_REQ="${GRAFTNET_REQUESTS:-10000}"
N_MCU="${GRAFTNET_MCU_SAMPLES:-8}"
N_PC="${GRAFTNET_POSTCARD_REQUESTS:-300}"
T0=$(date +%s)

# Debian's toolchain: rustc-web/cargo-web install /usr/bin/rustc and
# /usr/bin/cargo, with the aarch64 std (libstd-rust-web-dev:arm64) and the
# library sources for -Zbuild-std (rust-web-src). A rustup toolchain earlier
# in PATH is not used.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
unset RUSTFLAGS CARGO_BUILD_TARGET CARGO_TARGET_DIR || true

mkdir -p "$LOGS" "$DT"
FAILED=()
fail() { FAILED+=("$1"); echo "FAILED: $1" >&2; }
step() { printf '\n== %s (%ds)\n' "$1" $(($(date +%s) - T0)); }
# run LOG CMD...: a command with its output in a log (tail shown on failure)
run() {
    local log="$LOGS/$1" rc=0; shift
    "$@" >"$log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        echo "--- exit $rc; last lines of $log:" >&2
        tail -25 "$log" >&2
    fi
    return $rc
}

# ---------------------------------------------------------------- 1. tools
step "prerequisites"
missing=()
for c in /usr/bin/rustc /usr/bin/cargo /usr/bin/rustdoc aarch64-linux-gnu-gcc qemu-aarch64 qemu-system-arm ld.lld; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ] || missing+=("aarch64 std")
[ -d /usr/lib/rustlib/src/rust/library/core ] || missing+=("rust library sources")
SIZE_TOOL=$(command -v llvm-size || command -v arm-none-eabi-size || true)
NM_TOOL=$(command -v llvm-nm || command -v arm-none-eabi-nm || true)
[ -n "$SIZE_TOOL" ] && [ -n "$NM_TOOL" ] || missing+=("ARM size/nm")
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}"
    if [ "${GRAFTNET_NO_INSTALL:-0}" = 1 ]; then echo "GRAFTNET_NO_INSTALL=1: not installing" >&2; exit 1; fi
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        rustc-web cargo-web libstd-rust-web-dev:arm64 rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
        qemu-user qemu-user-static qemu-system-arm lld binutils-arm-none-eabi
    SIZE_TOOL=$(command -v llvm-size || command -v arm-none-eabi-size)
    NM_TOOL=$(command -v llvm-nm || command -v arm-none-eabi-nm)
fi
echo "rustc: $($RUSTC --version); cargo: $($CARGO --version); $(qemu-aarch64 --version | head -1)"

# ------------------------------------------------------ 2. export, host results
step "host: build the exporter and host-ref"
# One target dir for both (host-ref depends on graftnet-tools; same profile,
# so tract is compiled once). The host side only exports five small models
# and runs ~1000 reference inferences, so everything is built at opt-level 0
# except the runtime and tract's kernels: that compiles in a quarter of the
# time of the release profile (tract dominates), and the export takes ~30 s
# instead of ~2 s. Results do not depend on optimization (integer and IEEE
# arithmetic only; the blobs are byte-identical either way).
HOST_CARGO=(env CARGO_TARGET_DIR="$WORK/host" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 "$CARGO" build --release
            --config 'profile.release.package.graftnet.opt-level=3' --config 'profile.release.package.tract-linalg.opt-level=3')
run host-build.log "${HOST_CARGO[@]}" -p graftnet-tools --manifest-path "$ROOT/Cargo.toml"
run host-ref-build.log "${HOST_CARGO[@]}" --manifest-path "$HERE/host-ref/Cargo.toml"
GRAFTNET="$WORK/host/release/graftnet"
HOSTREF="$WORK/host/release/graftnet-host-ref"

step "host: export tests/models/mnv2 to $EXPORT, signed"
M="$ROOT/tests/models/mnv2"; D="$ROOT/tests/models/data"
rm -rf "$EXPORT"
KEY="$WORK/export/signing.key"; PUBKEY="$KEY.pub"
mkdir -p "$WORK/export"
run keygen.log "$GRAFTNET" keygen --out "$KEY" --force
run export.log "$GRAFTNET" export --base "$M/base.folded.onnx" \
    --task mnist-sb="$M/mnist-sb.folded.onnx" --task mnist-dw="$M/mnist-dw.folded.onnx" \
    --task fashion-updown-sb="$M/fashion-updown-sb.folded.onnx" --task fashion-binary-logits="$M/fashion-binary-logits.folded.onnx" \
    --calib "$D/fashion_calib_x.npy" \
    --calib-task mnist-sb="$D/mnist_calib_x.npy" --calib-task mnist-dw="$D/mnist_calib_x.npy" \
    --calib-task fashion-updown-sb="$D/fashion-updown_calib_x.npy" --calib-task fashion-binary-logits="$D/fashion-binary_calib_x.npy" \
    --out "$EXPORT" --sign "$KEY"
cat "$LOGS/export.log"
DATA=(--data base="$D/fashion_test_x.npy" --data mnist-sb="$D/mnist_test_x.npy" --data mnist-dw="$D/mnist_test_x.npy"
      --data fashion-updown-sb="$D/fashion-updown_test_x.npy" --data fashion-binary-logits="$D/fashion-binary_test_x.npy")
run selftest.log "$HOSTREF" selftest --dir "$EXPORT" "${DATA[@]}" --per-task "$N_MCU" --out "$EXPORT/selftest.json"
REQ="$DT/requests.jsonl"; EXP="$DT/expected.jsonl"
run requests.log "$HOSTREF" requests --dir "$EXPORT" "${DATA[@]}" --count "$N_REQ" --seed 1 --requests "$REQ" --expected "$EXP"
cat "$LOGS/selftest.log" "$LOGS/requests.log"

# ------------------------------------------------------- 3. runtime tests
step "runtime tests under qemu-aarch64"
declare -A TESTS
AARCH64_ENV=(env CARGO_TARGET_DIR="$WORK/aarch64-test" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc)
for cpu in cortex-a72 cortex-a76; do
    log="runtime-tests-$cpu.log"
    if run "$log" "${AARCH64_ENV[@]}" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu" \
        "$CARGO" test -p graftnet --features std,verify --target aarch64-unknown-linux-gnu --manifest-path "$ROOT/Cargo.toml"; then :; else
        fail "runtime tests ($cpu)"
    fi
    passed=$(grep -o '[0-9]* passed' "$LOGS/$log" | awk '{s+=$1} END {print s+0}')
    failed=$(grep -o '[0-9]* failed' "$LOGS/$log" | awk '{s+=$1} END {print s+0}')
    TESTS[$cpu]="$passed/$((passed + failed))"
    echo "$cpu: ${TESTS[$cpu]} tests passed"
done

step "graftnet-device and graftnet-protocol library tests (host)"
if run device-tests.log "$CARGO" test --manifest-path "$HERE/device/Cargo.toml"; then :; else fail "graftnet-device tests"; fi
p=$(grep -o '[0-9]* passed' "$LOGS/device-tests.log" | awk '{s+=$1} END {print s+0}')
f=$(grep -o '[0-9]* failed' "$LOGS/device-tests.log" | awk '{s+=$1} END {print s+0}')
TESTS[device]="$p/$((p + f))"
if run protocol-tests.log "$CARGO" test --manifest-path "$HERE/protocol/Cargo.toml"; then :; else fail "graftnet-protocol tests"; fi
p=$(grep -o '[0-9]* passed' "$LOGS/protocol-tests.log" | awk '{s+=$1} END {print s+0}')
f=$(grep -o '[0-9]* failed' "$LOGS/protocol-tests.log" | awk '{s+=$1} END {print s+0}')
TESTS[protocol]="$p/$((p + f))"

step "MCU slot store tests (host, simulated NOR flash with power cuts)"
if run mcu-tests.log "$CARGO" test --release --manifest-path "$HERE/mcu/Cargo.toml"; then :; else fail "MCU slot store tests"; fi
p=$(grep -o '[0-9]* passed' "$LOGS/mcu-tests.log" | awk '{s+=$1} END {print s+0}')
f=$(grep -o '[0-9]* failed' "$LOGS/mcu-tests.log" | awk '{s+=$1} END {print s+0}')
TESTS[mcu]="$p/$((p + f))"

# ----------------------------------------------------------- 4. Linux boards
BOARDS=(rpi4 rpi5 jetson-orin)
declare -A QCPU=([rpi4]=cortex-a72 [rpi5]=cortex-a76 [jetson-orin]=max)
for b in "${BOARDS[@]}"; do
    step "build $b"
    (cd "$HERE/$b" && run "build-$b.log" "$CARGO" build --release) || fail "build $b"
done

SOCKDIR=$(mktemp -d /tmp/graftnet-qemu.XXXXXX)
# device_test BOARD: every request on stdin, then two socket clients at once.
device_test() {
    set +e
    local b=$1 cpu=${QCPU[$1]}
    local bin="$HERE/$b/target/aarch64-unknown-linux-gnu/release/graftnet-device" o="$DT/$b"
    qemu-aarch64 -cpu "$cpu" "$bin" --dir "$EXPORT" --verify-key "$PUBKEY" <"$REQ" >"$o.responses.jsonl" 2>"$o.stderr"
    local rc_run=$?
    "$HOSTREF" check --expected "$EXP" --responses "$o.responses.jsonl" >"$o.check.json" 2>>"$o.stderr"
    local rc_check=$?
    local sock="$SOCKDIR/$b.sock"
    qemu-aarch64 -cpu "$cpu" "$bin" --dir "$EXPORT" --verify-key "$PUBKEY" --socket "$sock" </dev/null 2>"$o.socket.stderr" &
    local spid=$!
    for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.2; done
    "$HOSTREF" socket --socket "$sock" --requests "$REQ" --expected "$EXP" --skip 0 --limit 150 >"$o.socket-a.json" 2>>"$o.stderr" &
    local a=$!
    "$HOSTREF" socket --socket "$sock" --requests "$REQ" --expected "$EXP" --skip 500 --limit 150 >"$o.socket-b.json" 2>>"$o.stderr" &
    local c=$!
    wait $a; local rc_a=$?
    wait $c; local rc_b=$?
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
    postcard_test "$b"
    local rc_pc=$?
    echo "$rc_run $rc_check $rc_a $rc_b $rc_pc" >"$o.rc"
}
# postcard_test BOARD: the binary protocol on a socket, a device that starts
# with the backbone alone; every step logged to $o.postcard.log.
postcard_test() {
    local b=$1 cpu=${QCPU[$1]}
    local bin="$HERE/$b/target/aarch64-unknown-linux-gnu/release/graftnet-device" o="$DT/$b"
    local dir="$DT/$b.postcard-dir" sock="$SOCKDIR/$b.postcard.sock" log="$DT/$b.postcard.log"
    rm -rf "$dir"; mkdir -p "$dir"; cp "$EXPORT/backbone.gnb" "$dir/"
    qemu-aarch64 -cpu "$cpu" "$bin" --dir "$dir" --verify-key "$PUBKEY" --protocol postcard --socket "$sock" \
        </dev/null 2>"$o.postcard.stderr" &
    local spid=$!
    for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.2; done
    local G=("$GRAFTNET" device --connect "unix:$sock") rc=0
    {
        "${G[@]}" info &&
        "${G[@]}" upload "$EXPORT/mnist-sb.gnp" &&
        "${G[@]}" upload "$EXPORT/fashion-binary-logits.gnp" --chunk 1024 &&
        "${G[@]}" tasks &&
        "${G[@]}" check --dir "$EXPORT" --count "$N_PC" --data mnist-sb="$D/mnist_test_x.npy" \
            --data base="$D/fashion_test_x.npy" --data fashion-binary-logits="$D/fashion-binary_test_x.npy" >"$o.postcard.json"
    } >"$log" 2>&1 || rc=1
    # Refusals: a corrupted patch, an unknown task; the device answers and stays up.
    local bad="$DT/$b.corrupt.gnp"
    cp "$EXPORT/mnist-dw.gnp" "$bad"
    printf '\x55' | dd of="$bad" bs=1 seek=200 conv=notrunc 2>/dev/null
    if "${G[@]}" upload "$bad" --name mnist-dw >>"$log" 2>&1; then rc=1; echo "corrupted upload accepted" >>"$log"; fi
    if "${G[@]}" switch nope >>"$log" 2>&1; then rc=1; echo "unknown task accepted" >>"$log"; fi
    grep -Eq "ChecksumMismatch|BadSignature" "$log" && grep -q "unknown task 'nope'" "$log" || rc=1
    "${G[@]}" tasks >>"$log" 2>&1 || rc=1
    [ "$(ls "$dir")" = "$(printf 'backbone.gnb\nfashion-binary-logits.gnp\nmnist-sb.gnp')" ] || { rc=1; ls "$dir" >>"$log"; }
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
    return $rc
}
step "graftnet-device under qemu-aarch64: $N_REQ requests per board, in the background"
DPIDS=()
for b in "${BOARDS[@]}"; do
    rm -f "$DT/$b".*
    device_test "$b" &
    DPIDS+=($!)
done

# jnum FILE KEY: an integer field of a one-line JSON report (0 if absent)
jnum() { local v; v=$(grep -o "\"$2\":[0-9]*" "$1" 2>/dev/null | head -1 | cut -d: -f2); echo "${v:-0}"; }

# ---------------------------------------------------------------- 5. MCUs
export RUSTC_BOOTSTRAP=1 # -Zbuild-std (config [unstable]) with Debian's stable rustc
declare -A FW_OUT FW_RC
ELF=target/thumbv7em-none-eabihf/release
mcu_build() { # DIR LOG [cargo args]: build in DIR
    local dir=$1 log=$2; shift 2
    (cd "$HERE/$dir" && run "$log" "$CARGO" build --release "$@")
}
step "build cortex-m4 (and its size baseline without the engine)"
mcu_build cortex-m4 build-cortex-m4-baseline.log --features size-baseline --bin graftnet-cortex-m4 || fail "build cortex-m4 baseline"
cp "$HERE/cortex-m4/$ELF/graftnet-cortex-m4" "$WORK/cortex-m4-baseline.elf" || true
GRAFTNET_VERIFY_KEY="$PUBKEY" mcu_build cortex-m4 build-cortex-m4-verify.log --features verify --bin graftnet-cortex-m4 || fail "build cortex-m4 (verify)"
cp "$HERE/cortex-m4/$ELF/graftnet-cortex-m4" "$WORK/cortex-m4-verify.elf" || true
mcu_build cortex-m4 build-cortex-m4.log || fail "build cortex-m4"
# The patch partition image, flashable on its own (README, "The patch partition").
cp "$(ls -t "$HERE"/cortex-m4/$ELF/build/graftnet-mcu-*/out/patches.bin | head -1)" "$WORK/patches.bin" || fail "patches.bin"
step "build cortex-m7 (STM32H743 layout, then qemu layout)"
mcu_build cortex-m7 build-cortex-m7-stm32h743.log --config stm32h743.toml --bin graftnet-cortex-m7 || fail "build cortex-m7 (STM32H743)"
cp "$HERE/cortex-m7/$ELF/graftnet-cortex-m7" "$WORK/cortex-m7-stm32h743.elf" || true
mcu_build cortex-m7 build-cortex-m7.log || fail "build cortex-m7"

declare -A MACHINE=([cortex-m4]="cortex-m4 mps2-an386" [cortex-m7]="cortex-m7 mps2-an500")
for fw in cortex-m4 cortex-m7; do
    step "run $fw under qemu-system-arm (${MACHINE[$fw]#* })"
    set -- ${MACHINE[$fw]}
    set +e
    timeout 600 qemu-system-arm -cpu "$1" -machine "$2" -nographic -semihosting-config enable=on,target=native \
        -kernel "$HERE/$fw/$ELF/graftnet-$fw" >"$LOGS/run-$fw.log" 2>&1
    FW_RC[$fw]=$?
    set -e
    cat "$LOGS/run-$fw.log"
    [ "${FW_RC[$fw]}" = 0 ] || fail "$fw firmware (exit ${FW_RC[$fw]})"
done
step "run cortex-m4 with feature verify under qemu-system-arm (mps2-an386)"
set +e
timeout 600 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic -semihosting-config enable=on,target=native \
    -kernel "$WORK/cortex-m4-verify.elf" >"$LOGS/run-cortex-m4-verify.log" 2>&1
FW_RC[cortex-m4-verify]=$?
set -e
cat "$LOGS/run-cortex-m4-verify.log"
[ "${FW_RC[cortex-m4-verify]}" = 0 ] || fail "cortex-m4 firmware with verify (exit ${FW_RC[cortex-m4-verify]})"
# The kernel self-test firmware (built with the board): every kernel of the
# dsp table against the scalar reference (a few seconds), then one timed
# inference per table. -icount shift=0 makes qemu's clock count instructions
# (1 ns each), so the SysTick figures are instruction counts / 40 (25 MHz
# SysTick), not silicon timing.
declare -A KT_RC
for fw in cortex-m4 cortex-m7; do
    step "run $fw kernel self-test under qemu-system-arm (${MACHINE[$fw]#* })"
    set -- ${MACHINE[$fw]}
    set +e
    timeout 300 qemu-system-arm -cpu "$1" -machine "$2" -nographic -semihosting-config enable=on,target=native \
        -icount shift=0 -kernel "$HERE/$fw/$ELF/graftnet-$fw-kernels" >"$LOGS/run-$fw-kernels.log" 2>&1
    KT_RC[$fw]=$?
    set -e
    cat "$LOGS/run-$fw-kernels.log"
    [ "${KT_RC[$fw]}" = 0 ] || fail "$fw kernel self-test (exit ${KT_RC[$fw]})"
done

# The device service (issue 11, targets/mcu-serve.sh): each firmware starts
# with the backbone alone; two patches are uploaded over the UART's socket
# (`graftnet device upload` when the client has it, else the driver's own
# chunked upload), 200 inferences alternate them and must be bit-identical
# to the host runtime, a patch exported later against the same backbone is
# uploaded and run, and malformed frames, a truncated upload, an upload for
# another backbone, a corrupted chunk, a wrong offset, unknown tasks and
# wrong-size inputs must each get their typed error with the task set and
# the active task unchanged (graftnet-host-ref mcu, src/mcu.rs).
step "MCU device service: later export, then m4 and m7 under qemu-system-arm"
LATER="$WORK/export/mnv2-later"
rm -rf "$LATER"
run export-later.log "$GRAFTNET" export --base "$M/base.folded.onnx" --backbone "$EXPORT/backbone.gnb" \
    --task fashion-updown-sb="$M/fashion-updown-sb.folded.onnx" --calib "$D/fashion_calib_x.npy" \
    --calib-task fashion-updown-sb="$D/fashion-updown_calib_x.npy" --out "$LATER" || fail "export against the existing backbone"
SVCDIR=$(mktemp -d /tmp/graftnet-mcu.XXXXXX)
declare -A SVC_OK SVC_TESTS
for fw in m4 m7; do
    sock="$SVCDIR/$fw.sock"
    SVC_OK[$fw]=no; SVC_TESTS[$fw]="not run"
    if ! pid=$(CARGO="$CARGO" bash "$HERE/mcu-serve.sh" "$EXPORT" "$sock" "$fw" 2>"$LOGS/mcu-serve-$fw.log"); then
        cat "$LOGS/mcu-serve-$fw.log" >&2; fail "mcu-serve.sh $fw"; continue
    fi
    cp "$sock.log" "$LOGS/mcu-service-$fw.boot.log"
    uploaded=()
    if "$GRAFTNET" device --help >/dev/null 2>&1; then
        if "$GRAFTNET" device --connect "unix:$sock" upload "$EXPORT/mnist-sb.gnp" >>"$LOGS/mcu-service-$fw.log" 2>&1 \
            && "$GRAFTNET" device --connect "unix:$sock" upload "$EXPORT/fashion-binary-logits.gnp" >>"$LOGS/mcu-service-$fw.log" 2>&1; then
            uploaded=(--uploaded)
        else
            fail "graftnet device upload ($fw)"
        fi
    fi
    if timeout 900 "$HOSTREF" mcu --socket "$sock" --dir "$EXPORT" "${DATA[@]}" --task mnist-sb --task fashion-binary-logits \
        --later "$LATER" --count 200 "${uploaded[@]}" >"$LOGS/mcu-service-$fw.json" 2>>"$LOGS/mcu-service-$fw.log"; then
        SVC_OK[$fw]=yes
    else
        tail -20 "$LOGS/mcu-service-$fw.log" >&2; fail "MCU service on $fw"
    fi
    kill "$pid" 2>/dev/null || true
    cat "$LOGS/mcu-service-$fw.json" 2>/dev/null | sed "s/^/$fw service: /"
    f="$LOGS/mcu-service-$fw.json"
    SVC_TESTS[$fw]="$(jnum "$f" identical)/$(jnum "$f" inferences) inferences, $(jnum "$f" refusals_typed)/$(jnum "$f" refusals_expected) refusals"
done
rm -rf "$SVCDIR"

step "waiting for the graftnet-device runs"
for p in "${DPIDS[@]}"; do wait "$p" || true; done
rm -rf "$SOCKDIR"
declare -A DEV_OK DEV_TESTS
for b in "${BOARDS[@]}"; do
    o="$DT/$b"
    read -r rc_run rc_check rc_a rc_b rc_pc <"$o.rc" || { rc_run=1; rc_check=1; rc_a=1; rc_b=1; rc_pc=1; }
    cat "$o.check.json" "$o.socket-a.json" "$o.socket-b.json" 2>/dev/null | sed "s/^/$b: /"
    ident=$(jnum "$o.check.json" identical); valid=$(jnum "$o.check.json" valid)
    ea=$(jnum "$o.check.json" errors_answered); ee=$(jnum "$o.check.json" errors_expected)
    sa=$(( $(jnum "$o.socket-a.json" identical) + $(jnum "$o.socket-a.json" errors_answered) + $(jnum "$o.socket-b.json" identical) + $(jnum "$o.socket-b.json" errors_answered) ))
    pc=$(jnum "$o.postcard.json" identical)
    DEV_TESTS[$b]="${ident:-0}/${valid:-0} req, ${ea:-0}/${ee:-0} bad, socket $sa/300, postcard $pc/$N_PC"
    if [ "$rc_run" = 0 ] && [ "$rc_check" = 0 ] && [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ] && [ "${rc_pc:-1}" = 0 ] \
        && [ "${valid:-0}" = "$N_REQ" ] && [ "$pc" = "$N_PC" ]; then
        DEV_OK[$b]=yes
    else
        DEV_OK[$b]=no
        fail "graftnet-device on $b (exit $rc_run, check $rc_check, socket $rc_a/$rc_b, postcard ${rc_pc:-1}); see $o.*"
        tail -5 "$o.stderr" "$o.postcard.log" >&2 || true
    fi
done

# ------------------------------------------------------------- 6. report
secsize() { "$SIZE_TOOL" -A "$1" | awk -v s="$2" '$1 == s {print $2}'; }
kb() { awk -v b="${1:-0}" 'BEGIN {printf "%.1f KB", b / 1024}'; }
declare -A FW_SIZE FW_TESTS KT_TESTS
for fw in cortex-m4 cortex-m7; do
    e="$HERE/$fw/$ELF/graftnet-$fw"
    flash=$(( $(secsize "$e" .vector_table) + $(secsize "$e" .text) + $(secsize "$e" .rodata) + $(secsize "$e" .data) ))
    part=$(secsize "$e" .graftnet_patches)
    ram=$(( $(secsize "$e" .data) + $(secsize "$e" .bss) ))
    samples=$(grep -o '([0-9]* bytes of flash)' "$LOGS/run-$fw.log" | grep -o '[0-9]*' || echo 0)
    stack=$(grep -o 'stack: [0-9]*' "$LOGS/run-$fw.log" | grep -o '[0-9]*' || echo 0)
    FW_SIZE[$fw]="flash $(kb $((flash - samples))) + $(kb "$samples") samples + $(kb "$part") patches; RAM $(kb $((ram + stack)))"
    line=$(grep -o '^[0-9]* of [0-9]* inferences' "$LOGS/run-$fw.log" || echo "0 of 0")
    FW_TESTS[$fw]="$(echo "$line" | awk '{print $1 "/" $3}') inferences"
    kt=$(grep -o '[0-9]* cases (.*) identical to scalar' "$LOGS/run-$fw-kernels.log" | awk '{print $1}' | head -1)
    KT_TESTS[$fw]="dsp: ${kt:-0} cases"
done
devsize() {
    local f="$HERE/$1/target/aarch64-unknown-linux-gnu/release/graftnet-device"
    local s; s=$(mktemp); aarch64-linux-gnu-strip -o "$s" "$f"
    echo "$(kb "$(stat -c %s "$f")") ($(kb "$(stat -c %s "$s")") stripped)"; rm -f "$s"
}
yn() { [ "$1" = 0 ] && echo yes || echo no; }

echo
echo "## Memory (Cortex-M, MobileNetV2-0.35 32x32 export)"
e4="$HERE/cortex-m4/$ELF/graftnet-cortex-m4"
"$SIZE_TOOL" -A "$e4" | awk '$1 ~ /^\.(vector_table|text|rodata|data|bss|graftnet_patches)$/ {printf "  cortex-m4 %-18s %8d bytes\n", $1, $2}'
text_full=$(secsize "$e4" .text); text_base=$(secsize "$WORK/cortex-m4-baseline.elf" .text)
sample_bytes=$(grep -o '([0-9]* bytes of flash)' "$LOGS/run-cortex-m4.log" | grep -o '[0-9]*' || echo 0)
bb_bytes=$(stat -c %s "$EXPORT/backbone.gnb")
arena=$(grep -o 'arena [0-9]* bytes' "$LOGS/run-cortex-m4.log" | head -1 | grep -o '[0-9]*' || echo "?")
stack=$(grep -o 'stack: [0-9]*' "$LOGS/run-cortex-m4.log" | grep -o '[0-9]*' || echo "?")
echo "  backbone in flash: $bb_bytes bytes; test samples + host results: $sample_bytes bytes"
echo "  arena: $arena bytes; parameter table + arena = .bss; stack high-water mark: $stack bytes"
echo "  .text: $text_full bytes in all; the build without the engine (size-baseline) has $text_base bytes,"
echo "         so running graftnet (runtime, self-test driver, the core::fmt and soft-f64 code they pull in) adds $((text_full - text_base)) bytes"
if [ -f "$WORK/cortex-m4-verify.elf" ]; then
    text_verify=$(secsize "$WORK/cortex-m4-verify.elf" .text)
    echo "  .text with feature verify (Ed25519 + SHA-512, signatures checked at boot): $text_verify bytes, $((text_verify - text_full)) more"
fi
echo "  .text by crate (symbol sizes; code inlined into a caller counts for the caller):"
# bycrate ELF: .text symbol bytes per crate (the first `crate::` of a name)
bycrate() {
    "$NM_TOOL" -C -S -t d "$1" | awk '$3 ~ /^[tTwW]$/ {
        name = $4; for (i = 5; i <= NF; i++) name = name " " $i
        crate = "(no crate: asm, libc names)"
        if (match(name, /[A-Za-z_][A-Za-z0-9_]*::/)) crate = substr(name, RSTART, RLENGTH - 2)
        if (name ~ /^__aeabi|^__(add|sub|mul|div)[sd]f3|^mem(cpy|set|move|cmp)/) crate = "compiler_builtins"
        s[crate] += $2 }
    END { for (c in s) printf "%s %d\n", c, s[c] }' | sort -k2 -n -r
}
bycrate "$e4" | awk '{printf "         %-32s %7d bytes\n", $1, $2}'
s4="$HERE/cortex-m4/$ELF/graftnet-cortex-m4-serve"
if [ -f "$s4" ]; then
    echo "  device service firmware (graftnet-cortex-m4-serve; built by mcu-serve.sh for the same backbone, no patches):"
    bycrate "$s4" >"$WORK/serve-m4-bycrate.txt"
    awk '{printf "         %-32s %7d bytes\n", $1, $2}' "$WORK/serve-m4-bycrate.txt" | head -12
    rt=$(awk '$1 == "graftnet" {s += $2} END {print s + 0}' "$WORK/serve-m4-bycrate.txt")
    svc=$(awk '$1 ~ /^(graftnet_mcu|graftnet_protocol|postcard|serde|serde_core|cobs|heapless|embedded_io|embedded_storage|graftnet_cortex_m4_serve)$/ {s += $2} END {print s + 0}' "$WORK/serve-m4-bycrate.txt")
    used=$(( $(secsize "$s4" .vector_table) + $(secsize "$s4" .text) + $(secsize "$s4" .rodata) + $(secsize "$s4" .data) ))
    echo "  .text: $(secsize "$s4" .text) bytes in all; the runtime (graftnet::) $rt bytes; the service (graftnet_mcu: service, slot store,"
    echo "         UART and flash drivers; graftnet_protocol, postcard, serde, cobs, heapless) $svc bytes; the rest is core, fmt, compiler_builtins"
    echo "  flash: $used bytes (code, backbone $bb_bytes, tables) of the 1,835,008-byte FLASH region; PATCHES: 2 x 128 KB slots"
fi
s7="$WORK/cortex-m7-stm32h743.elf"
[ -f "$s7" ] && echo "  cortex-m7 STM32H743 layout: flash at $(printf '0x%x' "$("$SIZE_TOOL" -A "$s7" | awk '$1==".vector_table" {print $3}')"), patches at $(printf '0x%x' "$("$SIZE_TOOL" -A "$s7" | awk '$1==".graftnet_patches" {print $3}')"), RAM at $(printf '0x%x' "$("$SIZE_TOOL" -A "$s7" | awk '$1==".bss" {print $3}')") (build only; no hardware here)"

echo
echo "## Boards"
printf '| %-44s | %-62s | %-17s | %-68s |\n' "target" "tests passed" "identical to host" "binary size"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..64})" "$(printf -- '-%.0s' {1..19})" "$(printf -- '-%.0s' {1..70})"
row() { printf '| %-44s | %-62s | %-17s | %-68s |\n' "$@"; }
row "runtime tests, qemu-aarch64 cortex-a72" "${TESTS[cortex-a72]}" "-" "-"
row "runtime tests, qemu-aarch64 cortex-a76" "${TESTS[cortex-a76]}" "-" "-"
row "graftnet-device library tests (host)" "${TESTS[device]}" "-" "-"
row "graftnet-protocol tests (host)" "${TESTS[protocol]}" "-" "-"
row "MCU slot store power-cut tests (host)" "${TESTS[mcu]}" "-" "-"
for b in "${BOARDS[@]}"; do
    row "$b graftnet-device (qemu -cpu ${QCPU[$b]})" "${DEV_TESTS[$b]}" "${DEV_OK[$b]}" "$(devsize "$b")"
done
row "cortex-m4 firmware (mps2-an386)" "${FW_TESTS[cortex-m4]}" "$(yn "${FW_RC[cortex-m4]}")" "${FW_SIZE[cortex-m4]}"
row "cortex-m7 firmware (mps2-an500)" "${FW_TESTS[cortex-m7]}" "$(yn "${FW_RC[cortex-m7]}")" "${FW_SIZE[cortex-m7]}"
vline=$(grep -o '^[0-9]* of [0-9]* inferences' "$LOGS/run-cortex-m4-verify.log" 2>/dev/null | awk '{print $1 "/" $3}')
vref=$(grep -c 'refused .*: yes' "$LOGS/run-cortex-m4-verify.log" 2>/dev/null || true)
row "cortex-m4 firmware, verify (mps2-an386)" "${vline:-0/0} inferences, ${vref:-0}/4 refusals" "$(yn "${FW_RC[cortex-m4-verify]:-1}")" ".text $(secsize "$WORK/cortex-m4-verify.elf" .text 2>/dev/null) bytes"
row "cortex-m4 device service (mps2-an386)" "${SVC_TESTS[m4]}" "${SVC_OK[m4]}" ".text $(secsize "$HERE/cortex-m4/$ELF/graftnet-cortex-m4-serve" .text 2>/dev/null) bytes"
row "cortex-m7 device service (mps2-an500)" "${SVC_TESTS[m7]}" "${SVC_OK[m7]}" ".text $(secsize "$HERE/cortex-m7/$ELF/graftnet-cortex-m7-serve" .text 2>/dev/null) bytes"
row "cortex-m4 kernel self-test (mps2-an386)" "${KT_TESTS[cortex-m4]}" "$(yn "${KT_RC[cortex-m4]}")" "-"
row "cortex-m7 kernel self-test (mps2-an500)" "${KT_TESTS[cortex-m7]}" "$(yn "${KT_RC[cortex-m7]}")" "-"

echo
echo "total time: $(($(date +%s) - T0)) s"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "all targets passed"
