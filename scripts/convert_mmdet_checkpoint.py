#!/usr/bin/env python
"""
Convert an mmdetection (2.x / 3.x) R-CNN checkpoint, e.g. one the DySample authors released,
into a Detectron2 checkpoint for the model a config of this project builds.

    python scripts/convert_mmdet_checkpoint.py IN.pth OUT.pth \
        --config-file configs/mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml
    python scripts/convert_mmdet_checkpoint.py faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth OUT.pth
    python scripts/convert_mmdet_checkpoint.py IN.pth OUT.pth --config-file FILE \
        MODEL.FPN.DYSAMPLE.SCOPE_BIAS True

--config-file may be left out for the authors' released file names (see
docs/reproduce_paper.md): the matching configs/mmdet-recipe/ file is used. The model is built
from the config (CPU, random init) and the converted tensors must cover it exactly, names and
shapes; otherwise nothing is written and the unmapped / missing / unexpected keys are listed
(exit status 2). The result loads with `load_exact_checkpoint` / `train_net.py --eval-only`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/
from mmdet_conversion import (  # noqa: E402
    TASKS,
    ConversionError,
    config_for_checkpoint,
    convert_checkpoint,
    save_checkpoint,
)
from tools.engine import setup_config  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("input", metavar="IN.pth", help="mmdet checkpoint")
    parser.add_argument("output", metavar="OUT.pth", help="Detectron2 checkpoint to write")
    parser.add_argument("--config-file", metavar="FILE",
                        help="the config of the model to convert for (an mmdet-recipe config); "
                        "optional for the authors' released file names")
    parser.add_argument("--task", choices=TASKS,
                        help="expected model kind; checked against the checkpoint and config")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config options merged after --config-file, as train_net.py takes "
                        "them")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_intermixed_args(argv)  # IN OUT, options, then KEY VALUE
    config_file = args.config_file or config_for_checkpoint(args.input)
    if config_file is None:
        print(f"error: {os.path.basename(args.input)!r} is not one of the authors' released "
              "file names: give the matching --config-file (configs/mmdet-recipe/*_mmdet.yaml)",
              file=sys.stderr)
        return 2
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print("error: OUT.pth must differ from IN.pth", file=sys.stderr)
        return 2
    try:
        cfg = setup_config(config_file, args.opts)
        checkpoint, report = convert_checkpoint(args.input, cfg, task=args.task)
    except (ConversionError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_checkpoint(checkpoint, args.output)
    print(f"config: {config_file}")
    print(report.summary())
    print(f"wrote {args.output} ({len(checkpoint['model'])} tensors, exact match to the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
