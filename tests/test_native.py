"""The compiled CPU sampling kernel (dysample_d2/layers/csrc) against ATen's grid_sampler_2d."""
import pytest
import torch

from dysample_d2 import DySample
from bench_common import dysample_like_grid
from dysample_d2.layers import dysample as dysample_module
from dysample_d2.layers import native


@pytest.fixture(scope="module")
def compiled():
    module = native.load()
    assert module is not None, native.status()  # scripts/install.sh builds it
    return module


@pytest.fixture(params=["auto", "portable"])
def kernel(compiled, request):
    """The kernel with its forward on the CPU's best code path (AVX2 where it has it) and on the
    portable one."""
    compiled.kernel_isa(request.param)
    yield compiled
    compiled.kernel_isa("auto")


def aten_reference(x, grid, grad):
    grid_nhwc = grid.permute(0, 2, 3, 1)
    out = torch.grid_sampler_2d(x, grid_nhwc, 0, 1, False)  # bilinear, border, corners False
    gx, gg = torch.ops.aten.grid_sampler_2d_backward(grad, x, grid_nhwc, 0, 1, False, [True, True])
    return out, gx, gg.permute(0, 3, 1, 2)


def assert_equals_aten_float64(kernel, x, grid, grad, grid_grad_tol=1e-12):
    """Forward, input gradient and grid gradient of the kernel equal ATen's (float64)."""
    out, gx, gg = aten_reference(x, grid, grad)
    ours_gx, ours_gg = kernel.sample_backward(grad, x, grid, True)
    assert (kernel.sample_forward(x, grid) - out).abs().max().item() < 1e-12
    assert (ours_gx - gx).abs().max().item() < 1e-12
    assert (ours_gg - gg).abs().max().item() < grid_grad_tol


@pytest.mark.parametrize("scale, h, w", [(2, 7, 9), (2, 1, 3), (3, 5, 4), (4, 3, 3), (2, 2, 1)])
@pytest.mark.parametrize("offset_px", [0.0, 0.3, 3.0, 40.0])
@pytest.mark.parametrize("channels", [4, 5, 1])
def test_equals_grid_sample_float64(kernel, scale, h, w, offset_px, channels):
    """Inside, across cells, off the image (border clamping), channel counts around the block."""
    grid = dysample_like_grid(3, h, w, scale, offset_px, torch.float64)
    x = torch.randn(3, channels, h, w, dtype=torch.float64)
    grad = torch.randn(3, channels, scale * h, scale * w, dtype=torch.float64)
    assert_equals_aten_float64(kernel, x, grid, grad, grid_grad_tol=1e-10)


def test_exact_image_edges_float64(kernel):
    """Coordinates exactly on the first/last pixel centre and on the image border."""
    w = h = 5
    centres = [-1 + 1 / w, 1 - 1 / w, -1.0, 1.0, 0.0, 1 - 3 / w]
    gx = torch.tensor(centres, dtype=torch.float64).view(1, len(centres)).expand(len(centres), -1)
    gy = gx.t()
    grid = torch.stack([gx, gy]).unsqueeze(0).contiguous()  # [1, 2, 6, 6]
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    grad = torch.randn(1, 3, len(centres), len(centres), dtype=torch.float64)
    assert_equals_aten_float64(kernel, x, grid, grad)


def test_float32_and_no_input_gradient(kernel):
    grid = dysample_like_grid(8, 25, 42, 2, 0.5, torch.float32)
    x = torch.randn(8, 64, 25, 42)
    grad = torch.randn(8, 64, 50, 84)
    out, gx, gg = aten_reference(x, grid, grad)
    torch.testing.assert_close(kernel.sample_forward(x, grid), out, rtol=1e-5, atol=1e-5)
    ours_gx, ours_gg = kernel.sample_backward(grad, x, grid, True)
    torch.testing.assert_close(ours_gx, gx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours_gg, gg, rtol=1e-4, atol=1e-3)
    empty, only_gg = kernel.sample_backward(grad, x, grid, False)
    assert empty.numel() == 0
    torch.testing.assert_close(only_gg, ours_gg, rtol=0, atol=0)


def test_channel_chunks_when_fewer_images_than_threads(kernel):
    """One image-group on 4 threads: channel chunks with partial grid gradients, then summed."""
    threads = torch.get_num_threads()
    grid = dysample_like_grid(1, 6, 7, 2, 0.4, torch.float64)
    x = torch.randn(1, 10, 6, 7, dtype=torch.float64)
    grad = torch.randn(1, 10, 12, 14, dtype=torch.float64)
    torch.set_num_threads(4)
    try:
        assert_equals_aten_float64(kernel, x, grid, grad)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("channels, w", [(67, 21), (8, 8), (3, 5)])
def test_code_paths_agree_bitwise(compiled, channels, w):
    """AVX2 (8 x 8 transposes, 8-wide blends and sums) and portable: the same sums in the same
    order, the same bits, forward and backward (channels around the 8 lanes)."""
    grid = dysample_like_grid(3, 13, w, 2, 0.6, torch.float32)
    x = torch.randn(3, channels, 13, w)
    grad = torch.randn(3, channels, 26, 2 * w)
    results = {}
    try:
        for isa in ("portable", "auto"):
            compiled.kernel_isa(isa)
            results[isa] = [compiled.sample_forward(x, grid),
                            *compiled.sample_backward(grad, x, grid, True)]
    finally:
        compiled.kernel_isa("auto")
    for portable, auto in zip(results["portable"], results["auto"]):
        assert torch.equal(portable, auto)
    out, gx, gg = aten_reference(x, grid, grad)
    torch.testing.assert_close(results["auto"][0], out)
    torch.testing.assert_close(results["auto"][1], gx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["auto"][2], gg, rtol=1e-4, atol=1e-3)


def test_rows_spread_over_many_input_rows(kernel):
    """Offsets of many pixels: output rows that read more input rows than the channels-last
    copies hold make them grow (dropping the rows held); rows next to them reuse them."""
    h, w = 60, 9
    grid = dysample_like_grid(2, h, w, 2, 0.3, torch.float64)
    wild = dysample_like_grid(2, h, w, 2, 40.0, torch.float64, seed=1)
    grid[:, :, ::3] = wild[:, :, ::3]
    x = torch.randn(2, 11, h, w, dtype=torch.float64)
    grad = torch.randn(2, 11, 2 * h, 2 * w, dtype=torch.float64)
    assert_equals_aten_float64(kernel, x, grid, grad)


def planar_grid(off, bias, base, norm, h, w, s, g, gated):
    """The grid the kernel builds, in torch ops: [B*G, 2, sH, sW] from the offset matmul
    off [B, H*W, M'] (columns x|y, group, sub-pixel i, j; then the gates)."""
    b, m = off.shape[0], 2 * g * s * s
    offsets = off[..., :m] if bias is None else off[..., :m] + bias
    if gated:
        offsets = offsets * off[..., m:]
    offsets = offsets.view(b, h, w, 2, g, s, s).permute(0, 4, 3, 1, 5, 2, 6)
    base = base.permute(2, 0, 1).view(1, 1, 2, h, s, w, s)
    grid = base + offsets * norm.view(1, 1, 2, 1, 1, 1, 1)
    return grid.reshape(b * g, 2, s * h, s * w)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale, groups", [(2, 4), (3, 1)])
@pytest.mark.parametrize("gated, with_bias", [(False, False), (False, True), (True, True)])
def test_forward_from_offsets_equals_pytorch_ops(kernel, dtype, scale, groups, gated, with_bias):
    """The forward that builds the grid row by row from the offset matmul: the grid it keeps
    equals `planar_grid`'s torch ops, its output grid_sample on that grid; without keep_grid
    the same output and no grid."""
    b, h, w, s, g, c = 2, 5, 7, scale, groups, 9  # c, sW >= 8: full 8 x 8 AVX2 blocks too
    m = 2 * g * s * s
    off = torch.randn(b, h * w, 2 * m if gated else m, dtype=dtype)
    if gated:
        off[..., m:].sigmoid_()
    bias = torch.randn(m, dtype=dtype) if with_bias else None
    base = dysample_module._base_grid(s * h, s * w, torch.device("cpu"), dtype)
    norm = torch.tensor([4.0 / w, 4.0 / h], dtype=dtype)  # offsets of about 2 px: across cells
    x = torch.randn(b * g, c, h, w, dtype=dtype)
    expected_grid = planar_grid(off, bias, base, norm, h, w, s, g, gated)
    args = (x, off, torch.empty(0, dtype=dtype) if bias is None else bias, base, norm, s, g, gated)
    empty = torch.empty(0, dtype=dtype)
    out, grid = kernel.sample_forward_offsets(*args, True, empty)
    assert grid.shape == (b * g, 2, s * h, s * w)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(grid, expected_grid, rtol=tol, atol=tol)
    assert torch.equal(out, kernel.sample_forward(x, grid))
    out_only, no_grid = kernel.sample_forward_offsets(*args, False, empty)
    assert no_grid.numel() == 0 and torch.equal(out_only, out)
    # add_to: the samples added as they are written, in place; the same bits as the sum after
    add_to = torch.randn(b * g, c, s * h, s * w, dtype=dtype)
    expected_sum = add_to + out
    summed, _ = kernel.sample_forward_offsets(*args, False, add_to)
    assert summed.data_ptr() == add_to.data_ptr() and torch.equal(add_to, expected_sum)


def test_bad_arguments_are_refused(kernel):
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="dysample sampling: expected x"):
        kernel.sample_forward(x, torch.zeros(2, 3, 8, 10))
    with pytest.raises(RuntimeError, match="dtypes differ"):
        kernel.sample_forward(x, torch.zeros(2, 2, 8, 10, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel.sample_forward(x, torch.zeros(2, 8, 10, 2).permute(0, 3, 1, 2))
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        kernel.sample_backward(torch.zeros(2, 3, 8, 9), x, torch.zeros(2, 2, 8, 10), True)
    xs, base, norm, no_bias = torch.zeros(8, 3, 4, 5), torch.zeros(8, 10, 2), torch.zeros(2), torch.empty(0)
    off = torch.zeros(2, 20, 32)
    forward = kernel.sample_forward_offsets
    with pytest.raises(RuntimeError, match=r"expected a contiguous off \[2, 20, 64\]"):
        forward(xs, off, no_bias, base, norm, 2, 4, True, True, no_bias)
    with pytest.raises(RuntimeError, match=r"base must be \[8, 10, 2\]"):
        forward(xs, off, no_bias, base[:4], norm, 2, 4, False, True, no_bias)
    with pytest.raises(RuntimeError, match=r"bias must be empty or \[32\]"):
        forward(xs, off, torch.zeros(5), base, norm, 2, 4, False, True, no_bias)
    with pytest.raises(RuntimeError, match=r"expected a contiguous x \[B \* G, C / G, H, W\]"):
        forward(xs[:7], off, no_bias, base, norm, 2, 4, False, True, no_bias)
    with pytest.raises(RuntimeError, match=r"add_to must be empty or a contiguous \[8, 3, 8, 10\]"):
        forward(xs, off, no_bias, base, norm, 2, 4, False, True, torch.zeros(8, 3, 8, 9))
    with pytest.raises(RuntimeError, match="choice must be 'auto' or 'portable', got 'sse9'"):
        kernel.kernel_isa("sse9")


def run_module(x, grad):
    torch.manual_seed(0)
    module = DySample(16, 2, "lp", 4, dyscope=True)
    with torch.no_grad():
        module.offset.weight.normal_(std=0.1)
        module.scope.weight.normal_(std=0.1)
    x = x.detach().requires_grad_()
    out = module(x)
    return [out] + list(torch.autograd.grad(out, [x] + list(module.parameters()), grad))


def test_without_a_compiler_dysample_falls_back_with_one_reason(monkeypatch, caplog):
    """A failed build: the reference formulation runs, gives the same results, status says why."""
    x, grad = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 18, 22)
    with_kernel = run_module(x, grad)
    monkeypatch.setattr(native, "_state", {"tried": False, "module": None, "reason": None})

    def no_compiler(verbose):
        raise RuntimeError("Error building extension 'dysample_d2_sampling_cpu': c++ not found")

    monkeypatch.setattr(native, "_build", no_compiler)
    with caplog.at_level("WARNING", logger=native.__name__):
        without = run_module(x, grad)
    assert native.load() is None
    assert "could not be built (RuntimeError: Error building extension" in native.status()
    assert native.status().endswith("DySample sampler 'auto' (DYSAMPLE_D2_SAMPLER): "
                                    "grid_sample everywhere")
    assert sum("DySample uses grid_sample" in r.getMessage() for r in caplog.records) == 1
    for a, b in zip(with_kernel, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_reference_sampler_does_not_build_the_kernel(monkeypatch):
    monkeypatch.setattr(native, "_state", {"tried": False, "module": None, "reason": None})
    monkeypatch.setenv("DYSAMPLE_D2_SAMPLER", "gridsample")
    monkeypatch.setattr(native, "_build", lambda verbose: pytest.fail("must not build"))
    DySample(8, 2, groups=2)(torch.randn(1, 8, 4, 4))


def test_non_finite_grid_reads_inside_the_image(kernel):
    """NaN / inf positions (a diverged training) must not index outside the input."""
    x = torch.randn(1, 3, 4, 5)
    grid = torch.zeros(1, 2, 8, 10)
    grid[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    grid[0, 1, 1, :2] = torch.tensor([float("nan"), float("inf")])
    out = kernel.sample_forward(x, grid)
    assert torch.isfinite(out).all()
    gx, gg = kernel.sample_backward(torch.ones_like(out), x, grid, True)
    assert torch.isfinite(gx).all() and torch.isfinite(gg).all()
    assert gg[0, 0, 0, :3].eq(0).all()  # clipped or NaN coordinates pass no gradient
