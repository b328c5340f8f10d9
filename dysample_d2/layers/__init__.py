from .backend import SAMPLERS, active_sampler, sampler
from .dysample import DySample, check_dysample_arguments
from .gather import sample_gather
from .upsamplers import UPSAMPLERS, UPSAMPLER_OPTIONS, build_upsampler, check_upsampler_arguments

__all__ = ["DySample", "check_dysample_arguments", "SAMPLERS", "active_sampler", "sampler",
           "sample_gather", "UPSAMPLERS", "UPSAMPLER_OPTIONS", "build_upsampler",
           "check_upsampler_arguments"]
