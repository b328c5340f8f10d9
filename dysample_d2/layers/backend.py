"""
Which sampler DySample runs, and the two rules every sampler shares.

Samplers:

* ``"auto"`` (default): on CPU in eager mode the compiled kernel (``sampling.py``) where it
  builds; everywhere else (CUDA, tracing, export, ``torch.compile``, no compiler) the reference
  formulation, a 1x1 conv and ``F.grid_sample`` (its gather form when training on CUDA with
  deterministic algorithms: see below).
* ``"gridsample"``: the reference formulation everywhere, eager CPU included, so that eager
  results can be compared with an export on the same arithmetic.
* ``"gather"``: the reference formulation with the bilinear sampling written as gathers and
  arithmetic (``gather.py``): exports to ONNX without GridSample (opsets below 16, runtimes
  that lack it); equal to ``grid_sample`` within float32 rounding.

The environment variable ``DYSAMPLE_D2_SAMPLER`` sets the default; ``with sampler(name):``
overrides it for a block.

Deterministic training: under ``torch.use_deterministic_algorithms(True)`` CUDA's
``grid_sample`` backward (``grid_sampler_2d_backward_cuda``) raises, having no deterministic
implementation. ``sampler_for(x)`` then turns "auto" into "gather" for a CUDA input while
autograd records (not under ``torch.no_grad()``/``inference_mode``, not while tracing or
exporting): the gather sampler's backward is ``index_select``'s, an ``index_add_`` that PyTorch
runs deterministically on CUDA in that mode, plus elementwise ops. It logs that choice once.
CPU inputs keep "auto" (the compiled kernel's backward is deterministic: no atomics), and an
explicit "gridsample" stays grid_sample, whose CUDA backward then raises PyTorch's error.
"""
import contextlib
import logging
import os
from typing import Optional

import torch

__all__ = ["SAMPLERS", "ENV_VAR", "sampler", "active_sampler", "sampler_for", "plain_ops",
           "tracing", "grid_dtype"]

SAMPLERS = ("auto", "gridsample", "gather")
ENV_VAR = "DYSAMPLE_D2_SAMPLER"
_override: Optional[str] = None
logger = logging.getLogger(__name__)
_deterministic_choice_logged = False


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


def sampler_for(x: torch.Tensor) -> str:
    """
    The sampler DySample runs for input ``x``: `active_sampler`, except that "auto" becomes
    "gather" where the reference formulation's backward would raise under
    ``torch.use_deterministic_algorithms(True)``: a CUDA input, autograd recording, not tracing
    or exporting (see the module doc). Otherwise "auto" stays "auto" (the compiled kernel on
    eager CPU, grid_sample elsewhere).
    """
    name = active_sampler()
    if name == "auto" and deterministic_backward_needed(x):
        _log_deterministic_choice()
        return "gather"
    return name


def deterministic_backward_needed(x: torch.Tensor) -> bool:
    """Whether a grid_sample backward on ``x`` would hit CUDA's nondeterministic kernel while
    deterministic algorithms are required (``warn_only=True`` included)."""
    return (x.device.type == "cuda" and torch.are_deterministic_algorithms_enabled()
            and torch.is_grad_enabled() and not tracing())


def _log_deterministic_choice() -> None:
    global _deterministic_choice_logged
    if not _deterministic_choice_logged:
        _deterministic_choice_logged = True
        logger.info(
            "DySample: deterministic algorithms are on and CUDA's grid_sample backward has no "
            "deterministic implementation: sampler 'auto' runs the gather sampler (gather.py, "
            "index_select/index_add_) on CUDA while autograd records; set sampler 'gridsample' "
            "to keep grid_sample (its backward then raises)"
        )


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
