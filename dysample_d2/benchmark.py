"""
What the benchmark scripts (scripts/benchmark_*.py) measure with, kept in the package so the
tests check the same code: the profiler events of an FPN's top-down steps, and DySample-like
sampling grids.
"""
import statistics

import torch

from .layers.dysample import _base_grid

__all__ = ["UPSAMPLING_EVENTS", "is_top_down_sum", "upsampling_ms", "dysample_like_grid",
           "SMOKE_RUN"]

# printed and written by every --quick run
SMOKE_RUN = "smoke run: toy shapes, ratios are not results"

# Profiler events of the FPN's top-down steps on CPU (eager): nearest interpolation and the sum
# with the lateral features (aten::add of two [B, C_fpn, H, W]), DySample's kernel Function
# (its CPU total holds its matmul, grid, sampling and the sum, done in place) and their
# backward nodes.
UPSAMPLING_EVENTS = ("aten::upsample_nearest2d", "aten::upsample_nearest2d_backward",
                     "DySampleFunction", "DySampleFunctionBackward")


def is_top_down_sum(event, channels) -> bool:
    """aten::add of two same-shape [B, channels, H, W] tensors: the FPN's lateral + top-down
    (the backbone's other adds are in place, ResNet's, or add a [1, C, 1, 1] bias, FrozenBN's)."""
    shapes = event.input_shapes
    return (event.key == "aten::add" and len(shapes) >= 2 and len(shapes[0]) == 4
            and shapes[0] == shapes[1] and shapes[0][1] == channels)


def upsampling_ms(fn, runs, channels) -> float:
    """
    CPU time (ms) that `fn` spends in the FPN's top-down upsampling and sums, from
    torch.profiler: the median of `runs` runs, each profiled on its own (one page-faulting run
    moves a mean). channels: the FPN's output channels.
    """
    from torch.profiler import ProfilerActivity, profile

    totals = []
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        events = prof.key_averages(group_by_input_shape=True)
        totals.append(sum(e.cpu_time_total for e in events
                          if e.key in UPSAMPLING_EVENTS or is_top_down_sum(e, channels)) / 1e3)
    return statistics.median(totals)


def dysample_like_grid(n, h, w, scale, offset_px, dtype, seed=0):
    """Planar grid [N, 2, sH, sW] (the kernel's layout): bilinear positions plus random
    offsets of about offset_px input pixels."""
    gen = torch.Generator().manual_seed(seed)
    base = _base_grid(scale * h, scale * w, torch.device("cpu"), dtype)
    step = torch.tensor([2 / w, 2 / h], dtype=dtype)
    offsets = torch.randn(n, scale * h, scale * w, 2, dtype=dtype, generator=gen)
    return (base + offsets * offset_px * step).permute(0, 3, 1, 2).contiguous()
