"""
The optional compiled CPU sampling kernel (``csrc/`` beside this file: forward, backward).

Built on first use with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja), then
cached under ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; an
installation step can build it ahead of first use by calling :func:`status`. Where it cannot
be built, DySample runs its reference formulation (grid_sample, same results) and says why
once. Which sampler runs, and how to ask for another (which then never builds the kernel):
backend.py.
"""
import glob
import hashlib
import logging
import os
import sys
import threading

__all__ = ["load", "status"]

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCES = [os.path.join(CSRC, f"sample_{part}_cpu.cpp") for part in ("forward", "backward")]
logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state = {"tried": False, "module": None, "reason": None}


def _build(verbose: bool):
    # importing cpp_extension warns about CUDA_HOME on CPU-only machines: irrelevant to a CPU op
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_logger.setLevel(level)

    # torch looks for `ninja` on PATH; in a virtualenv called by its full path it lies next to
    # the interpreter.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # torch rebuilds when the sources or flags change, but does not look at included headers:
    # a digest of every file in csrc/ goes into the flags.
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(CSRC, "*"))):
        with open(path, "rb") as f:
            digest.update(f.read())
    return cpp_extension.load(
        name="dysample_d2_sampling_cpu",
        sources=SOURCES,
        # -fopenmp: at::parallel_for runs torch's threads
        extra_cflags=["-O3", "-fopenmp", f"-DDYSAMPLE_CSRC_DIGEST={digest.hexdigest()[:16]}"],
        extra_ldflags=["-fopenmp"],
        verbose=verbose,
    )


def load(verbose: bool = False):
    """The compiled module, or None (then `status()` says why)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        try:
            logger.info("dysample_d2: loading the compiled CPU sampling kernel (the first "
                        "time it is built: about a minute)")
            _state["module"] = _build(verbose)
        except Exception as e:  # no compiler, no ninja, read-only cache, ...
            first_line = (str(e).strip().splitlines() or [""])[0]
            _state["reason"] = f"could not be built ({type(e).__name__}: {first_line})"
            logger.warning(
                "dysample_d2: compiled CPU sampling kernel %s; DySample uses grid_sample "
                "(same results, slower on CPU)", _state["reason"])
        _state["tried"] = True
    return _state["module"]


def status() -> str:
    """One line: whether the compiled kernel is built, and which sampler DySample runs."""
    from .backend import ENV_VAR, active_sampler  # backend asks this module for the kernel

    module = load()
    if module is not None:
        kernel = f"compiled CPU sampling kernel: loaded, {module.kernel_isa()} ({module.__file__})"
    else:
        kernel = f"compiled CPU sampling kernel: not used, {_state['reason']}"
    name = active_sampler()
    where = {
        "auto": ("the kernel on eager CPU, grid_sample elsewhere" if module is not None
                 else "grid_sample everywhere"),
        "gridsample": "grid_sample everywhere",
        "gather": "gathers everywhere (no grid_sample)",
    }[name]
    return f"{kernel}; DySample sampler {name!r} ({ENV_VAR}): {where}"
