"""
Where DySample samples: for a few output pixels of each FPN upsampler, the position that
bilinear upsampling reads (DySample's initial position) and the position DySample reads
(bilinear + learned offset), drawn over the image and over the upsampler's input features.

Positions are (x, y) in pixels of the upsampler's input feature map, pixel centres at
integers; a feature pixel p covers image pixels around ``(p + 0.5) * stride - 0.5``.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dysample_d2 import DySample

__all__ = ["UpsamplerSampling", "collect_sampling", "choose_points", "draw_sampling"]

GROUP_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                "#bfef45"]


@dataclass
class UpsamplerSampling:
    name: str
    stride: float  # image pixels per input-feature pixel
    feature: np.ndarray  # [h, w] channel mean of the input features
    base: np.ndarray  # [G, sH, sW, 2] bilinear (x, y) positions, input-feature pixels
    learned: np.ndarray  # [G, sH, sW, 2] positions DySample samples, input-feature pixels
    offset_mean: float  # mean |offset| over all output pixels and groups, input pixels
    offset_max: float

    @property
    def scale(self) -> int:
        return self.base.shape[2] // self.feature.shape[1]


def _positions(module: DySample, x: torch.Tensor):
    """(base, learned, |offset|) of image 0: [G, sH, sW, 2], [G, sH, sW, 2], [G, sH, sW]."""
    h, w = x.shape[-2:]
    grid = module.sampling_grid(x[:1]).double()  # [G, sH, sW, 2], align_corners=False
    size = torch.tensor([w, h], dtype=grid.dtype)
    learned = ((grid + 1) * size - 1) / 2
    s = module.scale
    xs = (torch.arange(s * w, dtype=grid.dtype) + 0.5) / s - 0.5
    ys = (torch.arange(s * h, dtype=grid.dtype) + 0.5) / s - 0.5
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand_as(learned)
    offsets = module.offsets(x[:1]).double()[0]  # [2G, sH, sW]: x offsets, then y
    magnitude = offsets.view(2, module.groups, s * h, s * w).norm(dim=0)
    return base.numpy(), learned.numpy(), magnitude


def collect_sampling(model, image: torch.Tensor) -> List[UpsamplerSampling]:
    """
    Run the backbone of a Detectron2 model on one image and read every DySample's input.

    Args:
        image (Tensor[3, H, W]): in the model's input format, 0-255 (as for inference).

    Returns:
        list[UpsamplerSampling], coarsest upsampler first (fpn_upsample5, 4, 3).
    """
    inputs = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: inputs.update({name: args[0]}))
        for name, module in model.backbone.named_modules() if isinstance(module, DySample)
    ]
    try:
        with torch.no_grad():
            images = model.preprocess_image([{"image": image}])
            model.backbone(images.tensor)
    finally:
        for handle in handles:
            handle.remove()
    if not inputs:
        raise ValueError(f"the model's backbone {type(model.backbone).__name__} has no DySample")
    modules = dict(model.backbone.named_modules())
    results = []
    with torch.no_grad():
        for name, x in inputs.items():
            base, learned, magnitude = _positions(modules[name], x)
            results.append(UpsamplerSampling(
                name=name, stride=images.tensor.shape[-1] / x.shape[-1],
                feature=x[0].float().mean(0).cpu().numpy(), base=base, learned=learned,
                offset_mean=magnitude.mean().item(), offset_max=magnitude.max().item(),
            ))
    return results


def choose_points(image_rgb: np.ndarray, num: int, seed: Optional[int] = None) -> np.ndarray:
    """
    Image positions (x, y) to inspect: with a `seed`, uniformly random; otherwise the
    strongest edges (smoothed gradient magnitude), greedily kept apart.

    Returns:
        ndarray[num, 2] (or fewer for featureless images).
    """
    h, w = image_rgb.shape[:2]
    margin = 0.05 * min(h, w)
    if seed is not None:
        rng = np.random.default_rng(seed)
        return rng.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], size=(num, 2))
    gray = image_rgb.astype(np.float64).mean(-1)
    gy, gx = np.gradient(gray)
    edges = np.hypot(gx, gy)
    k = max(1, int(min(h, w) / 64))  # box-smooth so single noisy pixels do not win
    edges = np.cumsum(np.cumsum(np.pad(edges, ((1, 0), (1, 0))), 0), 1)
    edges = edges[k:, k:] - edges[:-k, k:] - edges[k:, :-k] + edges[:-k, :-k]
    order = np.argsort(edges, axis=None)[::-1][: 20000]
    min_dist = 0.7 * min(h, w) / np.sqrt(num)
    chosen = []
    for flat in order:
        y, x = np.unravel_index(flat, edges.shape)
        y, x = y + k / 2, x + k / 2
        if edges.flat[flat] <= 0 or len(chosen) == num:
            break
        inside = margin <= x < w - margin and margin <= y < h - margin
        if inside and all(np.hypot(x - cx, y - cy) >= min_dist for cx, cy in chosen):
            chosen.append((x, y))
    return np.array(chosen, dtype=np.float64).reshape(-1, 2)


def _output_pixels(sampling: UpsamplerSampling, points: np.ndarray) -> np.ndarray:
    """Nearest output pixel (row, col) of the upsampler for each image point (x, y)."""
    out_stride = sampling.stride / sampling.scale
    cols = np.clip(np.round((points[:, 0] + 0.5) / out_stride - 0.5), 0,
                   sampling.base.shape[2] - 1)
    rows = np.clip(np.round((points[:, 1] + 0.5) / out_stride - 0.5), 0,
                   sampling.base.shape[1] - 1)
    return np.stack([rows, cols], 1).astype(int)


def _draw_positions(ax, base, learned, size=1.0):
    """base, learned: [P, G, 2]. Hollow: bilinear position; filled: DySample's; arrows."""
    for g in range(base.shape[1]):
        color = GROUP_COLORS[g % len(GROUP_COLORS)]
        b, p = base[:, g], learned[:, g]
        for edge, width in (("black", 2.4), ("white", 1.0)):  # visible on any background
            ax.scatter(b[:, 0], b[:, 1], s=60 * size, facecolors="none", edgecolors=edge,
                       linewidths=width)
        ax.quiver(b[:, 0], b[:, 1], p[:, 0] - b[:, 0], p[:, 1] - b[:, 1], color=color,
                  angles="xy", scale_units="xy", scale=1, width=0.012, headwidth=3,
                  headlength=4, headaxislength=3.5)
        ax.scatter(p[:, 0], p[:, 1], s=22 * size, color=color, edgecolors="black",
                   linewidths=0.4, label=f"group {g}", zorder=3)


def _show_feature(ax, feature, window=None):
    """Channel-mean features with pixel centres at integers and the pixel grid drawn."""
    h, w = feature.shape
    x0, x1, y0, y1 = window or (-0.5, w - 0.5, -0.5, h - 0.5)
    shown = feature[max(0, int(np.floor(y0 + 0.5))):max(1, int(np.ceil(y1 + 0.5))),
                    max(0, int(np.floor(x0 + 0.5))):max(1, int(np.ceil(x1 + 0.5)))]
    low, high = np.percentile(shown if shown.size else feature, [2, 98])  # local contrast
    ax.imshow(feature, cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    if x1 - x0 <= 40:
        ax.set_xticks(np.arange(np.ceil(x0 - 0.5) + 0.5, x1, 1), minor=True)
        ax.set_yticks(np.arange(np.ceil(y0 - 0.5) + 0.5, y1, 1), minor=True)
        ax.grid(which="minor", color="white", alpha=0.3, linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.tick_params(labelsize=6)


def draw_sampling(samplings: List[UpsamplerSampling], image_rgb: np.ndarray,
                  points: np.ndarray, path: str, title: str = "", dpi: int = 90) -> None:
    """
    Write a PNG with one row per upsampler. Column 1: the image under the upsampler's
    offset magnitude (mean over groups) and the numbered `points` (image pixels).
    Column 2: the input features (channel mean) with, for the output pixel nearest to each
    point, the bilinear position (hollow), DySample's position per group (filled) and the
    offset (arrow). Then one zoom per point: the same around its bilinear position, with
    the bilinear positions of the neighbouring output pixels (grey dots: the regular grid
    that zero offsets would sample) and the input pixel grid.
    """
    n_rows, n_cols = len(samplings), 2 + len(points)
    fig = Figure(figsize=(2.3 * n_cols, 2.5 * n_rows + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for row, s in enumerate(samplings):
        rows_cols = _output_pixels(s, points)
        base = s.base[:, rows_cols[:, 0], rows_cols[:, 1]].transpose(1, 0, 2)  # [P, G, 2]
        learned = s.learned[:, rows_cols[:, 0], rows_cols[:, 1]].transpose(1, 0, 2)
        magnitude = np.linalg.norm(s.learned - s.base, axis=-1).mean(0)  # [sH, sW]

        ax = axes[row, 0]
        ax.imshow(image_rgb)
        out_stride = s.stride / s.scale
        ext = (-0.5, magnitude.shape[1] * out_stride - 0.5,
               magnitude.shape[0] * out_stride - 0.5, -0.5)
        im = ax.imshow(magnitude, cmap="magma", alpha=0.55, extent=ext, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for i, (x, y) in enumerate(points):
            ax.text(x, y, str(i + 1), color="white", fontsize=8, ha="center", va="center",
                    bbox=dict(boxstyle="circle,pad=0.15", fc="black", alpha=0.6, lw=0))
        ax.set_xlim(-0.5, image_rgb.shape[1] - 0.5)
        ax.set_ylim(image_rgb.shape[0] - 0.5, -0.5)
        ax.set_axis_off()
        ax.set_title(f"{s.name} (x{s.scale}, stride {s.stride:g}):\n|offset| (input px)",
                     fontsize=8)

        ax = axes[row, 1]
        _show_feature(ax, s.feature)
        _draw_positions(ax, base, learned, size=0.4)
        ax.set_title(f"input {s.feature.shape[0]}x{s.feature.shape[1]}; |offset| mean "
                     f"{s.offset_mean:.3f},\nmax {s.offset_max:.3f} input px", fontsize=8)

        grid = s.base[0].reshape(-1, 2)
        for i in range(len(points)):
            ax = axes[row, 2 + i]
            cx, cy = base[i, 0]
            half = max(0.8, 1.3 * np.abs(learned[i] - base[i]).max())
            _show_feature(ax, s.feature, (cx - half, cx + half, cy - half, cy + half))
            near = (np.abs(grid - [cx, cy]) <= half).all(1)
            ax.scatter(grid[near, 0], grid[near, 1], s=9, color="0.7", edgecolors="black",
                       linewidths=0.4, zorder=2)
            _draw_positions(ax, base[i:i + 1], learned[i:i + 1])
            shift = np.linalg.norm(learned[i] - base[i], axis=-1).max()
            ax.set_title(f"point {i + 1}: max |offset| {shift:.3f}", fontsize=8)
    handles, labels = axes[0, 2 if len(points) else 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=len(labels))
    fig.suptitle(title + "\nhollow: bilinear (initial) position; filled: DySample position "
                 "of each channel group; arrow: learned offset; grey: bilinear grid",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=dpi)


def summary(samplings: List[UpsamplerSampling]) -> Dict[str, Dict[str, float]]:
    """{name: {"mean": px, "max": px}} of the offset magnitudes, in input-feature pixels."""
    return {s.name: {"mean": s.offset_mean, "max": s.offset_max} for s in samplings}
