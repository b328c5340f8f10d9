"""The CARAFE-layout FPN (build_resnet_carafe_fpn_backbone): the layout, parameter counts and
arithmetic of the FPN_CARAFE neck printed in the DySample authors' training logs
(tests/fixtures/mmdet_keys_carafe_rcnn_released.json), and its config keys."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from omegaconf import OmegaConf

from authors_dysample import AuthorsDySample
from dysample_d2 import CarafeFPN, DySample, to_carafe_fpn
from dysample_d2.config import check_dysample_config
from tools.engine import UserInputError, setup_config

from helpers import load_config

RELEASED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                        "mmdet_keys_carafe_rcnn_released.json")
with open(RELEASED) as _f:
    RELEASED_MODELS = json.load(_f)["models"]

DET = "COCO-Detection/faster_rcnn_R_50_{}_1x.yaml"
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
TINY_BACKBONE = R18 + ["MODEL.FPN.OUT_CHANNELS", "32"]


def neck(name, opts=()):
    """The CARAFE-layout backbone of config `name` (random init, eval mode)."""
    return build_backbone(load_config(name, opts=list(opts))).eval()


def neck_state(backbone):
    return {k: v for k, v in backbone.state_dict().items() if not k.startswith("bottom_up.")}


def upsampler_parameters(backbone):
    return sum(p.numel() for m in backbone.upsamplers for p in m.parameters())


@pytest.mark.parametrize("system, opts, weights, biases", [
    ("DySample_CarafeFPN", [], 4 * 8192, 4 * 32),                     # the paper's +32.7K
    ("DySamplePlus_CarafeFPN", [], 4 * 16384, 4 * 64),                # +65.5K, biased scope
    ("DySamplePlus_CarafeFPN", ["MODEL.FPN.DYSAMPLE.SCOPE_BIAS", "False"], 4 * 16384, 4 * 32),
    ("CarafeFPN", [], 0, 0),
])
def test_upsampler_parameter_counts(system, opts, weights, biases):
    backbone = neck(DET.format(system), R18 + opts)  # the neck's channels: 256 as the paper's
    assert len(backbone.upsamplers) == 4
    conv_weights = sum(p.numel() for m in backbone.upsamplers
                       for n, p in m.named_parameters() if n.endswith("weight"))
    assert (conv_weights, upsampler_parameters(backbone) - conv_weights) == (weights, biases)


@pytest.mark.parametrize("released, config_name, opts", [
    ("faster_r50_dysampleplus", DET.format("DySamplePlus_CarafeFPN"), []),
    ("mask_r50_dysampleplus",
     "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x.yaml", []),
])
def test_neck_has_the_logged_tensors_one_for_one(released, config_name, opts):
    """Every neck tensor of the log, by shape in mmdet's module order, has the tensor of the
    same shape in this neck, and nothing more (the renaming itself: test_convert_mmdet.py)."""
    logged = {k: v for k, v in RELEASED_MODELS[released]["keys"].items() if k.startswith("neck.")}
    ours = {k: list(v.shape) for k, v in neck_state(neck(config_name, opts)).items()}
    assert len(ours) == len(logged)
    assert sorted(map(tuple, ours.values())) == sorted(map(tuple, logged.values()))
    # what the paper counts: the upsamplers' conv weights, 4 x 16,384 for DySample+
    assert sum(torch.Size(s).numel() for k, s in logged.items()
               if "upsample_modules" in k and k.endswith(".weight")) == 4 * 16384


def reference_fpn_carafe(backbone, image, upsample):
    """FPN_CARAFE's forward, written out: the laterals (the fifth a stride-2 conv on C5), the
    top-down sums with the full 2x map sliced to the lateral, the output convs."""
    features = backbone.bottom_up(image)
    inputs = [features[f] for f in ("res2", "res3", "res4", "res5")] + [features["res5"]]
    laterals = [conv(x) for conv, x in zip(backbone.lateral_convs, inputs)]
    for i in range(4, 0, -1):
        up = upsample(i - 1, laterals[i])
        h, w = laterals[i - 1].shape[-2:]
        laterals[i - 1] = laterals[i - 1] + up[:, :, :h, :w]
    return [conv(x) for conv, x in zip(backbone.output_convs, laterals)]


@pytest.mark.parametrize("size", [(128, 192), (100, 76)])  # a multiple of 64, and not
def test_forward_is_fpn_carafe_with_the_authors_dysample(size):
    backbone = neck(DET.format("DySamplePlus_CarafeFPN"), TINY_BACKBONE)
    authors = []
    for module in backbone.upsamplers:
        twin = AuthorsDySample(32, 2, "lp", 4, True, scope_bias=True)
        torch.nn.init.normal_(module.offset.weight, std=0.5)  # offsets of about a pixel
        twin.load_state_dict(module.state_dict(), strict=True)
        authors.append(twin)
    image = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = backbone(image)
        expected = reference_fpn_carafe(backbone, image, lambda i, x: authors[i](x))
    assert list(ours) == ["p2", "p3", "p4", "p5", "p6"]
    for name, want in zip(ours, expected):
        torch.testing.assert_close(ours[name], want, rtol=1e-4, atol=1e-4)
    if size == (100, 76):  # the crop is not DySample's own resampling to the lateral's size
        top = backbone.bottom_up(image)
        lateral = backbone.fpn_lateral6(top["res5"])
        target = backbone.fpn_lateral5(top["res5"])
        cropped = backbone.fpn_upsample6(lateral)[..., :target.shape[-2], :target.shape[-1]]
        resampled = backbone.fpn_upsample6(lateral, size=target.shape[-2:])
        assert (cropped - resampled).abs().max() > 1e-3


def test_nearest_is_interpolation_then_slice():
    backbone = neck(DET.format("CarafeFPN"), TINY_BACKBONE)
    assert not any(isinstance(m, DySample) for m in backbone.modules())
    image = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        ours = backbone(image)
        expected = reference_fpn_carafe(
            backbone, image, lambda i, x: F.interpolate(x, scale_factor=2, mode="nearest"))
    for name, want in zip(ours, expected):
        assert torch.equal(ours[name], want), name


def test_outputs_strides_and_padding():
    backbone = neck(DET.format("DySample_CarafeFPN"), TINY_BACKBONE)
    shapes = backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                        "p6": 64}
    assert backbone.size_divisibility == 64  # the logs' Pad size_divisor=64
    assert [n for n, _ in backbone.named_children() if n.startswith("fpn_upsample")] == [
        "fpn_upsample3", "fpn_upsample4", "fpn_upsample5", "fpn_upsample6"]
    assert tuple(backbone.fpn_lateral6.weight.shape[1:]) == (512, 3, 3)  # on C5 of the R-18
    assert backbone.fpn_lateral6.stride == (2, 2)


def test_neck_convs_start_from_fpn_carafes_xavier_init():
    """FPN_CARAFE.init_weights xavier-initialises every neck conv, the upsamplers' too."""
    torch.manual_seed(0)
    backbone = neck(DET.format("DySamplePlus_CarafeFPN"), R18)
    offset = backbone.fpn_upsample3.offset.weight
    bound = (6 / (256 + 32)) ** 0.5
    assert offset.abs().max() <= bound and offset.std() > 0.5 * bound / 3 ** 0.5
    assert backbone.fpn_upsample3.scope.weight.abs().max() > 0
    assert all(torch.count_nonzero(p) == 0 for n, p in backbone.named_parameters()
               if n.endswith(".bias") and not n.startswith("bottom_up."))


@pytest.mark.parametrize("opts, words", [
    (["MODEL.FPN.UPSAMPLER", "bicubic"], "MODEL.FPN.UPSAMPLER must be one of ['nearest', "
     "'bilinear', 'deconv', 'pixel_shuffle', 'carafe', 'dysample'], got 'bicubic'"),
    (["MODEL.FPN.UPSAMPLER", "carafe", "MODEL.FPN.CARAFE.UP_KERNEL", "4"],
     "MODEL.FPN.CARAFE.UP_KERNEL must be odd"),
    (["MODEL.FPN.UPSAMPLER", "carafe", "MODEL.FPN.CARAFE.UP_GROUP", "3"],
     "MODEL.FPN.CARAFE.UP_GROUP=3 must divide MODEL.FPN.OUT_CHANNELS=256; allowed values: "
     "[1, 2, 4, 8, 16, 32, 64, 128, 256]"),
    (["MODEL.FPN.UPSAMPLER", "pixel_shuffle", "MODEL.FPN.UPSAMPLE_KERNEL", "2"],
     "MODEL.FPN.UPSAMPLE_KERNEL must be odd"),
    (["MODEL.FPN.FUSE_TYPE", "avg"], "MODEL.FPN.FUSE_TYPE must be 'sum'"),
    (["MODEL.FPN.DYSAMPLE.GROUPS", "3"], "MODEL.FPN.DYSAMPLE.GROUPS"),
])
def test_bad_values_are_refused_when_the_config_is_read(opts, words):
    with pytest.raises(UserInputError) as error:
        load_config(DET.format("DySample_CarafeFPN"), opts=opts)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_upsampler_keys_are_not_checked_where_no_fpn_reads_them():
    cfg = load_config(DET.format("FPN"), opts=["MODEL.FPN.UPSAMPLER", "bicubic",
                                               "MODEL.FPN.CARAFE.UP_KERNEL", "4"])
    assert cfg.MODEL.FPN.UPSAMPLER == "bicubic"


def lazy_fpn():
    from detectron2.modeling.backbone import BasicStem, ResNet

    bottom_up = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=18, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"])
    return OmegaConf.create({"backbone": L(FPN)(
        bottom_up=bottom_up, in_features="${.bottom_up.out_features}", out_channels=32,
        top_block=L(LastLevelMaxPool)(), norm="")})


def test_lazy_node_becomes_the_carafe_fpn():
    cfg = lazy_fpn()
    to_carafe_fpn(cfg.backbone, upsampler="dysample", dyscope=True)
    assert "top_block" not in cfg.backbone and cfg.backbone.groups == 4
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, CarafeFPN) and len(backbone.upsamplers) == 4
    assert all(m.dyscope for m in backbone.upsamplers)
    assert backbone(torch.randn(1, 3, 64, 64))["p6"].shape[-2:] == (1, 1)

    cfg.backbone.upsampler = "bicubic"
    with pytest.raises(ValueError, match=r"backbone\.upsampler must be one of"):
        check_dysample_config(cfg)
    with pytest.raises(TypeError, match="unknown arguments \\['group'\\] of upsampler 'dysample'"):
        to_carafe_fpn(lazy_fpn().backbone, group=4)


def test_lazy_node_takes_any_upsampler_and_its_options():
    cfg = lazy_fpn()
    to_carafe_fpn(cfg.backbone, upsampler="carafe", up_kernel=3)
    backbone = instantiate(cfg.backbone)
    assert [m.up_kernel for m in backbone.upsamplers] == [3] * 4
    assert backbone(torch.randn(1, 3, 64, 64))["p2"].shape[-2:] == (16, 16)
    cfg.backbone.up_kernel = 4
    with pytest.raises(ValueError, match=r"^backbone\.up_kernel must be odd"):
        check_dysample_config(cfg)
    with pytest.raises(TypeError, match=r"of upsampler 'deconv'; allowed: \['upsample_kernel'\]"):
        to_carafe_fpn(lazy_fpn().backbone, upsampler="deconv", up_kernel=3)


LAZY_CARAFE_FPN = """
from dysample_d2.modeling.lazy import model_zoo_recipe, to_carafe_fpn

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model.backbone = to_carafe_fpn(model.backbone, upsampler="carafe")
"""


def test_lazy_upsampler_options_are_keys_of_the_node(tmp_path):
    """CarafeFPN takes its upsampler's options as keywords: an override under an options
    dict is refused naming the node's key, which is accepted and checked."""
    config = tmp_path / "carafe_fpn.py"
    config.write_text(LAZY_CARAFE_FPN)
    with pytest.raises(UserInputError) as error:
        setup_config(str(config), ["model.backbone.upsampler_options.up_kernel=3"])
    assert str(error.value) == (
        "override 'model.backbone.upsampler_options.up_kernel=3': the upsampler_options of "
        "model.backbone are keys of model.backbone itself: set model.backbone.up_kernel=...")
    assert setup_config(str(config), ["model.backbone.up_kernel=3"]).model.backbone.up_kernel == 3
    with pytest.raises(UserInputError, match=r"^model\.backbone\.up_kernel must be odd"):
        setup_config(str(config), ["model.backbone.up_kernel=4"])
    with pytest.raises(UserInputError, match=r"^model\.backbone\.up_kernel is not an "
                                             r"option of upsampler 'dysample'"):
        setup_config(str(config), ["model.backbone.upsampler=dysample"])


@pytest.mark.parametrize("upsampler", ["bilinear", "deconv", "pixel_shuffle", "carafe"])
def test_each_upsampler_is_the_top_down_step(upsampler):
    """The sum of each step is lateral + upsampler(top) cropped, with the modules looked up by
    name (fpn_upsample{k}); the deconvolution and CARAFE start from FPN_CARAFE's init."""
    backbone = neck(DET.format("CarafeFPN"), TINY_BACKBONE + ["MODEL.FPN.UPSAMPLER", upsampler])
    assert [type(m) for m in backbone.upsamplers] == [type(backbone.fpn_upsample3)] * 4
    if upsampler == "carafe":
        assert backbone.fpn_upsample3.content_encoder.weight.std() < 0.01  # N(0, 0.001)
    image = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        ours = backbone(image)
        expected = reference_fpn_carafe(backbone, image, lambda i, x: backbone.upsamplers[i](x))
    for name, want in zip(ours, expected):
        assert torch.equal(ours[name], want), name
