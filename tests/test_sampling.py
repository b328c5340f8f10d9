"""The fused CPU path of DySample (dysample_d2/layers/sampling.py) against the references."""
import pytest
import torch

from dysample_d2 import DySample
from dysample_d2.layers import dysample as dysample_module
from dysample_d2.layers import input_grad, sampling
from dysample_d2.layers.sampling import FusedDySample, use_fused

from reference_dysample import ReferenceDySample


def randomize(module, std=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def exact_reference(module):
    """The straightforward implementation with the module's weights, in float64."""
    reference = ReferenceDySample(
        module.in_channels, module.scale, module.style, module.groups, module.dyscope,
        module.scope_bias,
    )
    reference.load_state_dict(module.state_dict())
    reference.double()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reference.init_pos = reference._init_pos()  # exact positions, not float32-rounded
    finally:
        torch.set_default_dtype(default_dtype)
    return reference


def outputs_and_grads(module, x, grad):
    x = x.detach().requires_grad_()
    out = module(x)
    grads = torch.autograd.grad(out, [x] + list(module.parameters()), grad)
    return out, grads


def assert_equals_reference(module, x):
    """Output and all gradients equal the float64 reference to 1e-9; returns its output."""
    s = module.scale
    grad = torch.randn(*x.shape[:2], s * x.shape[2], s * x.shape[3], dtype=torch.float64)
    out, grads = outputs_and_grads(module, x, grad)
    ref_out, ref_grads = outputs_and_grads(exact_reference(module), x, grad)
    assert (out - ref_out).abs().max().item() < 1e-9
    for name, g, r in zip(["x"] + [n for n, _ in module.named_parameters()], grads, ref_grads):
        assert (g - r).abs().max().item() < 1e-9, name
    return ref_out


@pytest.fixture(autouse=True, params=["native", "pytorch"])
def sampling_path(request, monkeypatch):
    """Every test on the compiled kernel and on the pure-PyTorch path."""
    monkeypatch.setattr(sampling, "NATIVE", request.param == "native")
    return request.param


@pytest.fixture(autouse=True)
def sparse_input_grad_at_small_sizes(monkeypatch):
    """The sparse input gradient at every size here, whatever MIN_NUMEL a user has set."""
    monkeypatch.setattr(input_grad, "MIN_NUMEL", 0)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("std", [0.02, 0.5])  # small offsets: sparse input gradient; large: not
def test_equals_reference_float64_forward_and_gradients(style, scale, dyscope, groups, std):
    channels = 4 * scale**2
    module = randomize(DySample(channels, scale, style, groups, dyscope), std=std).double()
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)  # odd sizes
    assert_equals_reference(module, x)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("std", [0.02, 0.5])
def test_scope_bias_equals_reference_float64(style, scale, std):
    channels = 4 * scale**2
    module = DySample(channels, scale, style, 2, dyscope=True, scope_bias=True)
    module = randomize(module, std=std).double()
    assert module.scope.bias.abs().min() > 0
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    ref_out = assert_equals_reference(module, x)
    # the bias matters: without it the output differs
    module.scope.bias.data.zero_()
    assert (module(x) - ref_out).abs().max().item() > 1e-6


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
        return FusedDySample.apply(x, weight, bias, base, norm, scale, groups, dyscope)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [-40.0, 40.0])
def test_border_clamping_far_outside_the_image(shift):
    """Offsets many pixels outside: clamped to the border row/column, as grid_sample's border."""
    module = randomize(DySample(8, 2, "lp", groups=2), std=0.3).double()
    with torch.no_grad():
        module.offset.bias.add_(shift / 0.25)  # every offset ~shift input pixels, x and y
    reference = exact_reference(module)
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    grad = torch.randn(1, 8, 10, 12, dtype=torch.float64)
    out, grads = outputs_and_grads(module, x, grad)
    ref_out, ref_grads = outputs_and_grads(reference, x, grad)
    corner = x[:, :, -1, -1] if shift > 0 else x[:, :, 0, 0]
    assert torch.allclose(out, corner[..., None, None].expand_as(out), atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < 1e-9
    assert grads[0][:, :, 1:-1, 1:-1].abs().max() == 0  # only the corner pixel is read
    # clamped coordinates carry no gradient: the offset conv sees none through the grid
    assert grads[1].abs().max().item() < 1e-9


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope,scope_bias", [(False, False), (True, False), (True, True)])
def test_fused_equals_plain_path_float32(style, dyscope, scope_bias, monkeypatch):
    module = randomize(DySample(16, 2, style, 4, dyscope, scope_bias), std=0.1)
    x = torch.randn(2, 16, 9, 11)
    grad = torch.randn(2, 16, 18, 22)
    out, grads = outputs_and_grads(module, x, grad)
    monkeypatch.setattr(dysample_module, "use_fused", lambda x: False)
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def test_input_without_gradient(monkeypatch):
    module = randomize(DySample(8, 2, groups=2, dyscope=True), std=0.2)
    x = torch.randn(1, 8, 5, 7)
    (module(x) ** 2).sum().backward()
    fused = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    monkeypatch.setattr(dysample_module, "use_fused", lambda x: False)
    (module(x) ** 2).sum().backward()
    for f, p in zip(fused, module.parameters()):
        assert torch.allclose(f, p.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype, monkeypatch):
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05).to(dtype)
    x = torch.randn(1, 16, 6, 7).to(dtype)
    grad = torch.randn(1, 16, 12, 14).to(dtype)
    out, grads = outputs_and_grads(module, x, grad)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    monkeypatch.setattr(dysample_module, "use_fused", lambda x: False)
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (out.float() - ref_out.float()).abs().max().item() < tol
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g.float()).all()
        assert (g.float() - r.float()).abs().max().item() < tol * max(1.0, r.float().abs().max())


def test_autocast_backward():
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05)
    x = torch.randn(1, 16, 6, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


needs_sparse = pytest.mark.skipif(
    not input_grad.available(torch.device("cpu")), reason="torch without MKL sparse BLAS"
)


@needs_sparse
@pytest.mark.parametrize("scale, h, w", [(2, 7, 9), (2, 1, 3), (3, 5, 4), (4, 3, 3)])
@pytest.mark.parametrize("offset_px", [0.0, 0.3, 3.0, 40.0])
def test_sparse_input_grad_equals_grid_sample_backward(scale, h, w, offset_px, monkeypatch):
    """Regular and irregular pixels, borders, offsets far outside: grid_sample's own gradient."""
    monkeypatch.setattr(input_grad, "MAX_IRREGULAR", 1.0)  # never fall back here
    gen = torch.Generator().manual_seed(0)
    n, cg = 3, 5
    base = dysample_module._base_grid(scale * h, scale * w, torch.device("cpu"), torch.float64)
    step = torch.tensor([2 / w, 2 / h], dtype=torch.float64)
    offsets = torch.randn(n, scale * h, scale * w, 2, dtype=torch.float64, generator=gen)
    grid = base + offsets * offset_px * step
    x = torch.randn(n, cg, h, w, dtype=torch.float64, generator=gen)
    grad = torch.randn(n, cg, scale * h, scale * w, dtype=torch.float64, generator=gen)
    expected = torch.ops.aten.grid_sampler_2d_backward(grad, x, grid, 0, 1, False, [True, False])
    ours = input_grad.sparse_input_grad(grad, grid.permute(0, 3, 1, 2), h, w, scale)
    assert (ours - expected[0]).abs().max().item() < 1e-12


@needs_sparse
def test_sparse_input_grad_gives_way_when_too_irregular():
    h, w, scale = 6, 6, 2
    grid = torch.rand(2, scale * h, scale * w, 2) * 2 - 1  # random positions: mostly irregular
    grad = torch.randn(2, 3, scale * h, scale * w)
    assert input_grad.sparse_input_grad(grad, grid.permute(0, 3, 1, 2), h, w, scale) is None


@needs_sparse
@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
def test_module_uses_sparse_input_grad_and_matches_fallback(style, dyscope, monkeypatch):
    """DySample as initialised (small offsets) takes the sparse path; same result as without."""
    monkeypatch.setattr(sampling, "NATIVE", False)
    calls = []
    sparse = input_grad.sparse_input_grad
    def counted(*args):
        result = sparse(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(input_grad, "sparse_input_grad", counted)
    module = DySample(32, 2, style, 4, dyscope)
    with torch.no_grad():
        module.offset.weight.normal_(std=0.05)
    x = torch.randn(2, 32, 11, 13)
    grad = torch.randn(2, 32, 22, 26)
    out, grads = outputs_and_grads(module, x, grad)
    assert calls == [True]  # the sparse input gradient ran and did not give way
    monkeypatch.setattr(sampling, "SPARSE_INPUT_GRAD", False)
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert calls == [True]
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5)
    # below MIN_NUMEL output-gradient elements grid_sample's backward runs instead
    monkeypatch.setattr(sampling, "SPARSE_INPUT_GRAD", True)
    monkeypatch.setattr(input_grad, "MIN_NUMEL", grad.numel() + 1)
    small_out, small_grads = outputs_and_grads(module, x, grad)
    assert calls == [True]
    for g, r in zip(small_grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5)


def test_path_choice(monkeypatch):
    """CPU eager runs the Function; tracing (and CUDA, not testable here) the plain ops."""
    calls = []
    apply = FusedDySample.apply
    monkeypatch.setattr(FusedDySample, "apply", lambda *a: calls.append(1) or apply(*a))
    module = DySample(8, 2, groups=2).eval()
    x = torch.randn(1, 8, 4, 4)
    assert use_fused(x)
    module(x)
    assert len(calls) == 1
    torch.jit.trace(module, x, check_trace=False)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("style, dyscope", [("lp", False), ("pl", True)])
@pytest.mark.parametrize("fused", [True, False])
def test_add_to_is_the_sum_in_place_bit_for_bit(dtype, style, dyscope, fused, monkeypatch):
    """module(x, add_to=t) is t += module(x): the same bits as the separate sum, forward and
    every gradient, on the fused path (kernel or pure PyTorch) and the plain one."""
    if not fused:
        monkeypatch.setattr(dysample_module, "use_fused", lambda x: False)
    module = randomize(DySample(16, 2, style, 4, dyscope), std=0.3).to(dtype)
    x = torch.randn(2, 16, 9, 11).to(dtype).requires_grad_()
    base = torch.randn(2, 16, 18, 22).to(dtype).requires_grad_()
    grad = torch.randn(2, 16, 18, 22).to(dtype)
    inputs = [x, base] + list(module.parameters())
    expected = base * 1 + module(x)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    add_to = base * 1
    out = module(x, add_to=add_to)
    assert out is add_to and add_to._version > 0
    assert torch.equal(out, expected)
    for g, e in zip(torch.autograd.grad(out, inputs, grad), expected_grads):
        assert torch.equal(g, e)
    with torch.no_grad():  # inference: the same sum without a graph
        add_to = base.detach().clone()
        assert module(x, add_to=add_to) is add_to and torch.equal(add_to, expected)


def test_add_to_not_laid_out_as_the_output_is_summed_after():
    """A non-contiguous add_to (here channels-last) still gets the exact sum."""
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3)
    x = torch.randn(2, 16, 9, 11)
    add_to = torch.randn(2, 16, 18, 22).contiguous(memory_format=torch.channels_last)
    expected = add_to + module(x)
    assert torch.equal(module(x, add_to=add_to), expected)


def test_gradcheck_with_add_to():
    module = randomize(DySample(8, 2, "lp", 2, dyscope=True), std=0.3).double()
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    base = torch.randn(1, 8, 8, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: module(x, add_to=t * 1), (x, base))


@pytest.mark.parametrize("weight_requires_grad", [False, True])
@pytest.mark.parametrize("sub_pixels", [1, 4])
def test_offset_columns_read_x_without_copying_it(sub_pixels, weight_requires_grad):
    """
    The offset product reads x where it lies: torch.matmul would fold a weight that requires
    grad (style pl's conv weight) into a transposed copy of x, 30-40 ms per 100x168 step on
    the Intel Xeon (docs/benchmarks.md, session 6).
    Style pl's one copy is its [B, H*W, M] output put into the lp column order.
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
