import functools


@functools.lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """
    Whether detectron2's compiled extension is installed. False when detectron2 came with
    the stand-in ``_C`` that scripts/install writes (no compiled ops; importing it also
    makes detectron2's compiled-only ops fail with a message that names them).
    """
    try:
        import detectron2._C as C
    except ImportError:
        return False
    return not getattr(C, "IS_STANDIN", False)
