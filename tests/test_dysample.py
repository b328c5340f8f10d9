"""The DySample module: construction, what it computes on every sampler, tracing and export."""
import pytest
import torch
import torch.nn.functional as F

from dysample_d2 import DySample
from dysample_d2.layers import dysample as dysample_module
from authors_dysample import AuthorsDySample

from sampler_helpers import device, each_sampler, randomize, zero_offsets  # noqa: F401


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dyscope", [False, True])
def test_zero_offsets_equal_bilinear_exactly(each_sampler, style, scale, dyscope):
    channels = 4 * scale**2
    module = zero_offsets(DySample(channels, scale, style=style, groups=4, dyscope=dyscope))
    module = module.double()
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)  # odd sizes on purpose
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    out = module(x)
    assert out.shape == (2, channels, 7 * scale, 5 * scale)
    assert (out - expected).abs().max().item() < 1e-12


def test_authors_module_loads_our_weights_and_initializes_alike():
    """The authors' module (the tests' oracle) has our state dict names, shapes and init."""
    for style, dyscope, bias in [("lp", False, False), ("pl", True, False), ("lp", True, True)]:
        ours = DySample(16, 2, style, 4, dyscope, bias)
        theirs = AuthorsDySample(16, 2, style, 4, dyscope, bias)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()}
        assert torch.equal(ours.init_pos, theirs.init_pos)
        assert theirs.offset.weight.std() < 0.01 and torch.count_nonzero(theirs.offset.bias) == 0
        theirs.load_state_dict(randomize(ours).state_dict(), strict=True)
        x = torch.randn(1, 16, 5, 6)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_init_pos_layout_and_initialisation():
    module = DySample(8, scale=2, groups=2)
    pos = module.init_pos.view(2, 2, 2, 2)  # (x|y, group, i, j)
    h = torch.tensor([-0.25, 0.25])
    for g in range(2):
        assert torch.equal(pos[0, g], h.view(1, 2).expand(2, 2))  # x offset = h[j]
        assert torch.equal(pos[1, g], h.view(2, 1).expand(2, 2))  # y offset = h[i]
    assert module.offset.weight.shape == (2 * 2 * 4, 8, 1, 1)
    assert torch.count_nonzero(module.offset.bias) == 0
    assert 0 < module.offset.weight.std().item() < 0.01
    plus = DySample(8, scale=2, groups=2, dyscope=True)
    assert plus.scope.bias is None and torch.count_nonzero(plus.scope.weight) == 0
    assert set(plus.state_dict()) == {"offset.weight", "offset.bias", "scope.weight", "init_pos"}


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
def test_gradients_reach_input_and_parameters(style, dyscope):
    module = randomize(DySample(16, 2, style=style, groups=4, dyscope=dyscope), std=0.1)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    (module(x) ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_dtype_follows_input(each_sampler, dtype):
    module = randomize(DySample(16, 2, groups=4), std=0.05).to(dtype)
    x = torch.randn(1, 16, 6, 7).to(dtype)
    out = module(x)
    assert out.dtype == dtype and out.shape == (1, 16, 12, 14)
    assert torch.isfinite(out.float()).all()


def test_autocast_keeps_input_dtype_and_matches_float32():
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05)
    x = torch.randn(1, 16, 6, 7)
    expected = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32
    # only the 1x1 convs run in bfloat16; sampling stays float32
    assert (out - expected).abs().max().item() < 0.05


def test_half_precision_grid_keeps_sub_pixel_accuracy(each_sampler):
    """At a large coordinate a grid built in float16 is off by a sizeable fraction of a pixel."""
    torch.manual_seed(0)
    module = randomize(DySample(8, 2, groups=2), std=0.02)
    reference = AuthorsDySample(8, 2, "lp", 2)
    reference.load_state_dict(module.state_dict())
    # a wide map whose values vary fast along x, so position errors become value errors
    w = 400
    x64 = torch.sin(torch.arange(w, dtype=torch.float64) * 1.3).expand(1, 8, 2, w).contiguous()
    truth = module.double()(x64)
    module.float()
    ours = module.half()(x64.half()).double()
    theirs = reference.half()(x64.half()).double()
    err_ours = (ours - truth).abs().max().item()
    err_theirs = (theirs - truth).abs().max().item()
    assert err_ours < 0.01  # float16 rounding of the values only
    assert err_theirs > 5 * err_ours


def test_base_grid_cache_is_bounded_and_reused():
    dysample_module._cached_base_grid.cache_clear()
    module = DySample(8, 2, groups=2)
    for size in range(4, 4 + 100):
        module(torch.randn(1, 8, size, 3))
    info = dysample_module._cached_base_grid.cache_info()
    assert info.currsize <= info.maxsize == 64
    before = info.hits
    module(torch.randn(2, 8, 103, 3))
    assert dysample_module._cached_base_grid.cache_info().hits == before + 1


def test_trace_works_at_other_input_sizes(each_sampler):
    module = randomize(DySample(8, 2, groups=2, dyscope=True), std=0.1).eval()
    traced = torch.jit.trace(module, torch.randn(1, 8, 6, 6), check_trace=False)
    for shape in [(2, 8, 5, 9), (1, 8, 12, 7)]:
        x = torch.randn(shape)
        assert torch.allclose(traced(x), module(x), atol=1e-5)


def test_torch_export_and_compile_work_with_dynamic_sizes(each_sampler):
    module = randomize(DySample(8, 2, groups=2, dyscope=True), std=0.1).eval()
    x = torch.randn(1, 8, 6, 10)
    height, width = torch.export.Dim("height", min=2, max=64), torch.export.Dim("width", min=2, max=64)
    exported = torch.export.export(module, (x,), dynamic_shapes=({2: height, 3: width},))
    compiled = torch.compile(module, backend="eager", dynamic=True, fullgraph=True)
    for shape in [(1, 8, 6, 10), (1, 8, 9, 5)]:
        x = torch.randn(shape)
        expected = module(x)
        assert torch.allclose(exported.module()(x), expected, atol=1e-5)
        assert torch.allclose(compiled(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=16, style="nearest"), "style must be one of ['lp', 'pl']"),
        (dict(in_channels=16, groups=0), "groups must be an int >= 1"),
        (dict(in_channels=16, groups=3), "groups=3 must divide in_channels=16"),
        (dict(in_channels=18, style="pl", groups=2), "divisible by scale**2=4"),
        (dict(in_channels=16, scale=1), "scale must be an int >= 2"),
        (dict(in_channels=16, scale=2.0), "scale must be an int >= 2"),
        (dict(in_channels=16, dyscope="yes"), "dyscope must be True or False"),
        (dict(in_channels=16, dyscope=True, scope_bias=1), "scope_bias must be True or False"),
        (dict(in_channels=16, scope_bias=True), "scope_bias=True needs dyscope=True"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError) as err:
        DySample(**kwargs)
    assert message in str(err.value)


def test_invalid_inputs_are_rejected(device):
    module = DySample(16).to(device)

    def zeros(*shape):
        return torch.zeros(*shape, device=device)

    with pytest.raises(ValueError, match="expected a 4-D input"):
        module(zeros(16, 5, 5))
    with pytest.raises(ValueError, match="expected 16 input channels, got 8"):
        module(zeros(1, 8, 5, 5))
    with pytest.raises(ValueError, match=r"output width 8 does not fit input width 5 at scale "
                       r"2: allowed 9..10 \(output size \(10, 8\), input shape \(1, 16, 5, 5\)\)"):
        module(zeros(1, 16, 5, 5), add_to=zeros(1, 16, 10, 8))
    with pytest.raises(ValueError, match="output height 11 does not fit input height 5"):
        module(zeros(1, 16, 5, 5), size=(11, 10))
    with pytest.raises(ValueError, match=r"add_to must be \[B, C, Ho, Wo\] with the input's B and "
                       r"C \(1, 16\), got shape \(1, 8, 10, 10\)"):
        module(zeros(1, 16, 5, 5), add_to=zeros(1, 8, 10, 10))
    with pytest.raises(ValueError, match=r"size \(9, 10\) differs from add_to's size \(10, 10\)"):
        module(zeros(1, 16, 5, 5), add_to=zeros(1, 16, 10, 10), size=(9, 10))
