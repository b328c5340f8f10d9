import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from dysample_d2 import DySample, DySampleFPN

from helpers import load_config

R50_DET = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
R50_DYSAMPLE = "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"
R50_DYSAMPLE_PLUS = "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml"
R101_NEAREST = "COCO-Detection/faster_rcnn_R_101_FPN_1x.yaml"
R101_DYSAMPLE_PLUS = "COCO-Detection/faster_rcnn_R_101_DySamplePlus_FPN_1x.yaml"


def backbone(name, tiny=False, opts=()):
    torch.manual_seed(0)
    return build_backbone(load_config(name, tiny=tiny, opts=opts)).eval()


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def test_outputs_match_detectron2_fpn():
    nearest, dysample = backbone(R50_DET, tiny=True), backbone(R50_DYSAMPLE, tiny=True)
    assert isinstance(dysample, DySampleFPN)
    assert dysample.output_shape() == nearest.output_shape()
    assert dysample.size_divisibility == nearest.size_divisibility == 32
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = nearest(x), dysample(x)
    assert list(a) == list(b) == ["p2", "p3", "p4", "p5", "p6"]
    for name in a:
        assert a[name].shape == b[name].shape
    assert b["p2"].shape == (1, 256, 24, 32)
    # same weights except the upsamplers: P5/P6 do not depend on them, P2 does
    dysample.load_state_dict(nearest.state_dict(), strict=False)
    with torch.no_grad():
        b = dysample(x)
    assert torch.allclose(a["p5"], b["p5"]) and torch.allclose(a["p6"], b["p6"])
    assert not torch.allclose(a["p2"], b["p2"])


@pytest.mark.parametrize(
    "nearest, dysample, expected_delta",
    [
        (R50_DET, R50_DYSAMPLE, 3 * (256 * 32 + 32)),
        (R50_DET, R50_DYSAMPLE_PLUS, 3 * (256 * 32 + 32) + 3 * 256 * 32),
        (R101_NEAREST, R101_DYSAMPLE_PLUS, 3 * (256 * 32 + 32) + 3 * 256 * 32),
    ],
)
def test_parameter_delta_matches_released_neck(nearest, dysample, expected_delta):
    nearest_model, dysample_model = backbone(nearest), backbone(dysample)
    assert num_params(dysample_model) - num_params(nearest_model) == expected_delta
    upsamplers = [m for m in dysample_model.modules() if isinstance(m, DySample)]
    assert len(upsamplers) == 3  # one per top-down step, P6 comes from max-pool


def test_scope_bias_key_adds_the_first_release_bias():
    plain = backbone(R50_DYSAMPLE_PLUS, tiny=True)
    biased = backbone(R50_DYSAMPLE_PLUS, tiny=True, opts=["MODEL.FPN.DYSAMPLE.SCOPE_BIAS", "True"])
    assert num_params(biased) - num_params(plain) == 3 * 32
    assert {k for k in biased.state_dict() if k.endswith("scope.bias")} == {
        f"fpn_upsample{stage}.scope.bias" for stage in (3, 4, 5)
    }


def test_nearest_checkpoint_loads_with_only_upsamplers_missing():
    nearest, dysample = backbone(R50_DET, tiny=True), backbone(R50_DYSAMPLE_PLUS, tiny=True)
    result = dysample.load_state_dict(nearest.state_dict(), strict=False)
    assert result.unexpected_keys == []
    expected = {
        f"fpn_upsample{stage}.{param}"
        for stage in (3, 4, 5)
        for param in ("offset.weight", "offset.bias", "scope.weight", "init_pos")
    }
    assert set(result.missing_keys) == expected


def test_retinanet_builder_has_p6_p7():
    cfg = load_config(R50_DYSAMPLE, tiny=True)
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_dysample_fpn_backbone"
    cfg.MODEL.FPN.DYSAMPLE.STYLE = "pl"
    model = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6", "p7"]
    assert out["p6"].shape[-2:] == (2, 2) and out["p7"].shape[-2:] == (1, 1)
    assert type(model.top_block).__name__ == "LastLevelP6P7"
    assert all(m.style == "pl" for m in model.modules() if isinstance(m, DySample))


@pytest.mark.parametrize(
    "key_value, error, message",
    [
        (["STYLE", "bilinear"], ValueError,
         "MODEL.FPN.DYSAMPLE.STYLE must be one of ['lp', 'pl'], got 'bilinear'"),
        (["GROUPS", 3], ValueError,
         "MODEL.FPN.DYSAMPLE.GROUPS=3 must divide MODEL.FPN.OUT_CHANNELS=256; allowed values: [1, 2, 4"),
        (["GROUPS", 0], ValueError,
         "MODEL.FPN.DYSAMPLE.GROUPS must be an int >= 1, got 0"),
        (["DYSCOPE", "yes"], ValueError,
         "MODEL.FPN.DYSAMPLE.DYSCOPE must be True or False"),
        (["SCOPE_BIAS", True], ValueError,
         "MODEL.FPN.DYSAMPLE.SCOPE_BIAS=True needs MODEL.FPN.DYSAMPLE.DYSCOPE=True"),
        (["SCOPE_BIAS", 1], ValueError,
         "MODEL.FPN.DYSAMPLE.SCOPE_BIAS must be True or False, got 1"),
    ],
)
def test_invalid_config_values_raise_at_build(key_value, error, message):
    cfg = load_config(R50_DYSAMPLE, tiny=True)
    setattr(cfg.MODEL.FPN.DYSAMPLE, *key_value)  # as code would; YACS checks merged files
    with pytest.raises(error) as err:
        build_backbone(cfg)
    assert message in str(err.value)


def test_missing_add_dysample_config_is_explained():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_dysample_fpn_backbone"
    with pytest.raises(KeyError, match="add_dysample_config"):
        build_backbone(cfg)


def test_wrong_type_in_config_file_is_rejected_with_key_name():
    with pytest.raises(ValueError, match="MODEL.FPN.DYSAMPLE.DYSCOPE"):
        load_config(R50_DYSAMPLE, opts=["MODEL.FPN.DYSAMPLE.DYSCOPE", "'yes'"])


def separate_sum_forward(fpn, x):
    """DySampleFPN's top-down pathway written as Detectron2's FPN: lateral + upsample(prev)."""
    features = fpn.bottom_up(x)
    prev = fpn.lateral_convs[0](features[fpn.in_features[-1]])
    results = [fpn.output_convs[0](prev)]
    for idx, (lateral_conv, output_conv) in enumerate(
        zip(fpn.lateral_convs[1:], fpn.output_convs[1:]), start=1
    ):
        prev = lateral_conv(features[fpn.in_features[-idx - 1]]) + fpn.upsamplers[idx - 1](prev)
        results.insert(0, output_conv(prev))
    return results


@pytest.mark.parametrize("norm", ["", "GN", "BN"])
def test_in_place_lateral_sum_trains_as_the_separate_sum(norm):
    """The top-down sum into the lateral features, in place, gives the separate sum's outputs
    and gradients, whatever norm the lateral convs have (autograd would refuse an in-place
    change of a tensor a backward needs)."""
    model = backbone(R50_DYSAMPLE_PLUS, tiny=True, opts=["MODEL.FPN.NORM", norm]).train()
    for upsampler in model.upsamplers:
        torch.nn.init.normal_(upsampler.offset.weight, std=0.05)
        torch.nn.init.normal_(upsampler.scope.weight, std=0.05)
    x = torch.randn(2, 3, 64, 96)
    params = [p for p in model.parameters() if p.requires_grad]
    expected = separate_sum_forward(model, x)
    expected_grads = torch.autograd.grad(sum(r.square().sum() for r in expected), params)
    out = model(x)
    results = [out[f"p{level}"] for level in (2, 3, 4, 5)]
    for r, e in zip(results, expected):
        torch.testing.assert_close(r, e, rtol=0, atol=0)
    grads = torch.autograd.grad(sum(r.square().sum() for r in results), params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_takes_fpn_arguments_by_the_same_names_and_defaults():
    """A lazy config's L(FPN)(...) node becomes DySample-FPN by its target alone."""
    import inspect

    from detectron2.modeling.backbone import FPN

    fpn = inspect.signature(FPN.__init__).parameters
    ours = inspect.signature(DySampleFPN.__init__).parameters
    assert list(ours)[: len(fpn)] == list(fpn)
    assert all(ours[name].default == fpn[name].default for name in fpn)
    upsampler, options = list(ours.values())[len(fpn):]
    assert (upsampler.name, upsampler.default) == ("upsampler", "dysample")
    assert options.kind is options.VAR_KEYWORD  # the upsampler's: DySample's style, groups, ...


@pytest.mark.parametrize("fuse", ["sum", "avg"])
def test_nearest_upsampler_is_detectron2s_fpn_exactly(fuse):
    """MODEL.FPN.UPSAMPLER "nearest": Detectron2's FPN, bit for bit, with the same weights."""
    opts = ["MODEL.FPN.FUSE_TYPE", fuse]
    theirs = backbone(R50_DET, tiny=True, opts=opts)
    ours = backbone(R50_DYSAMPLE, tiny=True, opts=opts + ["MODEL.FPN.UPSAMPLER", "nearest"])
    assert not any(isinstance(m, DySample) for m in ours.modules())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert list(a) == list(b)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("upsampler", ["bilinear", "deconv", "pixel_shuffle", "carafe"])
def test_other_upsamplers_add_the_upsampled_top_to_the_lateral(upsampler):
    model = backbone(R50_DYSAMPLE, tiny=True, opts=["MODEL.FPN.UPSAMPLER", upsampler])
    assert [n for n, _ in model.named_children() if n.startswith("fpn_upsample")] == [
        "fpn_upsample5", "fpn_upsample4", "fpn_upsample3"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        expected = separate_sum_forward(model, x)
    for level, want in zip((2, 3, 4, 5), expected):
        assert torch.equal(out[f"p{level}"], want)
