"""
Which sampler DySample runs, and the two rules every sampler shares.

Samplers:

* ``"auto"`` (default): on CPU in eager mode the compiled kernel (``sampling.py``) where it
  builds; everywhere else (CUDA, tracing, export, ``torch.compile``, no compiler) the reference
  formulation, a 1x1 conv and ``F.grid_sample``.
* ``"gridsample"``: the reference formulation everywhere, eager CPU included, so that eager
  results can be compared with an export on the same arithmetic.
* ``"gather"``: the reference formulation with the bilinear sampling written as gathers and
  arithmetic (``gather.py``): exports to ONNX without GridSample (opsets below 16, runtimes
  that lack it); equal to ``grid_sample`` within float32 rounding.

The environment variable ``DYSAMPLE_D2_SAMPLER`` sets the default; ``with sampler(name):``
overrides it for a block.
"""
import contextlib
import os
from typing import Optional

import torch

__all__ = ["SAMPLERS", "ENV_VAR", "sampler", "active_sampler", "plain_ops", "tracing",
           "grid_dtype"]

SAMPLERS = ("auto", "gridsample", "gather")
ENV_VAR = "DYSAMPLE_D2_SAMPLER"
_override: Optional[str] = None


def _checked(name, source: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"{source}: DySample sampler must be one of {', '.join(SAMPLERS)}, "
                         f"got {name!r}")
    return name


def active_sampler() -> str:
    """The sampler in use: the innermost ``sampler(...)`` block's, else $DYSAMPLE_D2_SAMPLER's."""
    if _override is not None:
        return _override
    return _checked(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextlib.contextmanager
def sampler(name: str):
    """``with sampler("gridsample"):`` runs DySample's reference formulation inside the block."""
    global _override
    previous, _override = _override, _checked(name, "sampler()")
    try:
        yield
    finally:
        _override = previous


def tracing() -> bool:
    """torch.jit tracing or scripting, or ONNX export: shapes must come from tensors."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    is_onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", None)
    return is_onnx_exporting is not None and is_onnx_exporting()


def plain_ops() -> bool:
    """
    Whether only standard ops may run (tracing, scripting, ONNX export, torch.compile and
    torch.export): no compiled kernel, no Python-side caches.
    """
    if tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def grid_dtype(dtype: torch.dtype) -> torch.dtype:
    """
    Sampling grids and sampling run in float32 (float64 for float64 inputs) whatever the input
    dtype: a half-precision grid is off by a sizeable fraction of a pixel at large coordinates.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32
