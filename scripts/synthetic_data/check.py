"""
Panoptic -> semantic conversion (as Detectron2's prepare_panoptic_fpn.py) and validation of a
COCO-layout dataset directory.
"""

import contextlib
import io
import json
import os
from typing import Dict, Iterable, List

import numpy as np
from panopticapi.utils import rgb2id
from PIL import Image

from .draw import coco_categories

__all__ = [
    "DatasetValidationError",
    "stuff_semantic_id_map",
    "panoptic_to_semantic",
    "tight_box",
    "validate_coco_dir",
]


class DatasetValidationError(ValueError):
    """A generated dataset file is inconsistent; the message names the file and the problem."""


def tight_box(mask: np.ndarray) -> List[float]:
    """[x, y, w, h] of the smallest box holding all True pixels of bool (H, W) `mask`."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def stuff_semantic_id_map(categories: Iterable[dict]) -> Dict[int, int]:
    """
    Category id -> semantic id, as prepare_panoptic_fpn.py: stuff in the given order -> 1..S,
    things -> 0, void (id 0) -> 255.
    """
    categories = list(categories)
    stuff_ids = [c["id"] for c in categories if c["isthing"] == 0]
    assert len(stuff_ids) <= 254
    id_map = {sid: i + 1 for i, sid in enumerate(stuff_ids)}
    id_map.update({c["id"]: 0 for c in categories if c["isthing"] == 1})
    id_map[0] = 255
    return id_map


def panoptic_to_semantic(pan_ids: np.ndarray, segments_info: List[dict], id_map: Dict[int, int]):
    """
    Args:
        pan_ids: int (H, W) panoptic segment ids (rgb2id of the PNG).
        segments_info: the image's panoptic segments (id, category_id, ...).
    Returns:
        uint8 (H, W): semantic ids; pixels of no listed segment are 255.
    """
    out = np.full(pan_ids.shape, 255, dtype=np.uint8)
    for seg in segments_info:
        out[pan_ids == seg["id"]] = id_map[seg["category_id"]]
    return out


def _fail(path: str, msg: str):
    raise DatasetValidationError(f"{path}: {msg}")


def _check_instances(coco_dir: str, split: str) -> Dict[int, dict]:
    """Checks instances_<split>.json and its images. Returns image id -> image entry."""
    from pycocotools.coco import COCO

    path = os.path.join(coco_dir, "annotations", f"instances_{split}.json")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        coco = COCO(path)
    thing_ids = [c["id"] for c in coco_categories() if c["isthing"] == 1]
    if sorted(coco.getCatIds()) != thing_ids:
        _fail(path, "categories are not the 80 COCO thing categories")
    for img in coco.dataset["images"]:
        file = os.path.join(coco_dir, split, img["file_name"])
        if not os.path.isfile(file):
            _fail(path, f"image {file} is missing")
        with Image.open(file) as im:
            if im.size != (img["width"], img["height"]) or im.mode != "RGB":
                _fail(file, f"is {im.mode} {im.size}, json says {img['width']}x{img['height']}")
    for ann in coco.dataset["annotations"]:
        img = coco.imgs.get(ann["image_id"])
        where = f"annotation {ann['id']}"
        if img is None or ann["category_id"] not in thing_ids or ann["iscrowd"] != 0:
            _fail(path, f"{where} has a bad image_id, category_id or iscrowd")
        x, y, w, h = ann["bbox"]
        if not (
            x >= 0
            and y >= 0
            and w > 0
            and h > 0
            and x + w <= img["width"]
            and y + h <= img["height"]
        ):
            _fail(path, f"{where}: bbox {ann['bbox']} is empty or outside the image")
        if ann["area"] <= 0 or any(len(p) < 6 or len(p) % 2 for p in ann["segmentation"]):
            _fail(path, f"{where}: area <= 0 or a polygon with < 3 points")
        mask = coco.annToMask(ann).astype(bool)
        if int(mask.sum()) != ann["area"] or tight_box(mask) != list(ann["bbox"]):
            _fail(path, f"{where}: area/bbox disagree with its polygon's mask")
    return coco.imgs


def _check_panoptic(coco_dir: str, split: str, images: Dict[int, dict]) -> None:
    """Checks panoptic_<split>.json, its PNGs, and the panoptic_stuff_<split> PNGs."""
    path = os.path.join(coco_dir, "annotations", f"panoptic_{split}.json")
    with open(path) as f:
        data = json.load(f)
    cats = {c["id"]: c for c in data["categories"]}
    if sorted(cats) != sorted(c["id"] for c in coco_categories()):
        _fail(path, "categories are not the 133 COCO panoptic categories")
    if sorted(a["image_id"] for a in data["annotations"]) != sorted(images):
        _fail(path, "annotations do not cover exactly the instances json's images")
    id_map = stuff_semantic_id_map(coco_categories())
    for ann in data["annotations"]:
        png = os.path.join(coco_dir, f"panoptic_{split}", ann["file_name"])
        img = images[ann["image_id"]]
        if os.path.splitext(ann["file_name"])[0] != os.path.splitext(img["file_name"])[0]:
            _fail(path, f"{ann['file_name']} does not match image {img['file_name']}")
        if not os.path.isfile(png):
            _fail(path, f"panoptic PNG {png} is missing")
        pan = rgb2id(np.asarray(Image.open(png).convert("RGB"), dtype=np.uint32))
        if pan.shape != (img["height"], img["width"]):
            _fail(png, f"shape {pan.shape} differs from the image's")
        segs = ann["segments_info"]
        present = set(np.unique(pan).tolist()) - {0}
        if present != {s["id"] for s in segs} or len(segs) != len(present):
            _fail(png, f"segment ids {sorted(present)} differ from segments_info")
        for s in segs:
            mask = pan == s["id"]
            if s["category_id"] not in cats or s["iscrowd"] != 0:
                _fail(png, f"segment {s['id']} has a bad category_id or iscrowd")
            if int(mask.sum()) != s["area"] or tight_box(mask) != list(s["bbox"]):
                _fail(png, f"segment {s['id']}: area/bbox disagree with the PNG")
        sem_file = os.path.join(coco_dir, f"panoptic_stuff_{split}", ann["file_name"])
        if not os.path.isfile(sem_file):
            _fail(path, f"semantic PNG {sem_file} is missing")
        sem = np.asarray(Image.open(sem_file))
        if sem.dtype != np.uint8 or not np.array_equal(
            sem, panoptic_to_semantic(pan, segs, id_map)
        ):
            _fail(sem_file, "is not the prepare_panoptic_fpn.py conversion of the panoptic PNG")


def validate_coco_dir(coco_dir: str, splits: Iterable[str] = ("train2017", "val2017")) -> None:
    """
    Validate instances + panoptic annotations, images and PNGs of `splits` under `coco_dir`.
    Raises DatasetValidationError naming the file and the problem.
    """
    for split in splits:
        images = _check_instances(coco_dir, split)
        _check_panoptic(coco_dir, split, images)
