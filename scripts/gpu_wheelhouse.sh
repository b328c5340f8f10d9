#!/usr/bin/env bash
# Builds the wheelhouse scripts/gpu_check.sh installs on a GPU machine without network: every
# package the CUDA check needs beside torch and torchvision, for that machine's Python, on
# Linux x86_64, as ONE file (scripts/gpu_check.py pack: the wheels re-zipped uncompressed with
# fixed timestamps, in one .tar.xz of sorted members; the same bytes on every run with the
# same wheels). Run it on a machine with PyPI access (any OS pip can download for; building
# the pure-Python wheels from source needs a Python with pip). See docs/gpu.md.
#
#   bash scripts/gpu_wheelhouse.sh [FILE]          # default FILE: output/gpu_wheelhouse.tar.xz
#
# Environment: GPU_PYTHON_VERSION (default 3.12): the GPU machine's Python, major.minor;
#   GPU_WHEELHOUSE_OPENCV=0: leave out opencv-python-headless (about a third of the file), for
#   a GPU environment whose own cv2 imports beside numpy 1.26;
#   DYSAMPLE_D2_PYTHON / the project's .venv / python3: the interpreter that runs pip here.
#
# The versions are those the project's environment is tested with; numpy stays below 2
# (Detectron2 of 2024) and setuptools below 81 (its model zoo imports pkg_resources).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ -z "${DYSAMPLE_D2_PYTHON:-}" ] && [ ! -x "$PY" ]; then
  PY=$(command -v python3)
fi
ARCHIVE=${1:-$ROOT/output/gpu_wheelhouse.tar.xz}
PYVER=${GPU_PYTHON_VERSION:-3.12}
ABI="cp${PYVER/./}"
mkdir -p "$(dirname "$ARCHIVE")"
ARCHIVE=$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")
OUT=$(mktemp -d "${TMPDIR:-/tmp}/dysample_d2_wheels.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
step() { echo "[wheelhouse] $*"; }

# Pure-Python packages: built or downloaded as py3 wheels (fvcore, antlr4-python3-runtime and
# panopticapi-lite publish only sources).
PURE=(
  "fvcore==0.1.5.post20221221" "iopath==0.1.9" "portalocker==4.4.2" "yacs==0.1.8"
  "omegaconf==2.3.1" "hydra-core==1.3.8" "antlr4-python3-runtime==4.9.3"
  "termcolor==3.3.0" "tabulate==0.10.0" "cloudpickle==3.1.3" "tqdm==4.70.1"
  "panopticapi-lite==0.2.0" "setuptools<81"
  "tensorboard==2.21.0" "absl-py==2.5.1" "Markdown==3.11.3" "Werkzeug==3.1.9" "six==1.17.0"
)
# Compiled packages: binary wheels for CPython $PYVER on manylinux x86_64.
BINARY=(
  "numpy==1.26.4" "pycocotools==2.0.11" "shapely==2.2.0" "PyYAML==6.0.4" "MarkupSafe==3.0.4"
  "tensorboard-data-server==0.7.2" "grpcio==1.85.3"
)
if [ "${GPU_WHEELHOUSE_OPENCV:-1}" != 0 ]; then
  BINARY+=("opencv-python-headless==4.11.0.86")  # built for numpy 1.x, as the pin above
fi

step "1/4 pure-Python wheels (${#PURE[@]})"
pip_ wheel --quiet --no-deps --wheel-dir "$OUT" "${PURE[@]}"

step "2/4 binary wheels (${#BINARY[@]}) for CPython $PYVER, manylinux x86_64"
pip_ download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
  --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 "${BINARY[@]}"

step "3/4 detectron2: upstream's Python sources from PyPI's sal-detectron2, rebuilt as scripts/install/install_detectron2.py does"
ROOT="$ROOT" "$PY" - "$OUT" <<'EOF'
import importlib.util, os, subprocess, sys, tempfile

out = sys.argv[1]
here = os.path.join(os.environ["ROOT"], "scripts", "install", "install_detectron2.py")
spec = importlib.util.spec_from_file_location("install_detectron2", here)
installer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(installer)
with tempfile.TemporaryDirectory() as tmp:
    subprocess.check_call([
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", installer.PYPI_REDIST,
        "--python-version", "3.10", "--only-binary=:all:", "--platform", "linux_x86_64",
        "--dest", tmp])
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    print("[wheelhouse]", os.path.basename(installer.build_pure_python_wheel(
        os.path.join(tmp, wheels[0]), out)))
EOF

step "4/4 one reproducible file: $ARCHIVE"
"$PY" "$ROOT/scripts/gpu_check.py" pack "$OUT" "$ARCHIVE"
step "sha256 $(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
step "on the GPU machine: bash scripts/gpu_check.sh $ARCHIVE"
