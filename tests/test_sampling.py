"""DySample on every sampler (the compiled kernel, grid_sample, gathers) and device against the
authors' formulation, and how the sampler is chosen."""
import types

import pytest
import torch
import torch.nn.functional as F

from dysample_d2 import DySample
from dysample_d2.layers import backend, dysample as dysample_module, gather, native, sampler
from dysample_d2.layers import sampling
from dysample_d2.layers.sampling import DySampleFunction

from sampler_helpers import (  # noqa: F401  (deterministic, device, each_sampler: fixtures)
    deterministic, deterministic_algorithms, device, each_sampler, exact_reference,
    outputs_and_grads, randomize,
)


def assert_equals_reference(module, x, device=torch.device("cpu")):
    """Output and all gradients of the module on ``device`` equal the float64 reference on the
    CPU to 1e-9; returns its output."""
    s = module.scale
    grad = torch.randn(*x.shape[:2], s * x.shape[2], s * x.shape[3], dtype=torch.float64)
    ref_out, ref_grads = outputs_and_grads(exact_reference(module), x, grad)
    out, grads = outputs_and_grads(module.to(device), x.to(device), grad.to(device))
    assert out.device.type == device.type and out.dtype == torch.float64
    assert (out.cpu() - ref_out).abs().max().item() < 1e-9
    for name, g, r in zip(["x"] + [n for n, _ in module.named_parameters()], grads, ref_grads):
        assert (g.cpu() - r).abs().max().item() < 1e-9, name
    return ref_out


def in_reference_formulation(module, *args, **kwargs):
    with sampler("gridsample"):
        return outputs_and_grads(module, *args, **kwargs)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("std", [0.02, 0.5])  # offsets inside a pixel's cell, and across cells
def test_equals_reference_float64_forward_and_gradients(device, each_sampler, style, scale,
                                                        dyscope, groups, std):
    channels = 4 * scale**2
    module = randomize(DySample(channels, scale, style, groups, dyscope), std=std).double()
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)  # odd sizes
    assert_equals_reference(module, x, device)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("std", [0.02, 0.5])
def test_scope_bias_equals_reference_float64(each_sampler, style, scale, std):
    channels = 4 * scale**2
    module = DySample(channels, scale, style, 2, dyscope=True, scope_bias=True)
    module = randomize(module, std=std).double()
    assert module.scope.bias.abs().min() > 0
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    ref_out = assert_equals_reference(module, x)
    # the bias matters: without it the output differs
    module.scope.bias.data.zero_()
    assert (module(x) - ref_out).abs().max().item() > 1e-6


@pytest.mark.parametrize("style, dyscope", [("lp", False), ("pl", True)])
def test_gradcheck_of_the_module(each_sampler, style, dyscope):
    module = randomize(DySample(8, 2, style, groups=2, dyscope=dyscope), std=0.3).double()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dyscope,scope_bias", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("std", [0.05, 1.0])
def test_gradcheck_of_the_function(dyscope, scope_bias, groups, std):
    scale, channels, h, w = 2, 2 * groups, 2, 3
    rows = 2 * groups * scale**2 * (2 if dyscope else 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, h, w, dtype=torch.float64, generator=gen).requires_grad_()
    weight = torch.randn(rows, channels, dtype=torch.float64, generator=gen) * std
    weight.requires_grad_()
    bias_rows = rows if scope_bias else 2 * groups * scale**2
    bias = torch.randn(bias_rows, dtype=torch.float64, generator=gen)
    bias.requires_grad_()
    base = dysample_module._base_grid(scale * h, scale * w, torch.device("cpu"), torch.float64)
    norm = torch.tensor([0.5 * 2 / w, 0.5 * 2 / h], dtype=torch.float64)

    def fn(x, weight, bias):
        return DySampleFunction.apply(x, weight, bias, base, norm, scale, groups, dyscope)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [-40.0, 40.0])
def test_border_clamping_far_outside_the_image(each_sampler, shift):
    """Offsets many pixels outside: clamped to the border row/column, as grid_sample's border."""
    module = randomize(DySample(8, 2, "lp", groups=2), std=0.3).double()
    with torch.no_grad():
        module.offset.bias.add_(shift / 0.25)  # every offset ~shift input pixels, x and y
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    grad = torch.randn(1, 8, 10, 12, dtype=torch.float64)
    out, grads = outputs_and_grads(module, x, grad)
    ref_out, ref_grads = outputs_and_grads(exact_reference(module), x, grad)
    corner = x[:, :, -1, -1] if shift > 0 else x[:, :, 0, 0]
    assert torch.allclose(out, corner[..., None, None].expand_as(out), atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < 1e-9
    assert grads[0][:, :, 1:-1, 1:-1].abs().max() == 0  # only the corner pixel is read
    # clamped coordinates carry no gradient: the offset conv sees none through the grid
    assert grads[1].abs().max().item() < 1e-9


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope,scope_bias", [(False, False), (True, False), (True, True)])
def test_equals_reference_formulation_float32(each_sampler, style, dyscope, scope_bias):
    module = randomize(DySample(16, 2, style, 4, dyscope, scope_bias), std=0.1)
    x = torch.randn(2, 16, 9, 11)
    grad = torch.randn(2, 16, 18, 22)
    out, grads = outputs_and_grads(module, x, grad)
    ref_out, ref_grads = in_reference_formulation(module, x, grad)
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def test_input_without_gradient(each_sampler):
    module = randomize(DySample(8, 2, groups=2, dyscope=True), std=0.2)
    x = torch.randn(1, 8, 5, 7)
    (module(x) ** 2).sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    with sampler("gridsample"):
        (module(x) ** 2).sum().backward()
    for g, p in zip(grads, module.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(each_sampler, dtype):
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05).to(dtype)
    x = torch.randn(1, 16, 6, 7).to(dtype)
    grad = torch.randn(1, 16, 12, 14).to(dtype)
    out, grads = outputs_and_grads(module, x, grad)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref_out, ref_grads = in_reference_formulation(module, x, grad)
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (out.float() - ref_out.float()).abs().max().item() < tol
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g.float()).all()
        assert (g.float() - r.float()).abs().max().item() < tol * max(1.0, r.float().abs().max())


def test_autocast_backward(each_sampler):
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05)
    x = torch.randn(1, 16, 6, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("style, dyscope", [("lp", False), ("pl", True)])
def test_add_to_is_the_sum_in_place_bit_for_bit(device, each_sampler, dtype, style, dyscope):
    """module(x, add_to=t) is t += module(x): the same bits as the separate sum, forward and
    every gradient. On CUDA the gradients are compared under deterministic algorithms ("auto"
    then runs the gather sampler), except grid_sample's, whose CUDA backward accumulates with
    atomics in no fixed order and has no deterministic mode: within rounding."""
    exact = device.type == "cpu" or each_sampler != "gridsample"
    module = randomize(DySample(16, 2, style, 4, dyscope), std=0.3).to(device, dtype)
    x = torch.randn(2, 16, 9, 11).to(device, dtype).requires_grad_()
    base = torch.randn(2, 16, 18, 22).to(device, dtype).requires_grad_()
    grad = torch.randn(2, 16, 18, 22).to(device, dtype)
    inputs = [x, base] + list(module.parameters())
    with deterministic_algorithms(device.type == "cuda" and exact):
        expected = base * 1 + module(x)
        expected_grads = torch.autograd.grad(expected, inputs, grad)
        add_to = base * 1
        out = module(x, add_to=add_to)
        assert out is add_to and add_to._version > 0
        assert torch.equal(out, expected)
        for g, e in zip(torch.autograd.grad(out, inputs, grad), expected_grads):
            if exact:
                assert torch.equal(g, e)
            else:
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
                assert (g - e).abs().max().item() <= tol * max(1.0, e.abs().max().item())
    with torch.no_grad():  # inference: the same sum without a graph
        add_to = base.detach().clone()
        assert module(x, add_to=add_to) is add_to and torch.equal(add_to, expected)


def test_add_to_not_laid_out_as_the_output_is_summed_after(each_sampler):
    """A non-contiguous add_to (here channels-last) still gets the exact sum."""
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3)
    x = torch.randn(2, 16, 9, 11)
    add_to = torch.randn(2, 16, 18, 22).contiguous(memory_format=torch.channels_last)
    expected = add_to + module(x)
    assert torch.equal(module(x, add_to=add_to), expected)


def test_gradient_of_add_to_alone(each_sampler):
    """A frozen upsampler on an input without gradient: only add_to's gradient flows."""
    module = randomize(DySample(8, 2, "lp", 2), std=0.3).requires_grad_(False)
    base = torch.randn(1, 8, 8, 10, requires_grad=True)
    module(torch.randn(1, 8, 4, 5), add_to=base * 1).sum().backward()
    assert torch.equal(base.grad, torch.ones_like(base))


def test_gradcheck_with_add_to(each_sampler):
    module = randomize(DySample(8, 2, "lp", 2, dyscope=True), std=0.3).double()
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    base = torch.randn(1, 8, 8, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: module(x, add_to=t * 1), (x, base))


def test_each_sampler_runs_its_own_ops(device, monkeypatch):
    """auto: the kernel's Function on eager CPU, F.grid_sample on CUDA and under tracing;
    gridsample: F.grid_sample; gather: sample_gather; neither of those two calls the kernel."""
    calls = []

    def counted(owner, name):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(name) or original(*a, **k))

    counted(DySampleFunction, "apply")
    counted(dysample_module.F, "grid_sample")
    counted(dysample_module, "sample_gather")
    module = DySample(8, 2, groups=2).to(device).eval()
    x = torch.randn(1, 8, 4, 4, device=device, requires_grad=True)
    expected = {"auto": "apply" if device.type == "cpu" else "grid_sample",
                "gridsample": "grid_sample", "gather": "sample_gather"}
    for name, op in expected.items():
        with sampler(name):
            calls.clear()
            module(x).sum().backward()
            assert calls == [op], name
    with sampler("auto"):
        calls.clear()
        torch.jit.trace(module, x, check_trace=False)
        assert calls == ["grid_sample"]


def test_sampler_blocks_nest_and_restore(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.active_sampler() == "auto"
    with sampler("gather"):
        with sampler("gridsample"):
            assert backend.active_sampler() == "gridsample"
        assert backend.active_sampler() == "gather"
    assert backend.active_sampler() == "auto"
    with pytest.raises(ValueError, match="sampler must be one of auto, gridsample, gather"):
        with sampler("nearest"):
            pass
    assert backend.active_sampler() == "auto"


def test_environment_sets_the_default_and_a_bad_value_is_named(monkeypatch):
    module = DySample(8, 2, groups=2)
    x = torch.randn(1, 8, 4, 4)
    monkeypatch.setenv("DYSAMPLE_D2_SAMPLER", "gather")
    assert backend.active_sampler() == "gather"
    assert "DySample sampler 'gather' (DYSAMPLE_D2_SAMPLER): gathers" in native.status()
    with sampler("auto"):  # a block overrides the environment
        assert backend.active_sampler() == "auto"
    monkeypatch.setenv("DYSAMPLE_D2_SAMPLER", "fast")
    with pytest.raises(ValueError) as err:
        module(x)  # refused at first use, not when dysample_d2 is imported
    assert str(err.value) == ("DYSAMPLE_D2_SAMPLER: DySample sampler must be one of auto, "
                              "gridsample, gather, got 'fast'")


def test_status_names_the_sampler(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert native.status().endswith(
        "DySample sampler 'auto' (DYSAMPLE_D2_SAMPLER): the kernel on eager CPU, "
        "grid_sample elsewhere")
    with sampler("gridsample"):
        assert native.status().endswith(
            "'gridsample' (DYSAMPLE_D2_SAMPLER): grid_sample everywhere")


@pytest.mark.parametrize("weight_requires_grad", [False, True])
@pytest.mark.parametrize("sub_pixels", [1, 4])
def test_offset_columns_read_x_without_copying_it(sub_pixels, weight_requires_grad):
    """
    The offset product reads x where it lies: torch.matmul would fold a weight that requires
    grad (style pl's conv weight) into a transposed copy of x, a full extra pass over the
    input every step. Style pl's one copy is its [B, H*W, M] output put into the lp column
    order.
    """
    x = torch.randn(2, 64, 6 * 7)
    weight = torch.randn(8, 64 // sub_pixels, requires_grad=weight_requires_grad)
    with torch.no_grad(), torch.profiler.profile() as prof:
        off = sampling._offset_columns(x, weight, sub_pixels, torch.float32)
    copies = [e.name for e in prof.events() if e.name in ("aten::clone", "aten::copy_")]
    assert copies == ([] if sub_pixels == 1 else ["aten::copy_"])
    x_sub_pixels = x.view(2, 64 // sub_pixels, sub_pixels, 42)
    rows = torch.einsum("rc,bckp->bprk", weight.detach(), x_sub_pixels)
    assert torch.allclose(off, rows.reshape(2, 42, 8 * sub_pixels), atol=1e-5)


# ---- the deterministic sampler choice (CUDA inputs: only their device is read) ----

CUDA_INPUT = types.SimpleNamespace(device=torch.device("cuda"))  # only its device is read


def test_sampler_choice_for_a_cuda_input(deterministic, monkeypatch):
    messages = []
    monkeypatch.setattr(backend, "_deterministic_choice_logged", False)
    monkeypatch.setattr(backend.logger, "info", lambda message, *a: messages.append(message))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    assert len(messages) == 1 and "runs the gather sampler" in messages[0]  # logged once
    with torch.no_grad():  # inference: grid_sample's forward is deterministic
        assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    with torch.inference_mode():
        assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    for explicit in ("gridsample", "gather"):  # an explicit choice is kept
        with sampler(explicit):
            assert backend.sampler_for(CUDA_INPUT) == explicit
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    torch.use_deterministic_algorithms(False)
    assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    assert len(messages) == 1


def test_cpu_behaviour_is_unchanged_under_determinism(deterministic, monkeypatch):
    """A CPU input keeps "auto", the compiled kernel (deterministic: no atomics), with the same
    bits as without determinism."""
    assert native.load() is not None, native.status()  # scripts/install.sh builds it
    x = torch.randn(2, 16, 7, 9)
    assert backend.sampler_for(x) == "kernel"
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3)
    grad = torch.randn(2, 16, 14, 18)
    calls = []
    original = DySampleFunction.apply
    monkeypatch.setattr(DySampleFunction, "apply", lambda *a: calls.append(1) or original(*a))
    out, grads = outputs_and_grads(module, x, grad)
    assert calls == [1]
    torch.use_deterministic_algorithms(False)
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


def test_gather_sampler_backward_runs_under_determinism_on_cpu(deterministic):
    """The gather sampler's ops (index_select and its index_add_ backward) are allowed in
    deterministic mode and give the same bits as without it."""
    module = randomize(DySample(16, 2, "pl", 4, True), std=0.3)
    x = torch.randn(2, 16, 7, 9)
    grad = torch.randn(2, 16, 14, 18)
    with sampler("gather"):
        out, grads = outputs_and_grads(module, x, grad)
        torch.use_deterministic_algorithms(False)
        ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


# sample_gather on its own: random offsets in and out of the image, borders, gradients

def grid_sampled(x, offset):
    """grid_sample at the grid of `offset` (input pixels from the positions of bilinear
    resizing to its size): what DySample samples."""
    h, w = x.shape[-2:]
    out_h, out_w = offset.shape[1:3]
    xs = (torch.arange(out_w, dtype=x.dtype) + 0.5) * 2 / out_w - 1
    ys = (torch.arange(out_h, dtype=x.dtype) + 0.5) * 2 / out_h - 1
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)
    grid = base + offset * torch.tensor([2 / w, 2 / h], dtype=x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape, out", [((3, 5, 6, 7), (12, 14)), ((1, 1, 1, 4), (2, 7)),
                                        ((2, 3, 2, 1), (5, 3)), ((1, 2, 7, 9), (7, 9))])
def test_gather_equals_grid_sample(dtype, tol, shape, out):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=dtype, generator=gen).requires_grad_()
    offset = (torch.randn(shape[0], *out, 2, dtype=dtype, generator=gen) * 2).requires_grad_()
    grad = torch.randn(shape[0], shape[1], *out, dtype=dtype, generator=gen)
    outs = [f(x, offset) for f in (gather.sample_gather, grid_sampled)]
    assert (outs[0] - outs[1]).abs().max().item() < tol
    grads = [torch.autograd.grad(out, [x, offset], grad) for out in outs]
    for ours, theirs in zip(*grads):
        assert (ours - theirs).abs().max().item() < tol * max(1.0, theirs.abs().max().item())


def test_gather_on_pixel_centres_and_image_borders():
    """Positions exactly on the first/last pixel centres, the image border and beyond: the
    same values, and no gradient through a clamped or border coordinate, as grid_sample."""
    w = h = 4  # and 8 outputs: positions (o + 0.5) / 2 - 0.5, every grid value exact
    # coordinates 0 (first centre), 3 (last), -1 (beyond), 1.25, 2 (a centre), 5.25, 3, 3
    marks = torch.tensor([0.25, 2.75, -1.75, 0.0, 0.25, 3.0, 0.25, -0.25], dtype=torch.float64)
    offset = torch.stack(torch.meshgrid(marks, marks, indexing="xy"), -1)[None]
    offset.requires_grad_()
    x = torch.randn(1, 3, h, w, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 3, len(marks), len(marks), dtype=torch.float64)
    outs = [f(x, offset) for f in (gather.sample_gather, grid_sampled)]
    assert (outs[0] - outs[1]).abs().max().item() < 1e-12
    grads = [torch.autograd.grad(out, [x, offset], grad) for out in outs]
    for ours, theirs in zip(*grads):
        assert (ours - theirs).abs().max().item() < 1e-12


def test_gather_reads_inside_the_image_at_non_finite_offsets():
    x = torch.randn(1, 3, 4, 5)
    offset = torch.zeros(1, 2, 3, 2)
    offset[0, 0, :, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    offset[0, 0, :, 1] = -0.5  # the first row's centre
    out = gather.sample_gather(x, offset)  # must not index outside the input
    assert out.shape == (1, 3, 2, 3) and torch.isfinite(out).all()
    assert torch.equal(out[0, :, 0, 0], x[0, :, 0, 0])  # NaN: the first pixel
    assert torch.equal(out[0, :, 0, 1], x[0, :, 0, 4])  # +inf: the last column
    assert torch.equal(out[0, :, 0, 2], x[0, :, 0, 0])


def test_gather_keeps_sub_pixel_positions_in_bfloat16():
    """Positions are an integer pixel plus a small fraction, so bfloat16 offsets move them by a
    rounding of the fraction only, even hundreds of pixels into the image (a normalised grid
    in bfloat16 is off by up to a pixel there)."""
    offset = torch.linspace(-1.5, 1.5, 1200, dtype=torch.float64).view(1, 1, -1)
    i0, i1, frac = gather._axis(offset, 600, 1200, (1, 1, -1))
    b0, b1, bfrac = gather._axis(offset.bfloat16(), 600, 1200, (1, 1, -1))
    position, low_position = i0 + frac, b0 + bfrac.double()
    assert (low_position - position).abs().max() < 2**-7
    assert torch.equal(b1 - b0, i1 - i0)


@pytest.mark.parametrize("opset", [11, 20])
def test_gather_sampler_exports_to_onnx_without_grid_sample(opset, tmp_path):
    """Opsets below GridSample's 16 too; one export runs at other sizes, non-multiples of the
    scale included (add_to's size), equal to grid_sample within float32 rounding."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Sum(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x, t):
            return self.module(x, add_to=t * 1)

    model = Sum(randomize(DySample(16, 2, "lp", 4, True), std=0.1)).eval()
    path = str(tmp_path / "dysample.onnx")
    dynamic = {"x": {0: "b", 2: "h", 3: "w"}, "t": {0: "b", 2: "oh", 3: "ow"}}
    with sampler("gather"), torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 16, 6, 8), torch.randn(1, 16, 12, 16)), path,
                          opset_version=opset, dynamo=False, input_names=["x", "t"],
                          dynamic_axes=dynamic)
    assert "GridSample" not in {node.op_type for node in onnx.load(path).graph.node}
    session = ort.InferenceSession(path)
    for h, w, oh, ow in [(6, 8, 12, 16), (9, 5, 17, 10)]:
        x, t = torch.randn(2, 16, h, w), torch.randn(2, 16, oh, ow)
        with sampler("gridsample"), torch.no_grad():
            expected = model(x, t)
        out = session.run(None, {"x": x.numpy(), "t": t.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)
