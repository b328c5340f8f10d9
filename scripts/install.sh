#!/usr/bin/env bash
# Build (or complete) the environment dysample-d2 needs. Idempotent: what is installed stays.
#
#   ./scripts/install.sh            # project-local .venv/ (created if missing)
#
# Environment variables:
#   DYSAMPLE_D2_VENV=DIR            # another virtualenv location (default: <repo>/.venv)
#   DYSAMPLE_D2_PYTHON=PATH         # install into this existing interpreter, no venv
#   DYSAMPLE_D2_DETECTRON2_SOURCE=auto|github|pypi   # see scripts/install/install_detectron2.py
#   DYSAMPLE_D2_TORCH="torch==X torchvision==Y"       # torch requirement (default: torch torchvision)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
step() { echo "[install] $*"; }
fail() { echo "[install] ERROR: $*" >&2; exit 1; }

if [ -n "${DYSAMPLE_D2_PYTHON:-}" ]; then
  step "using the interpreter DYSAMPLE_D2_PYTHON=$PY (no virtualenv)"
else
  VENV=$(dirname "$(dirname "$PY")")
  if [ ! -x "$VENV/bin/python" ]; then
    BASE_PY=$(command -v python3.11 || command -v python3 || true)
    [ -n "$BASE_PY" ] || fail "no python3 found; install Python >= 3.9 (3.11 recommended)"
    "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
      || fail "$BASE_PY is older than Python 3.9"
    step "1/6 creating virtualenv $VENV with $("$BASE_PY" --version)"
    "$BASE_PY" -m venv "$VENV" || fail "could not create $VENV (is python3-venv installed? disk full?)"
  else
    step "1/6 virtualenv $VENV exists"
  fi
fi

pip_install() {
  "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@" \
    || fail "pip install $* failed. Check that PyPI is reachable (pip config/proxy) and that the disk has space ($(df -h "$ROOT" | awk 'NR==2 {print $4}') free)."
}

# One consistent environment: detectron2 of 2024 needs numpy<2 and pkg_resources (setuptools<81).
PINS=("numpy<2" "setuptools<81")

if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  step "2/6 torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
  # shellcheck disable=SC2206
  TORCH_REQ=(${DYSAMPLE_D2_TORCH:-torch torchvision})
  step "2/6 installing ${TORCH_REQ[*]} (large; about a minute from a local cache)"
  pip_install "${TORCH_REQ[@]}" "${PINS[@]}"
fi

step "3/6 detectron2"
"$PY" "$ROOT/scripts/install/install_detectron2.py" || fail "detectron2 could not be installed (see above)"

if "$PY" -c 'import panopticapi' 2>/dev/null; then
  step "4/6 panopticapi already installed"
else
  step "4/6 installing panopticapi (PyPI: panopticapi-lite)"
  pip_install --quiet panopticapi-lite "${PINS[@]}"
fi

STAMP="$(dirname "$(dirname "$PY")")/.dysample_d2_install_stamp"
WANT=$(cat "$ROOT/setup.py" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c 'import dysample_d2, pytest' 2>/dev/null; then
  step "5/6 dysample-d2 already installed (editable)"
else
  step "5/6 dysample-d2 (editable, with test extras)"
  pip_install --quiet -e "$ROOT[test]" "${PINS[@]}"
  echo "$WANT" > "$STAMP" 2>/dev/null || true
fi

# DySample's compiled CPU sampling kernel (JIT build with the C++ compiler, cached by torch);
# without a compiler DySample keeps its pure-PyTorch path, and this line says why.
step "6/6 DySample's compiled CPU kernel (built once, about a minute)"
"$PY" -W ignore -c 'from dysample_d2.layers import native; print("[install]", native.status())' \
  || fail "importing dysample_d2 failed (see above)"

"$PY" -m pip check >/dev/null || { "$PY" -m pip check; fail "pip check found inconsistent packages (listed above)"; }
"$PY" -W ignore -c 'import dysample_d2, detectron2, torch; print("[install] ready: torch", torch.__version__, "| detectron2", detectron2.__version__, "at", detectron2.__file__.rsplit("/", 2)[0])'
