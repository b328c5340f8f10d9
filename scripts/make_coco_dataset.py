#!/usr/bin/env python
"""
Write a small synthetic dataset in the COCO 2017 layout to DATASETS_DIR/coco, loadable by
Detectron2's builtin names (coco_2017_train, coco_2017_val_panoptic_separated, ...) with
``DETECTRON2_DATASETS=DATASETS_DIR``; with --ade20k also one in the ADE20K layout to
DATASETS_DIR/ADEChallengeData2016 (ade20k_sem_seg_train, ade20k_sem_seg_val). Rerunning with
the same arguments reuses the datasets.

    python scripts/make_coco_dataset.py --root datasets --train-images 64 --val-images 16
    python scripts/make_coco_dataset.py --root datasets --ade20k
"""

import argparse
import logging
import os
import sys


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        if value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {value}")
        return value

    parse.__name__ = f"integer in [{lo}, {hi}]"
    return parse


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--root",
        required=True,
        metavar="DATASETS_DIR",
        help="datasets directory; the dataset goes to DATASETS_DIR/coco",
    )
    parser.add_argument(
        "--train-images",
        type=_int_in(1, 899_999),
        default=64,
        help="number of train2017 images (default: 64)",
    )
    parser.add_argument(
        "--val-images",
        type=_int_in(1, 10**6),
        default=16,
        help="number of val2017 images (default: 16)",
    )
    parser.add_argument(
        "--size",
        type=_int_in(64, 4096),
        default=256,
        help="image side in pixels, 64..4096 (default: 256)",
    )
    parser.add_argument(
        "--seed", type=_int_in(0, 2**63 - 1), default=0, help="random seed (default: 0)"
    )
    parser.add_argument(
        "--ade20k",
        action="store_true",
        help="also write DATASETS_DIR/ADEChallengeData2016 (ADE20K layout, 150 classes) with "
        "the same arguments, for the semantic segmentation configs",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="regenerate even if the dataset directories were made with these arguments",
    )
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if os.path.exists(args.root) and not os.path.isdir(args.root):
        parser.error(f"argument --root: {args.root!r} exists and is not a directory")
    # Imported after parsing: bad arguments fail fast, without importing torch/detectron2.
    from synthetic_data import generate_synthetic_ade20k, generate_synthetic_coco

    logging.basicConfig(level=logging.WARNING)
    generators = [("COCO", generate_synthetic_coco)]
    if args.ade20k:
        generators.append(("ADE20K", generate_synthetic_ade20k))
    for kind, generate in generators:
        try:
            dataset_dir, reused = generate(
                args.root, args.train_images, args.val_images, args.size, args.seed,
                force=args.force,
            )
        except (ValueError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if reused:
            print(
                f"Reusing existing synthetic {kind} dataset at {dataset_dir} (same arguments; "
                "--force regenerates)."
            )
        else:
            print(f"Wrote synthetic {kind} dataset to {dataset_dir}.")
    print(f"Use it with: export DETECTRON2_DATASETS={os.path.dirname(dataset_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
