#!/usr/bin/env python
"""
Run a DySample-FPN model on one image and write its predictions drawn by Detectron2's
Visualizer (instances, or the panoptic segmentation for Panoptic FPN).

    python scripts/demo.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml \
        --input image.jpg --output out.png MODEL.WEIGHTS output/quickstart/det/model_final.pth
"""
import argparse
import os
import sys

import dysample_d2  # noqa: F401  (first: it imports Detectron2's models without their warnings)
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/
from tools.engine import (  # noqa: E402
    UserFileNotFoundError,
    UserInputError,
    load_exact_checkpoint,
    setup_config,
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, help="an image file")
    parser.add_argument("--output", default="demo_output.png", help="PNG to write")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options, KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    return parser


def predict_and_draw(cfg, image_bgr, confidence_threshold=0.5):
    """
    Returns:
        (predictions dict of the model, RGB uint8 array [H, W, 3] of the drawing)
    """
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""  # loaded below, strictly
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    predictor = DefaultPredictor(cfg)
    if weights:
        load_exact_checkpoint(predictor.model, weights)
    with torch.no_grad():
        predictions = predictor(image_bgr)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        drawing = visualizer.draw_panoptic_seg_predictions(panoptic_seg.cpu(), segments_info)
    else:
        drawing = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    return predictions, drawing.get_image()


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="detectron2")
    try:
        if not os.path.isfile(args.input):
            raise UserFileNotFoundError(f"--input {args.input!r} does not exist")
        cfg = setup_config(args.config_file, args.opts)
        if not cfg.MODEL.WEIGHTS:
            print("WARNING: no MODEL.WEIGHTS given: drawing the predictions of a random model")
        predictions, drawing = predict_and_draw(
            cfg, read_image(args.input, format="BGR"), args.confidence_threshold
        )
    except UserInputError as e:  # one line, as train_net.py prints it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    from PIL import Image

    Image.fromarray(drawing).save(args.output)
    num = len(predictions["instances"]) if "instances" in predictions else 0
    print(f"{num} instances above {args.confidence_threshold}; wrote {args.output}")


if __name__ == "__main__":
    main()
