from .backend import SAMPLERS, active_sampler, sampler
from .dysample import DEFAULTS, DySample, check_dysample_arguments
from .gather import sample_gather
from .upsamplers import (UPSAMPLERS, UPSAMPLER_OPTIONS, build_upsampler, check_upsampler_arguments,
                         neck_upsampler_options)

__all__ = ["DySample", "DEFAULTS", "check_dysample_arguments", "SAMPLERS", "active_sampler", "sampler", "sample_gather"]
