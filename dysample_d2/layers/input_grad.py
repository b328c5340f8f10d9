"""
Input gradient of DySample's bilinear sampling as a sparse-dense matmul (CPU).

grid_sample's CPU backward scatters ``weight * grad_out`` into the input gradient one scalar at
a time, per channel: about 3/4 of its time (profiled at B=2, C=256, 100x168 -> 200x336). Read
backwards, the same sum is a gather with a fixed structure. With scale ``s``, output pixel
``(s*i + a, s*j + b)`` starts at ``(i, j)`` plus the bilinear position ``h_a = (a + 0.5)/s - 0.5``
in (-0.5, 0.5); while its (clamped) offset keeps it in its "regular" cell, its four corners are
rows ``i + floor(h_a) + u`` and columns ``j + floor(h_b) + v`` (u, v in {0, 1}). So input pixel
``(r, c)`` receives from exactly ``4 s^2`` output pixels, one per (a, b, u, v), at fixed
positions. That is a sparse matrix ``S^T`` of shape [H*W, sH*sW], the same pattern for every
image and group (cached per size), whose values are the output pixels' bilinear weights:
``grad_x[n] = grad_out[n] @ S_n`` is one MKL CSR matmul per (image, group), vectorized over
channels. Output pixels whose offsets leave their regular cell (rare for DySample's
quarter-pixel scope) get weight 0 there and are added exactly by ``index_put_`` with
accumulation; when they are many (> MAX_IRREGULAR) the caller falls back to grid_sample's
backward. Borders follow grid_sample's "border" padding: coordinates are clamped to
[0, size - 1] first; a clamped top/left pixel (regular row -1) puts its whole weight on row 0.

Exact (the same products and sums in another order); used only where torch has MKL's sparse
BLAS (Linux x86 builds), see `available`.
"""
import math
import sys
import warnings
from functools import lru_cache

import torch

__all__ = ["available", "sparse_input_grad", "MAX_IRREGULAR", "MIN_NUMEL"]

MAX_IRREGULAR = 0.25  # above this fraction of irregular pixels, grid_sample's backward is faster
# Smallest output gradient (elements) that takes this path. On idle cores it wins at every
# size (2x256x25x42 -> x2: 6.9 vs 13 ms, 2 threads); but it runs ~30 small parallel ops, each
# of which waits for the second thread when other jobs load the cores, where grid_sample's one
# fused op then wins below a few million elements: set e.g. 1 << 22 on such shared machines.
MIN_NUMEL = 0


def available(device: torch.device) -> bool:
    """MKL sparse BLAS backs torch's CPU CSR matmul only on Linux builds with MKL."""
    linux_mkl = sys.platform.startswith("linux") and torch.backends.mkl.is_available()
    return device.type == "cpu" and linux_mkl


def _floor_offsets(s: int):
    """floor(h_a) for each sub-pixel a: -1 left of the pixel centre, 0 from it on."""
    return [math.floor((a + 0.5) / s - 0.5) for a in range(s)]


@lru_cache(maxsize=32)
def _window(h: int, w: int, s: int, device: torch.device):
    """
    CSR pattern of S^T for one image and group: row q = r * W + c, 4 s^2 slots (a, b, u, v);
    column = the output pixel that reaches (r, c) through corner (u, v); ``take`` indexes its
    weight in the [sH * sW * 4 + 1] weight table (the last entry, 0, for slots off the image).
    """
    fl = torch.tensor(_floor_offsets(s), device=device)
    r = torch.arange(h, device=device).view(h, 1, 1, 1, 1, 1)
    c = torch.arange(w, device=device).view(1, w, 1, 1, 1, 1)
    a = torch.arange(s, device=device).view(1, 1, s, 1, 1, 1)
    b = a.view(1, 1, 1, s, 1, 1)
    u = torch.arange(2, device=device).view(1, 1, 1, 1, 2, 1)
    v = u.view(1, 1, 1, 1, 1, 2)
    i = r - fl.view(1, 1, s, 1, 1, 1) - u
    j = c - fl.view(1, 1, 1, s, 1, 1) - v
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    pixel = (s * i + a) * (s * w) + (s * j + b)
    col = torch.where(inside, pixel, torch.zeros_like(pixel)).flatten()
    take = torch.where(inside, pixel * 4 + u * 2 + v, s * s * h * w * 4).flatten()
    slots = 4 * s * s
    crow = torch.arange(0, h * w * slots + 1, slots, device=device)
    return crow.int(), col.int(), take


@lru_cache(maxsize=32)
def _origins(h: int, w: int, s: int, dtype: torch.dtype, device: torch.device):
    """
    Regular cell origin of every output pixel, [2, sH, sW] (x plane: j + floor(h_b), y plane:
    i + floor(h_a)), and the per-plane (scale, clamp bound) of grid_sample's unnormalization.
    """
    fl = torch.tensor(_floor_offsets(s), dtype=dtype, device=device)
    rx = (torch.arange(w, dtype=dtype, device=device).view(w, 1) + fl).view(1, s * w)
    ry = (torch.arange(h, dtype=dtype, device=device).view(h, 1) + fl).view(s * h, 1)
    origin = torch.stack(torch.broadcast_tensors(rx, ry))
    half = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=device).view(2, 1, 1)
    upper = torch.tensor([w - 1.0, h - 1.0], dtype=dtype, device=device).view(2, 1, 1)
    return origin, half, upper


def sparse_input_grad(grad_out: torch.Tensor, grid_planar: torch.Tensor, h: int, w: int, s: int):
    """
    Args:
        grad_out (Tensor[N, Cg, sH, sW]): gradient of the sampled output, contiguous.
        grid_planar (Tensor[N, 2, sH, sW]): the normalized sampling grid (x, y planes).

    Returns:
        Tensor[N, Cg, H, W], the input gradient of grid_sample(bilinear, border,
        align_corners=False), or None when too many pixels leave their regular cell.
    """
    n, cg = grad_out.shape[:2]
    p = s * s * h * w
    origin, half, upper = _origins(h, w, s, grid_planar.dtype, grid_planar.device)
    # source coordinates as grid_sample computes them, clamped to [0, size - 1] ("border")
    coords = torch.addcmul(half - 0.5, grid_planar, half).clamp_(torch.zeros_like(upper), upper)
    # position in the regular cell, per axis; the pixel is regular when 0 <= t <= 1 on both
    # (t = 1 is the next row/column with weight 1: the same interpolation; a clamped pixel of
    # regular row -1 has t = 1 exactly, all its weight on row 0)
    t = coords - origin
    t_in = t.clamp(0, 1)
    irregular = (t != t_in).any(1)  # [N, sH, sW]
    where_irregular = irregular.view(n, p).nonzero()
    if where_irregular.shape[0] > MAX_IRREGULAR * n * p:
        return None
    pairs = torch.stack([1 - t_in, t_in], -1)  # [N, x|y, sH, sW, (1 - t, t)]
    table = t.new_empty(n, p * 4 + 1)  # bilinear weights in (pixel, corner) order, then a 0
    table[:, -1] = 0
    corners = table[:, :-1].view(n, s * h, s * w, 2, 2)
    torch.mul(pairs[:, 1].unsqueeze(-1), pairs[:, 0].unsqueeze(-2), out=corners)
    corners.masked_fill_(irregular[..., None, None], 0)
    crow, col, take = _window(h, w, s, grad_out.device)
    values = table.gather(1, take.view(1, -1).expand(n, -1))
    if where_irregular.shape[0]:
        extra = _irregular_terms(grad_out, where_irregular, coords, h, w)
    del t, t_in, pairs, table, corners, coords, irregular  # lower the peak of the loop
    flat = grad_out.view(n, cg, p)
    grad_x = grad_out.new_empty(n, cg, h * w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        for i in range(n):
            st = torch.sparse_csr_tensor(crow, col, values[i], (h * w, p))
            # column-major result = grad_x[i] row-major; beta=0 ignores the empty buffer
            grad_x[i].t().addmm_(st, flat[i].t(), beta=0)
    if where_irregular.shape[0]:
        indices, terms = extra
        grad_x.permute(0, 2, 1).index_put_(indices, terms, accumulate=True)
    return grad_x.view(n, cg, h, w)


def _irregular_terms(grad_out, irregular, coords, h, w):
    """
    Exact bilinear terms of the few output pixels outside their regular cell: ((image,
    input pixel) indices, [4K, Cg] values) to add to the input gradient.
    """
    n_idx, p_idx = irregular.unbind(1)
    xy = coords.flatten(2)[n_idx, :, p_idx]  # [K, 2] clamped source coordinates
    finite = torch.isfinite(xy).all(1)  # NaN positions (diverged offsets) read nothing
    if not bool(finite.all()):
        n_idx, p_idx, xy = n_idx[finite], p_idx[finite], xy[finite]
    x0, y0 = xy.floor().long().unbind(1)
    fx, fy = (xy - xy.floor()).unbind(1)
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)  # weight 0 when clamped
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], 1)
    targets = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], 1)
    flat = grad_out.flatten(2)
    values = flat[n_idx, :, p_idx].unsqueeze(1) * weights.unsqueeze(2).to(flat.dtype)
    return (n_idx.repeat_interleave(4), targets.flatten()), values.flatten(0, 1)
