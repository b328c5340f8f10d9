#!/usr/bin/env bash
# DySample on a CUDA machine in one command, without network: the `cuda` tests, the upsampler
# benchmark (float32 and bfloat16) and a model-level training-step timing, summarized in one
# markdown table (OUT_DIR/summary.md). Every step has a time limit, and all of them together
# end within TOTAL_SECONDS (below) of the start. See docs/gpu.md.
#
#   bash scripts/gpu_check.sh [WHEELHOUSE] [OUT_DIR]
#
# WHEELHOUSE (or $DYSAMPLE_D2_WHEELHOUSE): the one file scripts/gpu_wheelhouse.sh builds
#   (output/gpu_wheelhouse.tar.xz), unpacked with Python's tarfile and zipfile into a scratch
#   directory put first on PYTHONPATH (no pip, no index, the interpreter's own packages
#   untouched). Without one, the interpreter must already have Detectron2 and the rest (the
#   environment scripts/install.sh builds).
# OUT_DIR (or $DYSAMPLE_D2_GPU_OUT; default output/gpu_check): summary.md, each benchmark's
#   results.md/results.json, the test log and JUnit XML.
# Interpreter: $DYSAMPLE_D2_PYTHON if set, else the first of the project's .venv, python3 and
#   python on PATH that imports torch; it must have torch with CUDA (torch and torchvision are
#   never in the wheelhouse).
#
# Without a CUDA device it says so in one line and exits 0. Exit status otherwise: 0 when every
# step passed, 1 when one failed (the later steps still run while time is left).
set -uo pipefail

# Every step is stopped at its own limit or at what is left of TOTAL_SECONDS since the start,
# whichever comes first, and killed KILL_AFTER seconds later if it still runs; the summary
# then has SUMMARY_SECONDS (+ KILL_AFTER): the whole ends within 530 s, under 9 minutes.
TOTAL_SECONDS=490 KILL_AFTER=10 SUMMARY_SECONDS=20

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
if [ -z "${DYSAMPLE_D2_PYTHON:-}" ]; then
  for candidate in "$PY" python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && timeout 60 "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY=$(command -v "$candidate")
      break
    fi
  done
fi
WHEELHOUSE=${1:-${DYSAMPLE_D2_WHEELHOUSE:-}}
OUT=${2:-${DYSAMPLE_D2_GPU_OUT:-$ROOT/output/gpu_check}}
if [ -n "$WHEELHOUSE" ]; then
  WHEELHOUSE=$(cd "$(dirname "$WHEELHOUSE")" && pwd)/$(basename "$WHEELHOUSE") || exit 1
fi
cd "$ROOT" || exit 1

# limited SECONDS COMMAND...: COMMAND stopped at SECONDS or at the time left, if less
limited() {
  local seconds=$1 left=$((TOTAL_SECONDS - SECONDS))
  shift
  [ "$left" -lt "$seconds" ] && seconds=$left
  if [ "$seconds" -le 0 ]; then
    echo "gpu_check: no time left of the check's ${TOTAL_SECONDS} s for: $*"
    return 124
  fi
  timeout --kill-after="$KILL_AFTER" "$seconds" "$@"
}

limited 60 "$PY" -W ignore "$ROOT/scripts/gpu_check.py" device 2>/dev/null
case $? in
  0) ;;
  3) exit 0 ;;  # no CUDA: the line above says so
  *) echo "gpu_check: $PY cannot run torch (set DYSAMPLE_D2_PYTHON to one with torch)"
     exit 1 ;;
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
  limited 60 "$PY" "$ROOT/scripts/gpu_check.py" install "$WHEELHOUSE" "$SITE" || exit 1
  export PYTHONPATH="$SITE:$ROOT:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
fi
# cuBLAS under torch.use_deterministic_algorithms(True); a headless matplotlib
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8} MPLBACKEND=Agg
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::FutureWarning}

step "checking imports"
limited 60 "$PY" "$ROOT/scripts/gpu_check.py" imports || {
  echo "gpu_check: the environment is incomplete (above); scripts/gpu_wheelhouse.sh builds" \
    "the wheelhouse"
  exit 1
}

# run NAME SECONDS COMMAND...: one step, its output also in OUT/NAME.log
run() {
  local name=$1 seconds=$2
  shift 2
  step "$name (at most ${seconds} s, $((TOTAL_SECONDS - SECONDS)) s left)"
  limited "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "gpu_check: $name stopped at its time limit"
    FAILED+=("$name (exit $rc)")
  fi
}

run cuda_tests 240 "$PY" -m pytest -m cuda tests/test_cuda.py tests/test_sampling.py \
  tests/test_any_size.py tests/test_dysample.py -q -rs -p no:cacheprovider \
  --junitxml "$OUT/cuda_tests.xml"
for dtype in float32 bfloat16; do
  run "upsamplers_$dtype" 60 "$PY" scripts/benchmark_upsamplers.py --device cuda \
    --dtype "$dtype" --repeats 20 --warmup 5 --out "$OUT/upsamplers_$dtype"
done
run model 100 "$PY" scripts/benchmark_model.py --device cuda --archs faster_rcnn --no-flops \
  --size 800x1333 --repeats 10 --warmup 3 --out "$OUT/model"
TOTAL_SECONDS=$((SECONDS + SUMMARY_SECONDS))  # the summary's own time, after the steps
run summary "$SUMMARY_SECONDS" "$PY" "$ROOT/scripts/gpu_check.py" summary "$OUT"

if [ ${#FAILED[@]} -ne 0 ]; then
  step "FAILED: ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
step "done: $OUT/summary.md"
