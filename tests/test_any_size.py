"""
DySample at output sizes other than s*H x s*W, and DySample-FPN at input sizes that are not a
multiple of the FPN's largest stride (Detectron2's FPN needs them padded to one).
"""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone

from dysample_d2 import DySample
from dysample_d2.layers import sampler

from helpers import load_config
from sampler_helpers import (  # noqa: F401  (device, each_sampler: fixtures)
    device, each_sampler, outputs_and_grads, randomize, zero_offsets,
)

# (input H, W) -> output sizes: exact, one row short, one column short, both
SIZES = [(14, 18), (13, 18), (14, 17), (13, 17)]


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("size", SIZES + [(19, 25)])  # (19, 25): scale 3 only
def test_zero_offsets_equal_interpolate_to_size(device, each_sampler, style, dyscope, size):
    scale = 3 if size == (19, 25) else 2
    module = zero_offsets(DySample(4 * scale**2, scale, style, 4, dyscope)).double().to(device)
    x = torch.randn(2, 4 * scale**2, 7, 9, dtype=torch.float64, device=device)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = module(x, size=size)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("style, dyscope", [("lp", False), ("pl", True), ("lp", True)])
@pytest.mark.parametrize("size", SIZES[1:])
def test_every_sampler_computes_the_same_float64(device, each_sampler, style, dyscope, size):
    """Offsets predicted at s*H x s*W and cropped, grid of the requested size: every sampler on
    every device (the kernel samples s*H x s*W and crops) equals grid_sample's result on the
    CPU, as size= and as add_to."""
    module = randomize(DySample(16, 2, style, 4, dyscope), std=0.3).double()
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    grad = torch.randn(2, 16, *size, dtype=torch.float64)
    with sampler("gridsample"):
        ref_out, ref_grads = outputs_and_grads(module, x, grad, size=size)
        full = module(x)
    module.to(device)
    out, grads = outputs_and_grads(module, x.to(device), grad.to(device), size=size)
    assert out.device.type == device.type and out.shape == (2, 16, *size)
    assert (out.cpu() - ref_out).abs().max().item() < 1e-9
    for g, r in zip(grads, ref_grads):
        assert (g.cpu() - r).abs().max().item() < 1e-9
    base = torch.randn(2, 16, *size, dtype=torch.float64)
    summed = module(x.to(device), add_to=base.to(device, copy=True))
    assert (summed.cpu() - (base + ref_out)).abs().max().item() < 1e-9
    # the crop moves every position a little towards interpolate(size)'s: not full[:Ho, :Wo]
    assert (out.cpu() - full[..., : size[0], : size[1]]).abs().max().item() > 1e-3


def test_exact_multiple_size_is_the_default_bit_for_bit(each_sampler):
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3)
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(module(x, size=(14, 18)), module(x))


def test_gradcheck_at_a_non_multiple_size(each_sampler):
    module = randomize(DySample(8, 2, "lp", 2, dyscope=True), std=0.3).double()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: module(x, size=(5, 7)), (x,), eps=1e-6, atol=1e-5)


def test_add_to_sets_the_size_and_sums_in_place(each_sampler):
    module = randomize(DySample(16, 2, "pl", 4, True), std=0.3)
    x = torch.randn(2, 16, 7, 9, requires_grad=True)
    base = torch.randn(2, 16, 13, 17, requires_grad=True)
    grad = torch.randn(2, 16, 13, 17)
    inputs = [x, base] + list(module.parameters())
    expected = base * 1 + module(x, size=(13, 17))
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    add_to = base * 1
    out = module(x, add_to=add_to)
    assert out is add_to and torch.equal(out, expected)
    for g, e in zip(torch.autograd.grad(out, inputs, grad), expected_grads):
        assert torch.equal(g, e)


class Traced(torch.nn.Module):
    """`call(module, *inputs)` as a module, for torch.jit.trace."""

    def __init__(self, module, call):
        super().__init__()
        self.module, self.call = module, call

    def forward(self, *inputs):
        return self.call(self.module, *inputs)


def test_trace_with_add_to_follows_its_size(each_sampler):
    """One trace serves exact multiples and non-multiples: the crop and the grid come from
    add_to's traced shape."""
    module = randomize(DySample(8, 2, "lp", 2, dyscope=True), std=0.1).eval()
    traced = torch.jit.trace(Traced(module, lambda m, x, t: m(x, add_to=t * 1)),
                             (torch.randn(1, 8, 6, 6), torch.randn(1, 8, 11, 12)),
                             check_trace=False)
    for h, w, oh, ow in [(6, 6, 11, 12), (5, 9, 10, 18), (7, 4, 13, 7)]:
        x, t = torch.randn(1, 8, h, w), torch.randn(1, 8, oh, ow)
        assert torch.allclose(traced(x, t), module(x, add_to=t * 1), atol=1e-5)


# DySample-FPN at any input size

DYSAMPLE_FPN = "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"
NEAREST_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
ODD = (100, 164)  # res2..res5: 25x41, 13x21, 7x11, 4x6
UPSAMPLER_NAMES = ("fpn_upsample5", "fpn_upsample4", "fpn_upsample3")


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    dysample = build_backbone(load_config(DYSAMPLE_FPN)).eval()
    nearest = build_backbone(load_config(NEAREST_FPN)).eval()
    nearest.load_state_dict(dysample.state_dict(), strict=False)  # all but the upsamplers
    return dysample, nearest


class InterpolateToLateral(torch.nn.Module):
    """A top-down step sized as mmdet's FPN sizes it, F.interpolate(size=lateral), but
    bilinear: what a zero-offset DySample computes."""

    def forward(self, x, add_to):
        return add_to + F.interpolate(x, size=add_to.shape[-2:], mode="bilinear",
                                      align_corners=False)


def test_detectron2_fpn_needs_padded_inputs_dysample_fpn_does_not(backbones):
    dysample, nearest = backbones
    assert nearest.size_divisibility == 32
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        # FPN's top-down step interpolates by scale_factor=2: 8x12 against a 7x11 lateral
        with pytest.raises(RuntimeError, match="must match the size of tensor b"):
            nearest(x)
        out = dysample(x)
        padded = torch.zeros(1, 3, 128, 192)  # what ImageList.from_tensors pads to
        padded[..., : ODD[0], : ODD[1]] = x
        assert {k: v.shape[-2:] for k, v in nearest(padded).items()} == {
            k: v.shape[-2:] for k, v in dysample(padded).items()}
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (25, 41), "p3": (13, 21), "p4": (7, 11), "p5": (4, 6), "p6": (2, 3)}


def test_zero_offset_dysample_fpn_is_interpolation_to_the_lateral_size(each_sampler, backbones):
    dysample, _ = backbones
    upsamplers = {name: getattr(dysample, name) for name in UPSAMPLER_NAMES}
    state = {k: v.clone() for k, v in dysample.state_dict().items()}
    x = torch.randn(1, 3, *ODD)
    try:
        for upsampler in upsamplers.values():
            zero_offsets(upsampler)
        with torch.no_grad():
            out = dysample(x)
            for name in upsamplers:
                setattr(dysample, name, InterpolateToLateral())
            expected = dysample(x)
    finally:
        for name, upsampler in upsamplers.items():
            setattr(dysample, name, upsampler)
        dysample.load_state_dict(state)
    for name in out:
        torch.testing.assert_close(out[name], expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["auto", "gather"])
def test_fpn_training_step_at_an_odd_size_matches_the_reference(backbones, name):
    dysample, _ = backbones
    params = [p for n, p in dysample.named_parameters() if "upsample" in n]
    x = torch.randn(1, 3, 68, 100)  # res2..res5: 17x25, 9x13, 5x7, 3x4
    grads = {}
    for sampler_name in (name, "gridsample"):
        with sampler(sampler_name):
            loss = sum(f.square().mean() for f in dysample(x).values())
            grads[sampler_name] = torch.autograd.grad(loss, params)
    for ours, ref in zip(grads[name], grads["gridsample"]):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-6)


def test_traced_fpn_runs_at_other_odd_sizes(backbones):
    dysample, _ = backbones
    traced = torch.jit.trace(Traced(dysample, lambda m, x: tuple(m(x).values())),
                             torch.randn(1, 3, *ODD), check_trace=False)
    with torch.no_grad():
        for size in [(96, 160), (70, 90)]:
            x = torch.randn(1, 3, *size)
            for ours, eager in zip(traced(x), dysample(x).values()):
                torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-4)
