from .dysample import DySample

__all__ = ["DySample"]
