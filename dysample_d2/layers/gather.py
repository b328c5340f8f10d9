"""
DySample's bilinear sampling written as gathers and arithmetic, for graphs without GridSample.

``sample_gather(x, offset)`` reads ``x`` where bilinear resizing to the offset's size reads it
(align_corners=False), moved by ``offset`` input pixels: what DySample's ``grid_sample``
(padding "border") reads at ``base + offset * 2 / size``, equal within rounding, with the same
gradients (none through a clamped or border coordinate, as grid_sample's).

Each position is held as an integer pixel plus a small fraction: the pixel comes from integer
arithmetic on the output index, the fraction from the learned offset. A low-precision runtime
(bfloat16 keeps 8 significant bits) then rounds only the fraction, where a normalised grid
value, or a pixel coordinate in the hundreds, would move by a sizeable part of a pixel.

It uses only Range, integer and elementwise ops, Floor, Where, Gather and Cast, so DySample
exports to ONNX at opsets 11-20 (GridSample arrived in opset 16). Layout: the input is viewed
channels-last, ``[N * H * W, C]``, and each of the four corners is one row gather over it:
the index tensors hold one entry per output pixel, not per channel. Sizes are read from
tensor shapes, so a traced graph stays dynamic.
"""
import torch

__all__ = ["sample_gather"]

_FAR = 2.0**20  # |fractions| beyond this (and NaN) are out of any image: clamped


def _axis(offset: torch.Tensor, size, out_size, shape):
    """
    Corners and weights along one axis. Output index ``o`` of ``out_size`` reads input
    coordinate ``(o + 0.5) * size / out_size - 0.5 + offset``, clamped to [0, size - 1].

    Returns:
        (i0, i1, frac): integer corners and the weight of i1 (the weight of i0 is 1 - frac).
    """
    o = torch.arange(out_size, device=offset.device).view(shape)
    scaled = (2 * o + 1) * size  # the coordinate + 0.5, times 2 * out_size: an integer
    pixel = torch.div(scaled, 2 * out_size, rounding_mode="trunc")
    rest = scaled - pixel * (2 * out_size)  # in [0, 2 * out_size)
    t = rest.to(offset.dtype) / (2 * out_size) - 0.5 + offset
    t = torch.where(t > -_FAR, t, -_FAR)  # NaN too: it reads the first pixel
    t = torch.where(t < _FAR, t, _FAR)
    whole = t.floor()
    frac = t - whole
    i0 = pixel + whole.long()
    last = size - 1
    # the coordinate strictly inside (0, last): elsewhere clamped, with no gradient
    inside = ((i0 > 0) | ((i0 == 0) & (frac > 0))) & (i0 < last)
    frac = torch.where(inside, frac, torch.zeros_like(frac))
    i0 = torch.where(i0 > 0, i0, torch.zeros_like(i0))
    i0 = torch.where(i0 < last, i0, torch.zeros_like(i0) + last)
    i1 = torch.where(i0 < last, i0 + 1, i0)
    return i0, i1, frac


def sample_gather(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """
    Args:
        x (Tensor[N, C, H, W])
        offset (Tensor[N, Ho, Wo, 2]): (x, y) offsets in input pixels from the positions
            bilinear resizing to Ho x Wo reads; same dtype as x.

    Returns:
        Tensor[N, C, Ho, Wo]: bilinear samples, padding "border".
    """
    n, c, h, w = x.shape
    out_h, out_w = offset.shape[1], offset.shape[2]
    x0, x1, fx = _axis(offset[..., 0], w, out_w, (1, 1, -1))  # [N, Ho, Wo]
    y0, y1, fy = _axis(offset[..., 1], h, out_h, (1, -1, 1))
    image = torch.arange(n, device=x.device).view(-1, 1, 1) * h  # first row of each image
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # [N * H * W, C]

    def corner(yi, xi, weight):
        values = rows.index_select(0, ((image + yi) * w + xi).flatten())  # [N * Ho * Wo, C]
        return values * weight.reshape(-1, 1)

    gx, gy = 1 - fx, 1 - fy
    out = (corner(y0, x0, gx * gy) + corner(y0, x1, fx * gy)
           + corner(y1, x0, gx * fy) + corner(y1, x1, fx * fy))
    return out.view(n, out_h, out_w, c).permute(0, 3, 1, 2).contiguous()
