"""Shared by the DySample layer tests: every sampler, every device, random weights, the
float64 oracle."""
import contextlib

import pytest
import torch

from dysample_d2.layers import SAMPLERS, native, sampler
from authors_dysample import AuthorsDySample

# CUDA where torch has it, marked `cuda` (`pytest -m cuda` selects it); no parameter without it
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.cuda)]
                     if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """The test body runs on the CPU, and on CUDA where torch has it."""
    return torch.device(request.param)


@pytest.fixture(params=SAMPLERS)
def each_sampler(request):
    """The test body runs once per sampler ("auto" is the compiled kernel on eager CPU)."""
    on_cpu = request.node.callspec.params.get("device", "cpu") == "cpu"
    if request.param == "auto" and on_cpu:
        assert native.load() is not None, native.status()  # scripts/install.sh builds it
    with sampler(request.param):
        yield request.param


@contextlib.contextmanager
def deterministic_algorithms(enabled=True):
    """torch.use_deterministic_algorithms(enabled) inside the block, the previous mode after."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) inside the test, the previous mode after."""
    with deterministic_algorithms():
        yield


def zero_offsets(module):
    """DySample with its offset conv zeroed: plain bilinear resizing."""
    with torch.no_grad():
        module.offset.weight.zero_()
        module.offset.bias.zero_()
    return module


def randomize(module, std=0.5, seed=0):
    """Random weights (and scopes) so that sampling leaves the bilinear grid."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def exact_reference(module):
    """The authors' formulation with the module's weights, in float64 with exact positions."""
    reference = AuthorsDySample(
        module.in_channels, module.scale, module.style, module.groups, module.dyscope,
        module.scope_bias,
    )
    # the authors' state dict names and shapes are ours: the weights load strictly
    reference.load_state_dict(module.state_dict(), strict=True)
    reference.double()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reference.init_pos = reference._init_pos()  # exact positions, not float32-rounded
    finally:
        torch.set_default_dtype(default_dtype)
    return reference


def outputs_and_grads(module, x, grad, **kwargs):
    """module(x, **kwargs) and the gradients of <output, grad> for x and every parameter."""
    x = x.detach().requires_grad_()
    out = module(x, **kwargs)
    return out, torch.autograd.grad(out, [x] + list(module.parameters()), grad)
