#!/usr/bin/env bash
# DySample on a CUDA machine in one command, without network: the `cuda` tests, the upsampler
# benchmark (float32 and bfloat16) and a model-level training-step timing, summarized in one
# markdown table (OUT_DIR/summary.md). About 5 minutes on one GPU; every step has a time limit
# and the whole stays under 10 minutes. See docs/gpu.md.
#
#   bash scripts/gpu_check.sh [WHEELHOUSE] [OUT_DIR]
#
# WHEELHOUSE (or $DYSAMPLE_D2_WHEELHOUSE): the wheels scripts/gpu_wheelhouse.sh builds, unpacked
#   into a scratch directory put first on PYTHONPATH (no pip, no index, the interpreter's own
#   packages untouched). Without one, the interpreter must already have Detectron2 and the rest
#   (the environment scripts/install.sh builds).
# OUT_DIR (or $DYSAMPLE_D2_GPU_OUT; default output/gpu_check): summary.md, each benchmark's
#   results.md/results.json, the test log and JUnit XML.
# Interpreter: $DYSAMPLE_D2_PYTHON, else the project's .venv, else python3 on PATH; it must have
#   torch with CUDA (torch and torchvision are never in the wheelhouse).
#
# Without a CUDA device it says so in one line and exits 0. Exit status otherwise: 0 when every
# step passed, 1 when one failed (the later steps still run).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ -z "${DYSAMPLE_D2_PYTHON:-}" ] && [ ! -x "$PY" ]; then
  PY=$(command -v python3 || command -v python || echo python3)
fi
WHEELHOUSE=${1:-${DYSAMPLE_D2_WHEELHOUSE:-}}
OUT=${2:-${DYSAMPLE_D2_GPU_OUT:-$ROOT/output/gpu_check}}
cd "$ROOT" || exit 1

"$PY" -W ignore "$ROOT/scripts/gpu_check.py" device 2>/dev/null
case $? in
  0) ;;
  3) exit 0 ;;  # no CUDA: the line above says so
  *) echo "gpu_check: $PY cannot run torch (set DYSAMPLE_D2_PYTHON to an interpreter with torch)"; exit 1 ;;
esac

mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
step() { echo "[gpu_check] $(date +%H:%M:%S) $*"; }
FAILED=()

if [ -n "$WHEELHOUSE" ]; then
  SITE=${DYSAMPLE_D2_GPU_SITE:-}
  if [ -z "$SITE" ]; then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/dysample_d2_gpu_site.XXXXXX") || exit 1
    trap 'rm -rf "$SITE"' EXIT
  fi
  step "installing the wheels of $WHEELHOUSE into $SITE"
  "$PY" "$ROOT/scripts/gpu_check.py" install "$WHEELHOUSE" "$SITE" || exit 1
  export PYTHONPATH="$SITE:$ROOT:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
fi
# cuBLAS under torch.use_deterministic_algorithms(True); a headless matplotlib
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8} MPLBACKEND=Agg
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::FutureWarning}

step "checking imports"
"$PY" "$ROOT/scripts/gpu_check.py" imports || {
  echo "gpu_check: the environment is incomplete (above); build the wheelhouse with scripts/gpu_wheelhouse.sh"
  exit 1
}

# run NAME SECONDS COMMAND...: one step, its output also in OUT/NAME.log
run() {
  local name=$1 seconds=$2
  shift 2
  step "$name (at most ${seconds} s)"
  timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "gpu_check: $name ran past ${seconds} s"
    FAILED+=("$name (exit $rc)")
  fi
}

run cuda_tests 270 "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider \
  --junitxml "$OUT/cuda_tests.xml"
for dtype in float32 bfloat16; do
  run "upsamplers_$dtype" 75 "$PY" scripts/benchmark_upsamplers.py --device cuda \
    --dtype "$dtype" --repeats 20 --warmup 5 --out "$OUT/upsamplers_$dtype"
done
run model 120 "$PY" scripts/benchmark_model.py --device cuda --archs faster_rcnn --no-flops \
  --size 800x1333 --repeats 10 --warmup 3 --out "$OUT/model"
run summary 30 "$PY" "$ROOT/scripts/gpu_check.py" summary "$OUT"

if [ ${#FAILED[@]} -ne 0 ]; then
  step "FAILED: ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
step "done: $OUT/summary.md"
