"""
Drawing of synthetic scenes: textured stuff bands with non-overlapping filled shapes on top.

Every thing object is defined by a polygon and rasterized with pycocotools (the rasterizer
COCO tools and Detectron2 use for polygons), so its painted pixels, its mask, its polygon
annotation and its tight box agree exactly.
"""

import functools
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

# Thing classes (COCO names; ids are looked up in Detectron2's COCO_CATEGORIES at runtime).
# name -> (shape, base RGB colour). Shapes and colours are distinct so a detector learns fast.
THING_STYLES = {
    "person": ("tall_ellipse", (220, 40, 40)),
    "car": ("wide_rect", (30, 60, 200)),
    "stop sign": ("octagon", (20, 190, 170)),
    "dog": ("triangle", (235, 150, 20)),
    "sports ball": ("circle", (200, 40, 200)),
}
# Stuff classes (COCO panoptic names) -> texture kind. Tops are drawn above bottoms.
STUFF_TOP = ("sky-other-merged", "wall-other-merged")
STUFF_BOTTOM = ("grass-merged", "road")
VOID_COLOR = (35, 35, 35)


@functools.lru_cache(maxsize=None)
def coco_categories() -> Tuple[dict, ...]:
    """All 133 COCO panoptic categories (80 things, 53 stuff), from Detectron2."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return tuple(dict(c) for c in COCO_CATEGORIES)


def category_id(name: str) -> int:
    """Real COCO category id of a category name."""
    ids = [c["id"] for c in coco_categories() if c["name"] == name]
    if len(ids) != 1:
        raise KeyError(f"{name!r} is not a COCO panoptic category name")
    return ids[0]


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Returns a float32 (h, w, 3) RGB texture for a stuff category."""
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    noise = rng.standard_normal((h, w, 1)).astype(np.float32)
    if kind == "sky-other-merged":  # vertical gradient, light noise
        top, bottom = np.float32([100, 150, 225]), np.float32([195, 225, 250])
        return top + (bottom - top) * yy + 4.0 * noise
    if kind == "grass-merged":  # green with strong noise and blurred blobs
        blobs = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 3)
        base = np.float32([60, 140, 50]) + np.float32([10, 40, 10]) * blobs[..., None]
        return base + 14.0 * noise
    if kind == "wall-other-merged":  # vertical stripes
        period = int(rng.integers(6, 17))
        phase = int(rng.integers(period))
        stripe = ((np.arange(w) + phase) // max(period // 2, 1)) % 2
        light, dark = np.float32([190, 175, 145]), np.float32([150, 132, 105])
        colors = np.where(stripe[None, :, None] == 1, light, dark)
        return np.broadcast_to(colors, (h, w, 3)) + 6.0 * noise
    if kind == "road":  # dark grey, horizontal gradient and noise
        return np.float32([75, 75, 82]) + np.float32([30, 30, 30]) * xx + 10.0 * noise
    raise KeyError(kind)


def _wavy_boundary(rng: np.random.Generator, w: int, lo: float, hi: float) -> np.ndarray:
    """Returns (w,) float row positions of a sinusoidal band boundary between lo and hi."""
    y0 = rng.uniform(lo, hi)
    amp = rng.uniform(0.0, 0.03) * w  # small enough that boundaries never cross
    period = rng.uniform(0.5, 2.0) * w
    phase = rng.uniform(0, 2 * np.pi)
    return y0 + amp * np.sin(2 * np.pi * np.arange(w) / period + phase)


def draw_background(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """
    Returns:
        image (float32 (size, size, 3)): textured bands, RGB.
        stuff (int32 (size, size)): COCO stuff category id per pixel, 0 where void.
    """
    names = [STUFF_TOP[rng.integers(2)], STUFF_BOTTOM[rng.integers(2)]]
    if rng.random() < 0.5:  # a middle band, e.g. a wall between sky and grass
        names.insert(1, next(n for n in STUFF_TOP[1:] + STUFF_BOTTOM if n not in names))
    n = len(names)
    bounds = [
        _wavy_boundary(rng, size, size * (i + 0.6) / n, size * (i + 1.4) / n) for i in range(n - 1)
    ]
    rows = np.arange(size, dtype=np.float32)[:, None]
    band = sum((rows >= b[None, :]).astype(np.int32) for b in bounds)  # (size, size) in [0, n)
    image = np.zeros((size, size, 3), np.float32)
    stuff = np.zeros((size, size), np.int32)
    for i, name in enumerate(names):
        sel = band == i
        image[sel] = _texture(name, rng, size, size)[sel]
        stuff[sel] = category_id(name)
    if rng.random() < 0.5:  # unlabeled 2-px seams between bands (void in panoptic, 255 in sem)
        for b in bounds:
            seam = np.abs(rows + 0.5 - b[None, :]) < 1.0
            image[seam] = VOID_COLOR
            stuff[seam] = 0
    return image, stuff


def _shape_polygon(shape: str, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Returns (K, 2) float xy vertices of `shape`, centred at 0, largest side ~= extent."""
    r = extent / 2.0
    if shape in ("tall_ellipse", "circle", "octagon"):
        k = 8 if shape == "octagon" else int(np.clip(extent // 2, 10, 32))
        t = np.arange(k) * 2 * np.pi / k + (np.pi / 8 if shape == "octagon" else 0.0)
        ax = 0.5 * r if shape == "tall_ellipse" else r
        return np.stack([ax * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "wide_rect":
        pts = np.array([[-r, -0.5 * r], [r, -0.5 * r], [r, 0.5 * r], [-r, 0.5 * r]])
        angle = rng.uniform(-10, 10)
    elif shape == "triangle":
        pts = np.array([[0.0, -0.8 * r], [r, 0.8 * r], [-r, 0.8 * r]])
        angle = rng.uniform(-15, 15)
    else:
        raise KeyError(shape)
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return pts @ np.array([[c, s], [-s, c]])


def rasterize_polygon(polygon: List[float], size: int) -> np.ndarray:
    """Returns bool (size, size) mask of a flat [x0, y0, x1, y1, ...] polygon, as COCO does."""
    rle = mask_util.merge(mask_util.frPyObjects([polygon], size, size))
    return mask_util.decode(rle).astype(bool)


def _sample_extent(rng: np.random.Generator, size: int) -> float:
    """Object extent in pixels: small (8-16), medium or large, in about equal proportions."""
    bucket = rng.random()
    if bucket < 0.35:
        return rng.uniform(8, 16)
    if bucket < 0.7:
        return rng.uniform(16, max(size / 4, 17))
    return rng.uniform(size / 4, size * 0.55)


def place_objects(rng: np.random.Generator, size: int, max_objects: int) -> List[Dict]:
    """
    Samples up to `max_objects` non-overlapping objects (at least 2 px apart).

    Returns:
        list of dict: name, category_id, polygon (flat list of xy floats), mask (bool (size, size)).
    """
    names = list(THING_STYLES)
    occupied = np.zeros((size, size), np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        name = names[int(rng.integers(len(names)))]
        for _attempt in range(20):
            pts = _shape_polygon(THING_STYLES[name][0], _sample_extent(rng, size), rng)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            if np.any(hi - lo > size - 2):
                continue
            center = rng.uniform(-lo + 1, size - 1 - hi)
            polygon = [round(float(v), 2) for v in (pts + center).reshape(-1)]
            mask = rasterize_polygon(polygon, size)
            if mask.sum() < 4 or np.any(occupied[mask]):
                continue
            occupied |= cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
            objects.append(
                {"name": name, "category_id": category_id(name), "polygon": polygon, "mask": mask}
            )
            break
    return objects


def paint_objects(rng: np.random.Generator, image: np.ndarray, objects: List[Dict]) -> None:
    """Paints each object's mask in place on float (H, W, 3) `image` with its class colour."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for obj in objects:
        base = np.float32(THING_STYLES[obj["name"]][1]) + rng.uniform(-15, 15, 3)
        m = obj["mask"]
        # mild linear shading across the object plus noise, so objects are not flat
        gx, gy = rng.uniform(-0.6, 0.6, 2)
        shade = (gx * (xx[m] - xx[m].mean()) + gy * (yy[m] - yy[m].mean()))[:, None]
        image[m] = base + np.clip(shade, -25, 25) + 5.0 * rng.standard_normal((int(m.sum()), 3))


def render_scene(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray, list]:
    """
    Returns:
        image (uint8 (size, size, 3)): RGB.
        stuff (int32 (size, size)): stuff category id per pixel (0 = void), under objects too.
        objects (list[dict]): see :func:`place_objects`; masks are disjoint.
    """
    image, stuff = draw_background(rng, size)
    objects = place_objects(rng, size, max_objects=max(2, size // 40))
    paint_objects(rng, image, objects)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), stuff, objects
