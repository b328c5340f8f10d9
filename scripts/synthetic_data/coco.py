"""
Generator of a small synthetic dataset in the exact COCO 2017 layout that Detectron2's builtin
dataset names (coco_2017_{train,val}, coco_2017_{train,val}_panoptic[_separated]) read from
``$DETECTRON2_DATASETS/coco``::

    coco/
      train2017/, val2017/                     000000000001.jpg ... (RGB JPEG)
      annotations/instances_{train,val}2017.json   80 thing categories, polygon masks
      annotations/panoptic_{train,val}2017.json    133 categories, segments_info
      panoptic_{train,val}2017/                PNG, segment id = R + 256 G + 256^2 B
      panoptic_stuff_{train,val}2017/          PNG, things 0, stuff 1..53, void 255
      synthetic_manifest.json                  written last: arguments and file counts

Panoptic PNGs sit in ``coco/panoptic_*2017`` (what builtin.py reads), not in
``coco/annotations/``. The stuff PNGs are the mapping of Detectron2's
``datasets/prepare_panoptic_fpn.py`` (a repository script, not part of the installed package).
"""

import json
import os
from typing import Dict, List, Tuple

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image

from .check import (
    panoptic_to_semantic,
    stuff_semantic_id_map,
    tight_box,
    validate_coco_dir,
)
from .dataset_dir import MANIFEST_NAME, checked_settings, read_manifest, write_dataset_dir
from .draw import THING_STYLES, coco_categories, render_scene

__all__ = ["generate_synthetic_coco", "MANIFEST_NAME", "read_manifest"]
GENERATOR_VERSION = 1
# split -> (first image id, seed stream). Disjoint image ids, as in real COCO.
SPLITS = {"train2017": (1, 0), "val2017": (900_001, 1)}
MAX_TRAIN_IMAGES = SPLITS["val2017"][0] - SPLITS["train2017"][0]


def _segment_ids(category_ids: List[int]) -> List[int]:
    """Unique non-zero panoptic ids, each near its category's Detectron2 colour (COCO-like)."""
    colors = {c["id"]: c["color"] for c in coco_categories()}
    used, ids = set(), []
    for cat in category_ids:
        r, g, b = colors[cat]
        sid = r + 256 * g + 256 * 256 * b
        while sid == 0 or sid in used:
            sid = (sid + 1) % (256**3)
        used.add(sid)
        ids.append(sid)
    return ids


def _write_image(out: Dict, coco_dir: str, split: str, image_id: int, rng, size: int) -> None:
    """Renders one scene and writes its JPEG, panoptic PNG and stuff PNG; appends json entries."""
    image, stuff, objects = render_scene(rng, size)
    stem = f"{image_id:012d}"
    Image.fromarray(image).save(os.path.join(coco_dir, split, stem + ".jpg"), quality=92)
    out["images"].append(
        {"id": image_id, "file_name": stem + ".jpg", "width": size, "height": size}
    )

    for obj in objects:
        out["annotations"].append(
            {
                "id": len(out["annotations"]) + out["first_ann_id"],
                "image_id": image_id,
                "category_id": obj["category_id"],
                "segmentation": [obj["polygon"]],
                "area": int(obj["mask"].sum()),
                "bbox": tight_box(obj["mask"]),
                "iscrowd": 0,
            }
        )

    # Panoptic: objects (disjoint masks) over the stuff map; void stays 0.
    segments = [(o["category_id"], o["mask"]) for o in objects]
    things = np.zeros(stuff.shape, bool)
    for o in objects:
        things |= o["mask"]
    for cat in sorted(set(np.unique(stuff[~things]).tolist()) - {0}):
        segments.append((cat, (stuff == cat) & ~things))
    pan = np.zeros(stuff.shape, np.int64)
    segments_info = []
    for sid, (cat, mask) in zip(_segment_ids([c for c, _ in segments]), segments):
        pan[mask] = sid
        info = {"id": sid, "category_id": cat, "iscrowd": 0, "bbox": tight_box(mask)}
        info["area"] = int(mask.sum())
        segments_info.append(info)
    Image.fromarray(id2rgb(pan)).save(os.path.join(coco_dir, f"panoptic_{split}", stem + ".png"))
    out["panoptic"].append(
        {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info}
    )
    sem = panoptic_to_semantic(pan, segments_info, out["sem_id_map"])
    Image.fromarray(sem).save(os.path.join(coco_dir, f"panoptic_stuff_{split}", stem + ".png"))


def _write_split(coco_dir: str, split: str, count: int, size: int, seed: int, first_ann_id: int):
    """Writes all files of one split. Returns the next free annotation id."""
    first_image_id, stream = SPLITS[split]
    for d in (split, f"panoptic_{split}", f"panoptic_stuff_{split}"):
        os.makedirs(os.path.join(coco_dir, d))
    cats = coco_categories()
    out = {
        "images": [],
        "annotations": [],
        "panoptic": [],
        "first_ann_id": first_ann_id,
        "sem_id_map": stuff_semantic_id_map(cats),
    }
    for i in range(count):
        rng = np.random.default_rng([seed, stream, i])  # per-image stream: order independent
        _write_image(out, coco_dir, split, first_image_id + i, rng, size)

    info = {
        "description": "dysample-d2 synthetic COCO-format dataset",
        "version": str(GENERATOR_VERSION),
        "year": 2017,
        "contributor": "dysample-d2 scripts/synthetic_data",
        "url": "",
        "date_created": "",
    }
    instances = {
        "info": info,
        "licenses": [],
        "images": out["images"],
        "annotations": out["annotations"],
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats if c["isthing"] == 1],
    }
    panoptic = {
        "info": info,
        "licenses": [],
        "images": out["images"],
        "annotations": out["panoptic"],
        "categories": [
            {"id": c["id"], "name": c["name"], "isthing": c["isthing"], "color": list(c["color"])}
            for c in cats
        ],
    }
    for kind, obj in (("instances", instances), ("panoptic", panoptic)):
        with open(os.path.join(coco_dir, "annotations", f"{kind}_{split}.json"), "w") as f:
            json.dump(obj, f)
    return first_ann_id + len(out["annotations"])


def generate_synthetic_coco(
    root: str,
    train_images: int = 64,
    val_images: int = 16,
    size: int = 256,
    seed: int = 0,
    force: bool = False,
) -> Tuple[str, bool]:
    """
    Write (or reuse) a synthetic COCO 2017 dataset at ``root/coco``. Point DETECTRON2_DATASETS
    at `root` to load it by Detectron2's builtin names. Images are `size` x `size`; the same
    arguments give byte-identical files.

    An existing ``root/coco`` made with the same arguments is reused unless `force`. Files are
    written and validated in a temporary directory under `root` that is renamed to ``coco``
    only when complete, so an interrupted run never looks complete. A ``root/coco`` that this
    generator did not write (no manifest) is never replaced.

    Returns:
        (coco_dir, reused): the dataset directory and whether an existing one was reused.
    """
    settings = checked_settings(train_images, val_images, size, seed, MAX_TRAIN_IMAGES,
                                version=GENERATOR_VERSION, thing_classes=list(THING_STYLES))

    def write(coco_dir):
        os.makedirs(os.path.join(coco_dir, "annotations"))
        next_ann_id = _write_split(coco_dir, "train2017", train_images, size, seed, 1)
        _write_split(coco_dir, "val2017", val_images, size, seed, next_ann_id)
        validate_coco_dir(coco_dir, list(SPLITS))

    prefixes = ("", "panoptic_", "panoptic_stuff_")
    data_dirs = ["annotations"] + [prefix + split for split in SPLITS for prefix in prefixes]
    return write_dataset_dir(root, "coco", settings, write, data_dirs, __name__, force)
