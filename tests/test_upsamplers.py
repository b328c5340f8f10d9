"""The comparison upsamplers (dysample_d2/layers/upsamplers.py, carafe.py): CARAFE's reassembly
against an independent formulation in float64 (values, gradients, borders), the modules as
mmdet's FPN_CARAFE builds them (shapes, parameter names and counts, initialization) and the
factory's refusals."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dysample_d2 import DySample
from dysample_d2.layers import UPSAMPLERS, build_upsampler, check_upsampler_arguments, sampler
from dysample_d2.layers.carafe import CARAFE, carafe_reassemble


def naive_carafe(x, kernels, k, groups, s):
    """Every output pixel's k x k neighbourhood materialized: the zero-padded input, nearest-
    upsampled, unfolded with dilation s ([B, C, k^2, s*H, s*W]), weighted by its kernel."""
    b, c, h, w = x.shape
    r = (k - 1) // 2
    upsampled = F.interpolate(F.pad(x, (r, r, r, r)), scale_factor=s, mode="nearest")
    neighbourhoods = F.unfold(upsampled, k, dilation=s).view(b, groups, c // groups, k * k,
                                                             s * h, s * w)
    weights = kernels.view(b, groups, 1, k * k, s * h, s * w)
    return (neighbourhoods * weights).sum(3).view(b, c, s * h, s * w)


def mmcv_kernels(module, x):
    """CARAFEPack's kernel_normalizer: pixel shuffle, then softmax over each kernel."""
    mask = F.pixel_shuffle(module.content_encoder(module.channel_compressor(x)), module.scale)
    b, c, h, w = mask.shape
    return mask.view(b, -1, module.up_kernel**2, h, w).softmax(2).view(b, c, h, w)


@pytest.mark.parametrize("k, groups, s, size", [(5, 1, 2, (4, 5)), (3, 2, 2, (3, 4)),
                                                (5, 2, 3, (2, 3)), (1, 1, 2, (3, 3))])
def test_reassembly_equals_the_naive_formulation(k, groups, s, size):
    gen = torch.Generator().manual_seed(k + groups + s)
    x = torch.randn(2, 4, *size, dtype=torch.float64, generator=gen)
    kernels = torch.randn(2, groups * k * k, s * size[0], s * size[1], dtype=torch.float64,
                          generator=gen)
    expected = naive_carafe(x, kernels, k, groups, s)
    torch.testing.assert_close(carafe_reassemble(x, kernels, k, groups, s), expected,
                               rtol=1e-12, atol=1e-12)


def test_reassembly_gradients():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    kernels = torch.randn(1, 2 * 9, 6, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, m: carafe_reassemble(a, m, 3, 2, 2), (x, kernels))
    grad = torch.randn(1, 4, 6, 8, dtype=torch.float64, generator=gen)
    ours = torch.autograd.grad(carafe_reassemble(x, kernels, 3, 2, 2), (x, kernels), grad)
    naive = torch.autograd.grad(naive_carafe(x, kernels, 3, 2, 2), (x, kernels), grad)
    for a, b in zip(ours, naive):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_taps_outside_the_input_read_zero():
    """mmcv's CUDA kernels skip out-of-range taps (zero padding, no renormalization)."""
    x = torch.ones(1, 1, 3, 4, dtype=torch.float64)
    kernels = torch.zeros(1, 9, 6, 8, dtype=torch.float64)
    kernels[:, 0] = 1  # all weight on the top-left tap (dy, dx) = (-1, -1)
    out = carafe_reassemble(x, kernels, 3, 1, 2)[0, 0]
    assert out[:2].abs().sum() == 0 and out[:, :2].abs().sum() == 0  # input row / column -1
    assert torch.equal(out[2:, 2:], torch.ones(4, 6, dtype=torch.float64))


def test_carafe_module_equals_mmcv_formulation_with_gradients():
    torch.manual_seed(0)
    module = CARAFE(8, 2, compressed_channels=4).double()
    nn.init.normal_(module.content_encoder.weight, std=0.3)  # kernels far from uniform
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    out = module(x)
    expected = naive_carafe(x, mmcv_kernels(module, x), 5, 1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    params = [x, *module.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, grad),
                    torch.autograd.grad(expected, params, grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    small = CARAFE(2, 2, up_kernel=3, compressed_channels=2).double()
    tiny = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (tiny,))


def saved_bytes(fn, *inputs):
    """Bytes of the distinct storages autograd keeps for the backward of fn(*inputs)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return sum(storages.values()), out.numel() * out.element_size()


def test_reassembly_saves_no_neighbourhoods_for_the_backward():
    """What autograd keeps: the input, its padded copy, the compressed features, the kernels
    before and after the softmax, the weights; the naive formulation keeps the k^2
    neighbourhoods of every output pixel, 25 times the output."""
    module = CARAFE(128, 2, compressed_channels=8)
    x = torch.randn(1, 128, 20, 24, requires_grad=True)
    saved, output_bytes = saved_bytes(module, x)
    assert saved < 1.5 * output_bytes
    naive, _ = saved_bytes(lambda a: naive_carafe(a, mmcv_kernels(module, a), 5, 1, 2), x)
    assert naive > 25 * output_bytes


@pytest.mark.parametrize("name", UPSAMPLERS)
@pytest.mark.parametrize("scale", [2, 3])
def test_every_upsampler_maps_to_scale_times_the_input(name, scale):
    module = build_upsampler(name, 16, scale)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    with sampler("gridsample"):  # DySample's reference formulation: no kernel build
        out = module(x)
    assert out.shape == (2, 16, 5 * scale, 7 * scale)
    out.sum().backward()  # differentiable end to end
    assert x.grad.shape == x.shape


def test_modules_as_fpn_carafe_builds_them():
    """Parameter names and counts at C = 256 (mmdet's FPN_CARAFE state-dict keys below
    ``upsample_modules.i``) and the types and settings of mmcv's build_upsample_layer."""
    c = 256
    expected = {
        "nearest": {},
        "bilinear": {},
        # ConvTranspose2d(C, C, 3): C * C * 9 + C
        "deconv": {"weight": (c, c, 3, 3), "bias": (c,)},
        # PixelShufflePack: conv 3x3 C -> 4C
        "pixel_shuffle": {"upsample_conv.weight": (4 * c, c, 3, 3),
                          "upsample_conv.bias": (4 * c,)},
        # CARAFEPack: compressor 1x1 C -> 64, encoder 3x3 64 -> 5^2 * 2^2 = 100
        "carafe": {"channel_compressor.weight": (64, c, 1, 1), "channel_compressor.bias": (64,),
                   "content_encoder.weight": (100, 64, 3, 3), "content_encoder.bias": (100,)},
        # DySample-lp, 4 groups: 1x1 C -> 2 * 4 * 2^2
        "dysample": {"offset.weight": (32, c, 1, 1), "offset.bias": (32,)},
    }
    counts = {"nearest": 0, "bilinear": 0, "deconv": 590_080, "pixel_shuffle": 2_360_320,
              "carafe": 74_148, "dysample": 8_224}
    for name in UPSAMPLERS:
        module = build_upsampler(name, c)
        shapes = {k: tuple(p.shape) for k, p in module.named_parameters()}
        assert shapes == expected[name], name
        assert sum(p.numel() for p in module.parameters()) == counts[name], name
    nearest, bilinear = build_upsampler("nearest", c), build_upsampler("bilinear", c)
    assert isinstance(nearest, nn.Upsample) and nearest.mode == "nearest"
    assert bilinear.mode == "bilinear" and bilinear.align_corners is False
    deconv = build_upsampler("deconv", c)
    assert isinstance(deconv, nn.ConvTranspose2d)
    assert (deconv.stride, deconv.padding, deconv.output_padding) == ((2, 2), (1, 1), (1, 1))
    assert isinstance(build_upsampler("dysample", c, groups=8, dyscope=True), DySample)


def test_initialization_is_mmcvs():
    torch.manual_seed(0)
    carafe = build_upsampler("carafe", 256)
    assert 0.0008 < carafe.content_encoder.weight.std() < 0.0012  # normal_init(std=0.001)
    compressor = carafe.channel_compressor.weight  # xavier-uniform: bound sqrt(6 / (256 + 64))
    assert compressor.abs().max() <= (6 / (256 + 64)) ** 0.5
    assert compressor.abs().max() > 0.9 * (6 / (256 + 64)) ** 0.5
    pixel_shuffle = build_upsampler("pixel_shuffle", 16).upsample_conv
    for module in (carafe.channel_compressor, carafe.content_encoder,
                   build_upsampler("deconv", 16), pixel_shuffle):
        assert torch.count_nonzero(module.bias) == 0


def test_deconv_output_is_the_first_rows_of_fpn_carafes():
    """FPN_CARAFE's padding and output padding, (k - 1) // 2: at k = 4 its output is
    2H + 1, which the neck slices to its lateral; ours is that slice."""
    deconv = build_upsampler("deconv", 8, upsample_kernel=4)
    mmdet_like = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, output_padding=1)
    mmdet_like.load_state_dict(deconv.state_dict())
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        assert mmdet_like(x).shape[-2:] == (11, 13)
        torch.testing.assert_close(deconv(x), mmdet_like(x)[..., :10, :12])


def test_bad_arguments_name_the_argument_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"name must be one of \['nearest', 'bilinear', "
                                         r"'deconv', 'pixel_shuffle', 'carafe', 'dysample'\], "
                                         r"got 'fade'"):
        build_upsampler("fade", 16)
    with pytest.raises(ValueError, match=r"up_kernel is not an option of upsampler 'deconv'; "
                                         r"it takes \['upsample_kernel'\]"):
        build_upsampler("deconv", 16, up_kernel=5)
    with pytest.raises(ValueError, match="groups is not an option of upsampler 'bilinear'; "
                                         "it takes no options"):
        build_upsampler("bilinear", 16, groups=4)
    with pytest.raises(ValueError, match="upsample_kernel must be odd"):
        build_upsampler("pixel_shuffle", 16, upsample_kernel=2)
    with pytest.raises(ValueError, match=r"up_group=3 must divide channels=16; allowed values: "
                                         r"\[1, 2, 4, 8, 16\]"):
        build_upsampler("carafe", 16, up_group=3)
    with pytest.raises(ValueError, match="scale must be an int >= 2, got 1"):
        build_upsampler("nearest", 16, 1)
    with pytest.raises(ValueError, match="DySample: style must be one of"):
        build_upsampler("dysample", 16, style="xy")
    names = {"name": "MODEL.FPN.UPSAMPLER", "channels": "MODEL.FPN.OUT_CHANNELS",
             "up_group": "MODEL.FPN.CARAFE.UP_GROUP", "groups": "MODEL.FPN.DYSAMPLE.GROUPS"}
    with pytest.raises(ValueError, match=r"^MODEL.FPN.UPSAMPLER must be one of"):
        check_upsampler_arguments("fade", 16, names=names)
    with pytest.raises(ValueError, match=r"^MODEL.FPN.CARAFE.UP_GROUP=3 must divide "
                                         r"MODEL.FPN.OUT_CHANNELS=16"):
        check_upsampler_arguments("carafe", 16, options={"up_group": 3}, names=names)
    with pytest.raises(ValueError, match=r"^MODEL.FPN.DYSAMPLE.GROUPS=3 must divide "
                                         r"MODEL.FPN.OUT_CHANNELS=16"):
        check_upsampler_arguments("dysample", 16, options={"groups": 3}, names=names)
    assert check_upsampler_arguments("carafe", 16) == {
        "up_kernel": 5, "up_group": 1, "encoder_kernel": 3, "encoder_dilation": 1,
        "compressed_channels": 64}
