"""ViTDet's simple feature pyramid with DySample upsampling (DySampleSimpleFeaturePyramid)."""
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import SimpleFeaturePyramid
from torch import nn

from dysample_d2 import DySample, DySampleSimpleFeaturePyramid, to_dysample
from dysample_d2.config import check_dysample_config

from helpers import config_path
from test_lazy_configs import dysample_params, stated_dysample_params, train_and_infer

pytest.importorskip("timm")  # Detectron2's ViT blocks use timm's DropPath and Mlp

NEAREST = "ViTDet/mask_rcnn_vitdet_b_100ep.py"
DYSAMPLE = "ViTDet/mask_rcnn_vitdet_b_DySample_100ep.py"
REPLACED = {"simfp_2.0", "simfp_2.3", "simfp_3.0"}  # the ConvTranspose2d steps


def load(name, tiny=True, embed_dim=64):
    """The config; tiny: a 2-block ViT on 128 px inputs, light RPN and ROI heads."""
    cfg = LazyConfig.load(config_path(name))
    net = cfg.model.backbone.net
    net.depth = 2 if tiny else 1  # the pyramid's size does not depend on the depth
    net.window_block_indexes = [0]
    net.embed_dim = embed_dim
    net.drop_path_rate = 0.0
    if tiny:
        net.num_heads, net.img_size, net.window_size = 2, 128, 4
        cfg.model.backbone.square_pad = 128
        cfg.model.proposal_generator.pre_nms_topk = (200, 200)
        cfg.model.proposal_generator.post_nms_topk = (50, 50)
        cfg.model.roi_heads.batch_size_per_image = 32
    return cfg


def build_pyramid(name, **kwargs):
    torch.manual_seed(0)
    return instantiate(load(name, **kwargs).model.backbone)


def replaced_params(pyramid):
    """Parameters of the modules at the replaced stage indices."""
    return sum(p.numel() for name in REPLACED for p in pyramid.get_submodule(name).parameters())


def test_vit_b_parameter_counts_against_the_deconvolutions():
    """ViT-B (768 channels): the three upsampling steps, DySample's share as the config
    states, and the deconvolutions they replace."""
    ours = build_pyramid(DYSAMPLE, tiny=False, embed_dim=768)
    theirs = build_pyramid(NEAREST, tiny=False, embed_dim=768)
    assert dysample_params(ours) == stated_dysample_params(DYSAMPLE) == 30_816
    assert replaced_params(ours) == 695_328
    assert replaced_params(theirs) == 2_655_168 == 2 * (2 * 768**2 + 384) + 2 * 384**2 + 192
    assert all(isinstance(theirs.get_submodule(n), nn.ConvTranspose2d) for n in REPLACED)
    # nothing else changed
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(theirs) - total(ours) == 2_655_168 - 695_328


def test_vitdet_checkpoint_loads_with_only_the_upsampling_steps_differing():
    ours, theirs = build_pyramid(DYSAMPLE), build_pyramid(NEAREST)
    assert type(theirs) is SimpleFeaturePyramid and isinstance(ours, DySampleSimpleFeaturePyramid)
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert set(result.unexpected_keys) == {f"{n}.{p}" for n in REPLACED for p in ("weight", "bias")}
    upsampler = ("upsample.offset.weight", "upsample.offset.bias", "upsample.init_pos")
    assert set(result.missing_keys) == {
        f"{n}.{p}" for n in REPLACED for p in ("reduce.weight", "reduce.bias") + upsampler
    }
    # the LayerNorm between the two 4x steps loads too
    assert "simfp_2.1.weight" in theirs.state_dict() and "simfp_2.1.weight" in ours.state_dict()


def test_outputs_match_the_pyramid_shapes():
    ours, theirs = build_pyramid(DYSAMPLE).eval(), build_pyramid(NEAREST).eval()
    assert ours.output_shape() == theirs.output_shape()
    assert ours.padding_constraints == theirs.padding_constraints
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert list(a) == list(b) == ["p2", "p3", "p4", "p5", "p6"]
    assert all(a[k].shape == b[k].shape for k in a)
    assert b["p2"].shape == (1, 256, 32, 32)


def test_trains_and_infers_at_tiny_settings():
    model = train_and_infer(load(DYSAMPLE))
    assert len([m for m in model.modules() if isinstance(m, DySample)]) == 3


@pytest.mark.parametrize("key, value, message", [
    ("style", "xx", "style must be one of ['lp', 'pl'], got 'xx'"),
    ("groups", 5, "groups=5 must divide"),
])
def test_bad_values_fail_early_and_at_instantiate(key, value, message):
    cfg = load(DYSAMPLE)
    cfg.model.backbone[key] = value
    with pytest.raises(ValueError, match=r"^model\.backbone\.") as err:
        check_dysample_config(cfg)
    assert message in str(err.value)
    with pytest.raises(ValueError) as err:
        instantiate(cfg.model.backbone)
    assert message in str(err.value)
    with pytest.raises(ValueError, match=r"^model\.backbone\."):
        to_dysample(load(NEAREST).model.backbone, **{key: value})
