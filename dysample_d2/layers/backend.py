"""
Which sampler DySample runs: ``sampler_for(x)``, the one place it is decided.

``sampler_for(x)`` returns one of:

* ``"kernel"``: the compiled CPU kernel (``sampling.py``), for a CPU input in eager mode where
  the kernel builds (``native.py``);
* ``"gridsample"``: the reference formulation, a 1x1 conv and ``F.grid_sample``; what CUDA,
  tracing, ONNX export, ``torch.compile`` and ``torch.export`` run, and eager CPU without a
  compiler;
* ``"gather"``: the reference formulation with the bilinear sampling written as gathers and
  arithmetic (``gather.py``): exports to ONNX without GridSample (opsets below 16, runtimes
  that lack it); equal to ``grid_sample`` within float32 rounding.

It starts from the sampler asked for, one of `SAMPLERS`: ``with sampler(name):`` in code (the
innermost block), else the environment variable ``DYSAMPLE_D2_SAMPLER`` for a command, else
``"auto"``. An explicit "gridsample" or "gather" is kept everywhere, eager CPU included (so
that eager results can be compared with an export on the same arithmetic). "auto" becomes:

1. "gather" for a CUDA input under ``torch.use_deterministic_algorithms(True)`` (``warn_only``
   too) while autograd records (not under ``torch.no_grad()``/``inference_mode``, not while
   tracing): CUDA's ``grid_sample`` backward (``grid_sampler_2d_backward_cuda``) has no
   deterministic implementation and raises; the gather sampler's backward is
   ``index_select``'s, an ``index_add_`` that PyTorch runs deterministically on CUDA in that
   mode, plus elementwise ops. It logs that choice once. An explicit "gridsample" stays
   grid_sample, whose CUDA backward then raises PyTorch's error;
2. "kernel" for a CPU input in eager mode (not tracing, not compiling) where the kernel builds
   (its backward is deterministic: no atomics);
3. "gridsample" everywhere else.

``tracing_mode()`` says how the forward runs: "trace" (torch.jit tracing or scripting, ONNX
export: sizes are the tracer's tensors), "compile" (``torch.compile``, ``torch.export``: sizes
may be symbolic) or "eager". Both graph modes run standard ops only, with no Python-side
cache.
"""
import contextlib
import logging
import os
from typing import Optional

import torch

from . import native

__all__ = ["SAMPLERS", "ENV_VAR", "sampler", "active_sampler", "sampler_for", "tracing_mode",
           "grid_dtype"]

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


@contextlib.contextmanager
def sampler(name: str):
    """``with sampler("gridsample"):`` asks for that sampler inside the block (see the module
    doc); blocks nest, the innermost wins, and each restores the previous on exit."""
    global _override
    previous, _override = _override, _checked(name, "sampler()")
    try:
        yield
    finally:
        _override = previous


def active_sampler() -> str:
    """The sampler asked for, one of `SAMPLERS`: the innermost ``sampler(...)`` block's, else
    $DYSAMPLE_D2_SAMPLER's, else "auto"; `sampler_for` turns it into the one that runs."""
    if _override is not None:
        return _override
    return _checked(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


def sampler_for(x: torch.Tensor) -> str:
    """The sampler DySample runs for input ``x``: "kernel", "gridsample" or "gather" (see the
    module doc)."""
    name = active_sampler()
    if name != "auto":
        return name
    mode = tracing_mode()
    if (x.device.type == "cuda" and torch.are_deterministic_algorithms_enabled()
            and torch.is_grad_enabled() and mode != "trace"):
        _log_deterministic_choice()
        return "gather"
    if x.device.type == "cpu" and mode == "eager" and native.load() is not None:
        return "kernel"
    return "gridsample"


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


def tracing_mode() -> str:
    """
    "trace": torch.jit tracing or scripting, or ONNX export (sizes come from tensors);
    "compile": torch.compile or torch.export (sizes may be symbolic); else "eager".
    """
    onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", lambda: False)
    if torch.jit.is_tracing() or torch.jit.is_scripting() or onnx_exporting():
        return "trace"
    compiler = getattr(torch, "compiler", None)
    return "compile" if compiler is not None and compiler.is_compiling() else "eager"


def grid_dtype(dtype: torch.dtype) -> torch.dtype:
    """
    Sampling grids and sampling run in float32 (float64 for float64 inputs) whatever the input
    dtype: a half-precision grid is off by a sizeable fraction of a pixel at large coordinates.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32
