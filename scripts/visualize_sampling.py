#!/usr/bin/env python
"""
Draw where each DySample of a DySample-FPN samples, for a few points of an image.

    python scripts/visualize_sampling.py \\
        --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml \\
        --weights output/quickstart/det/model_final.pth --input image.jpg

writes output/sampling.png (--output PNG elsewhere; README's picture is regenerated with an
explicit --output docs/sampling.png).

One row per upsampler (fpn_upsample5, 4, 3): the image under the upsampler's offset
magnitude; its input features (channel mean) with, for the output pixels nearest to the
chosen points, the bilinear (initial) sampling position, DySample's position for each channel
group and an arrow between them; then a zoom on each point, over the input pixel grid and the
regular grid of bilinear positions. Points: the strongest image edges, or --seed S for random
ones. Prints the mean / max offset magnitude (input-feature pixels) of each upsampler over
the whole image.
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # tools/ and scripts/
from sampling_plot import choose_points, collect_sampling, draw_sampling, summary  # noqa: E402
from tools.deploy import load_model  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (default: MODEL.WEIGHTS; empty: random init)")
    parser.add_argument("--input", required=True, metavar="IMAGE")
    parser.add_argument("--output", default=os.path.join("output", "sampling.png"), metavar="PNG",
                        help="PNG to write (default: output/sampling.png)")
    parser.add_argument("--points", type=int, default=5, metavar="N", help="points to inspect")
    parser.add_argument("--seed", type=int, default=None,
                        help="pick the points at random with this seed (default: edges)")
    parser.add_argument("--dpi", type=int, default=90, help="PNG resolution")
    parser.add_argument("--no-resize", action="store_true",
                        help="use the image as is, not resized as for testing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options, KEY VALUE pairs")
    return parser


def read_image(cfg, path, resize=True):
    """(Tensor[3, H, W] in cfg.INPUT.FORMAT, RGB uint8 ndarray[H, W, 3]) as for inference."""
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    if resize:
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        image = aug.get_transform(image).apply_image(image)
    rgb = detection_utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    return tensor, np.clip(rgb, 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        cfg, model = load_model(args.config_file, args.weights, args.opts)
        image, rgb = read_image(cfg, args.input, resize=not args.no_resize)
        samplings = collect_sampling(model, image.to(cfg.MODEL.DEVICE))
    except (OSError, KeyError, AssertionError, ValueError) as e:  # config/checkpoint/image
        print(f"visualize_sampling.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    points = choose_points(rgb, args.points, args.seed)
    weights = cfg.MODEL.WEIGHTS or "random init"
    name = os.path.basename
    title = f"{name(args.config_file)} ({name(weights)}), {name(args.input)}"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    draw_sampling(samplings, rgb, points, args.output, title=title, dpi=args.dpi)
    print(f"image {rgb.shape[0]}x{rgb.shape[1]}, {len(points)} points; offset magnitude "
          "in input-feature pixels over all output pixels and groups:")
    for name, stats in summary(samplings).items():
        print(f"  {name}: mean {stats['mean']:.4f} max {stats['max']:.4f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
