"""MaskRCNNCarafeUpsampleHead (dysample_d2/modeling/carafe_mask_head.py): mmdet's FCNMaskHead with
a CARAFE upsample, against that head written out in float64; its config keys' refusals; a
training step of the whole CARAFE Mask R-CNN."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dysample_d2 import MaskRCNNCarafeUpsampleHead, add_dysample_config
from tools.engine.checks import UserValueError
from helpers import load_config, synthetic_batch
from test_upsamplers import mmcv_kernels, naive_carafe

MASK_CARAFE = "COCO-InstanceSegmentation/mask_rcnn_R_50_CARAFE_CarafeFPN_1x.yaml"


def test_forward_is_fcn_mask_heads_with_carafe_and_no_relu_after_it():
    """convs (3x3 + ReLU) -> CARAFE -> 1x1 logits, as FCNMaskHead.forward with upsample_cfg
    type "carafe"; gradients reach CARAFE."""
    torch.manual_seed(0)
    head = MaskRCNNCarafeUpsampleHead(
        ShapeSpec(channels=8), num_classes=3, conv_dims=[8, 8, 8],
        carafe_options={"compressed_channels": 4}).double()
    torch.nn.init.normal_(head.upsample.content_encoder.weight, std=0.3)
    assert [name for name, _ in head.named_children()] == [
        "mask_fcn1", "mask_fcn2", "upsample", "predictor"]
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    out = head.layers(x)
    expected = x
    for conv in (head.mask_fcn1, head.mask_fcn2):
        expected = F.relu(F.conv2d(expected, conv.weight, conv.bias, padding=1))
    upsampled = naive_carafe(expected, mmcv_kernels(head.upsample, expected), 5, 1, 2)
    expected = F.conv2d(upsampled, head.predictor.weight, head.predictor.bias)
    assert out.shape == (2, 3, 14, 14)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert head.upsample.content_encoder.weight.grad.abs().sum() > 0


def test_carafe_keeps_its_channels():
    with pytest.raises(ValueError, match=r"conv_dims\[-1\] must be 8, got 16"):
        MaskRCNNCarafeUpsampleHead(ShapeSpec(channels=8), num_classes=3, conv_dims=[8, 16])


def test_the_config_builds_mmdets_carafe_mask_head():
    """256 channels, mmdet's CARAFE defaults: compressor 1x1 256->64, encoder 3x3 64->100."""
    cfg = get_cfg()
    add_dysample_config(cfg)
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNCarafeUpsampleHead"])
    head = MaskRCNNCarafeUpsampleHead(cfg, ShapeSpec(channels=256))
    shapes = {k: tuple(v.shape) for k, v in head.upsample.state_dict().items()}
    assert shapes == {"channel_compressor.weight": (64, 256, 1, 1),
                      "channel_compressor.bias": (64,),
                      "content_encoder.weight": (100, 64, 3, 3),
                      "content_encoder.bias": (100,)}


@pytest.mark.parametrize("key, value, message", [
    ("UP_KERNEL", "4", "MODEL.ROI_MASK_HEAD.CARAFE.UP_KERNEL must be odd"),
    ("UP_GROUP", "3", "MODEL.ROI_MASK_HEAD.CARAFE.UP_GROUP=3 must divide "
                      "MODEL.ROI_MASK_HEAD.CONV_DIM=256"),
])
def test_bad_carafe_keys_are_refused_naming_the_key(key, value, message):
    with pytest.raises(UserValueError, match=message):
        load_config(MASK_CARAFE, opts=[f"MODEL.ROI_MASK_HEAD.CARAFE.{key}", value])


def test_the_carafe_mask_rcnn_trains_a_step():
    cfg = load_config(MASK_CARAFE, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    assert isinstance(model.roi_heads.mask_head, MaskRCNNCarafeUpsampleHead)
    with EventStorage():
        losses = model(synthetic_batch(cfg))
    assert torch.isfinite(losses["loss_mask"])
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.upsample.content_encoder.weight.grad.abs().sum() > 0
