#!/usr/bin/env bash
# Install what is missing (scripts/install.sh), then run the whole test suite on CPU.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k dysample -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
"$ROOT/scripts/install.sh"
echo "[test] running the test suite (CPU, a few minutes)"
cd "$ROOT"
"$PY" -m pytest -q "$@"
