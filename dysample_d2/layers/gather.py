"""
Bilinear sampling written as gathers and arithmetic, for graphs without GridSample.

``grid_sample_gather(x, grid)`` equals ``F.grid_sample(x, grid, mode="bilinear",
padding_mode="border", align_corners=False)`` within rounding: the same unnormalization
``((g + 1) * size - 1) / 2``, the same clamp to ``[0, size - 1]`` (and no gradient through a
clamped or border coordinate, as grid_sample), the same corner weights and their sum in the
same order. It uses only Floor, Clip, Where, Gather, Cast and elementwise ops, so DySample
exports to ONNX at opsets 11-20 (GridSample arrived in opset 16) and runs in runtimes that
lack GridSample or run it off their accelerators.

Layout: the input is viewed channels-last, ``[N * H * W, C]``, and each of the four corners is
one row gather over it (ONNX Gather on axis 0): the index tensors hold one entry per output
pixel, not per channel. Sizes are read from tensor shapes, so a traced graph stays dynamic.
"""
import torch

__all__ = ["grid_sample_gather"]


def _source_coordinate(g: torch.Tensor, size) -> torch.Tensor:
    """grid_sample's input coordinate of normalized ``g``, clamped to [0, size - 1] (border);
    a clamped coordinate, or one exactly on the border, passes no gradient, as grid_sample's.
    A NaN coordinate becomes 0 (it reads the first pixel, never outside the input)."""
    coord = ((g + 1) * size - 1) / 2
    coord = torch.where(coord > 0, coord, torch.zeros_like(coord))
    return torch.where(coord < size - 1, coord, coord.detach().clamp(max=size - 1))


def grid_sample_gather(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    Args:
        x (Tensor[N, C, H, W])
        grid (Tensor[N, Ho, Wo, 2]): normalized (x, y) positions, as for ``F.grid_sample``;
            same dtype as x.

    Returns:
        Tensor[N, C, Ho, Wo]: bilinear samples, padding "border", align_corners=False.
    """
    n, c, h, w = x.shape
    ix = _source_coordinate(grid[..., 0], w)  # [N, Ho, Wo]
    iy = _source_coordinate(grid[..., 1], h)
    x0f, y0f = ix.floor(), iy.floor()
    # corner weights as grid_sample forms them: (next corner - coordinate), (coordinate - corner)
    wx0, wx1 = (x0f + 1) - ix, ix - x0f
    wy0, wy1 = (y0f + 1) - iy, iy - y0f
    # integer corners (clamped as floats: ONNX clips integers only from opset 12); a corner
    # past the last row or column has weight 0
    x0, x1 = x0f.long(), (x0f + 1).clamp(max=w - 1).long()
    y0, y1 = y0f.long(), (y0f + 1).clamp(max=h - 1).long()
    image = torch.arange(n, device=x.device).view(-1, 1, 1) * h  # first row of each image
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # [N * H * W, C]

    def corner(yi, xi, weight):
        values = rows.index_select(0, ((image + yi) * w + xi).flatten())  # [N * Ho * Wo, C]
        return values * weight.reshape(-1, 1)

    out = (corner(y0, x0, wx0 * wy0) + corner(y0, x1, wx1 * wy0)
           + corner(y1, x0, wx0 * wy1) + corner(y1, x1, wx1 * wy1))
    return out.view(n, grid.shape[1], grid.shape[2], c).permute(0, 3, 1, 2).contiguous()
