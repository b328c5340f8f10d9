# Sourced by the scripts: sets PY to the project's interpreter (see scripts/install.sh).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${DYSAMPLE_D2_PYTHON:-}" ]; then
  PY=$DYSAMPLE_D2_PYTHON
else
  PY=${DYSAMPLE_D2_VENV:-$ROOT/.venv}/bin/python
fi
