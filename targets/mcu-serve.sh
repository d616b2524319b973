#!/usr/bin/env bash
# targets/mcu-serve.sh EXPORT_DIR SOCKET [m4|m7]
#
# Builds the Cortex-M device service (graftnet-cortex-m4-serve or
# graftnet-cortex-m7-serve) for EXPORT_DIR's backbone and starts it under
# qemu-system-arm (mps2-an386 for m4, the default; mps2-an500 for m7) in the
# background, with the board's UART0 on a Unix socket at SOCKET (qemu is the
# server; connect with `graftnet device --connect unix:SOCKET ...`). Prints
# qemu's pid on stdout; the firmware's boot banner and qemu's messages go
# to SOCKET.log. Stop it with `kill PID`.
#
# Environment:
#   GRAFTNET_PATCHES=none (default) the firmware starts with the backbone
#                    alone and gets its tasks by upload; =export puts the
#                    export's *.gnp into the build-time partition, which the
#                    slot store takes as its first task set.
#   GRAFTNET_VERIFY_KEY=KEY.pub  build with feature verify: the service takes
#                    patches signed with this key only (the export's
#                    backbone must be signed with it too).
#   CARGO            the cargo to build with (default: cargo); with Debian's
#                    toolchain set RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 too
#                    (targets/README.md, "Cross-compiling").
# The PATCHES region lives in qemu's RAM: uploads last until qemu exits.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,24p' "$0" >&2
    exit 2
fi
EXPORT=$(cd "$1" && pwd)
SOCK=$2
BOARD=${3:-m4}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "$BOARD" in
    m4) PKG=cortex-m4 CPU=cortex-m4 MACHINE=mps2-an386 ;;
    m7) PKG=cortex-m7 CPU=cortex-m7 MACHINE=mps2-an500 ;;
    *) echo "board '$BOARD': expected m4 or m7" >&2; exit 2 ;;
esac
[ -f "$EXPORT/backbone.gnb" ] || { echo "$EXPORT has no backbone.gnb" >&2; exit 1; }
BIN=graftnet-$PKG-serve
LOG="$SOCK.log"
FEATURES=()
if [ -n "${GRAFTNET_VERIFY_KEY:-}" ]; then
    GRAFTNET_VERIFY_KEY=$(cd "$(dirname "$GRAFTNET_VERIFY_KEY")" && pwd)/$(basename "$GRAFTNET_VERIFY_KEY")
    export GRAFTNET_VERIFY_KEY
    FEATURES=(--features verify)
fi
(cd "$HERE/$PKG" && GRAFTNET_EXPORT_DIR="$EXPORT" GRAFTNET_PATCHES="${GRAFTNET_PATCHES:-none}" \
    "${CARGO:-cargo}" build --release --bin "$BIN" "${FEATURES[@]}") >"$LOG.build" 2>&1 || {
    tail -20 "$LOG.build" >&2
    echo "building $BIN failed; see $LOG.build" >&2
    exit 1
}
ELF="$HERE/$PKG/target/thumbv7em-none-eabihf/release/$BIN"
rm -f "$SOCK"
qemu-system-arm -cpu "$CPU" -machine "$MACHINE" -display none -monitor none \
    -semihosting-config enable=on,target=native -serial "unix:$SOCK,server=on,wait=off" \
    -kernel "$ELF" </dev/null >"$LOG" 2>&1 &
PID=$!
# Ready when the socket exists and the firmware printed its banner.
for _ in $(seq 600); do
    if ! kill -0 "$PID" 2>/dev/null; then
        cat "$LOG" >&2
        echo "qemu exited" >&2
        exit 1
    fi
    [ -S "$SOCK" ] && grep -q '^ready' "$LOG" && break
    sleep 0.1
done
grep -q '^ready' "$LOG" || { cat "$LOG" >&2; echo "the service did not start within 60 s" >&2; kill "$PID"; exit 1; }
echo "$PID"
