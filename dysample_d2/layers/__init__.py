from .backend import SAMPLERS, active_sampler, sampler
from .dysample import DySample
from .gather import grid_sample_gather

__all__ = ["DySample", "SAMPLERS", "active_sampler", "sampler", "grid_sample_gather"]
