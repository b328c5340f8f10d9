#!/usr/bin/env bash
# The main job on built-in data, from nothing: install what is missing, generate a small
# COCO-layout dataset, train a DySample-FPN Faster R-CNN (ResNet-18) on CPU, evaluate it,
# draw it.
#   ./scripts/quickstart.sh [--task det|mask|panoptic] [--config-file FILE] [--iters N] [--out DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"

if [ ! -x "$PY" ]; then
  free_kb=$(df -Pk "$ROOT" | awk 'NR==2 {print $4}')
  if [ "$free_kb" -lt 8000000 ]; then
    echo "[quickstart] ERROR: only $((free_kb / 1024)) MiB free on $(df -P "$ROOT" | awk 'NR==2 {print $6}'); the environment (torch, detectron2) needs about 8 GiB. Free some space and run again." >&2
    exit 1
  fi
fi
echo "[quickstart] installing what is missing (scripts/install.sh)"
"$ROOT/scripts/install.sh"
exec "$PY" "$ROOT/scripts/quickstart.py" "$@"
