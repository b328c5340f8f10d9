"""The lazy configs under configs/: each loads Detectron2's own config and changes only the
upsampler; at tiny settings each builds, trains two steps and runs inference on CPU."""
import re
import types

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.backbone import FPN
from detectron2.utils.events import EventStorage
from omegaconf import DictConfig, ListConfig, OmegaConf

from dysample_d2 import DySample, DySampleFPN, to_dysample
from dysample_d2.config import check_dysample_config
from dysample_d2.modeling.lazy import LAZY_LAYOUT, model_zoo_recipe

from helpers import config_path, synthetic_batch

# config -> the Detectron2 model-zoo config it changes (None: its nearest sibling here)
FPN_CONFIGS = {
    "new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py":
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
    "new_baselines/mask_rcnn_R_50_DySamplePlus_FPN_100ep_LSJ.py":
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
    "new_baselines/mask_rcnn_R_101_DySample_FPN_100ep_LSJ.py":
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
    "new_baselines/mask_rcnn_R_101_DySamplePlus_FPN_100ep_LSJ.py":
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
    "new_baselines/mask_rcnn_regnety_4gf_dds_DySample_FPN_100ep_LSJ.py":
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ.py",
    "COCO-Detection/retinanet_R_50_DySample_FPN_1x.py": "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.py":
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py",
    "Misc/cascade_mask_rcnn_R_50_DySample_FPN_1x.py": None,
}
NEAREST_CONFIGS = [
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.py",
]
VITDET_CONFIGS = ["ViTDet/mask_rcnn_vitdet_b_100ep.py", "ViTDet/mask_rcnn_vitdet_b_DySample_100ep.py"]
UPSAMPLER_KEYS = ("offset.weight", "offset.bias", "init_pos")
UPSAMPLER_PLUS_KEYS = UPSAMPLER_KEYS + ("scope.weight",)


def load(name):
    return LazyConfig.load(config_path(name))


def stated_dysample_params(name):
    """The 'DySample parameters: N' figure of a config's docstring."""
    with open(config_path(name)) as f:
        match = re.search(r"DySample parameters: ([\d,]+)", f.read())
    assert match, f"{name} states no 'DySample parameters: N'"
    return int(match.group(1).replace(",", ""))


def dysample_params(module):
    return sum(p.numel() for m in module.modules() if isinstance(m, DySample)
               for p in m.parameters())


def plain(node):
    """A config as comparable containers (a lambda as its source location: each load makes
    a new function object)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(plain(v) for v in node)
    if isinstance(node, types.FunctionType):
        return (node.__code__.co_filename, node.__code__.co_firstlineno)
    return node


def make_tiny(model):
    """Small inputs and light heads; GroupNorm ResNets (random-init FrozenBN diverges)."""
    bottom_up = model.backbone.get("bottom_up")
    if bottom_up is not None and "stages" in bottom_up:  # ResNet: R50 with GroupNorm
        bottom_up.stages.depth = 50
        bottom_up.stem.norm = bottom_up.stages.norm = "GN"
    if "proposal_generator" in model:
        model.proposal_generator.pre_nms_topk = (200, 200)
        model.proposal_generator.post_nms_topk = (50, 50)
    if "roi_heads" in model:
        model.roi_heads.batch_size_per_image = 32
    return model


def train_and_infer(cfg, steps=2):
    """Build cfg.model and its optimizer as Detectron2's lazy trainer does; train `steps`."""
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.lr_multiplier)
    assert 0 < scheduler(0.5) <= 1
    model.train()
    batch = synthetic_batch(None, batch_size=2, height=64, width=96)
    upsampler_params = [p for m in model.modules() if isinstance(m, DySample)
                        for p in m.parameters()]
    assert upsampler_params
    for _ in range(steps):
        with EventStorage():
            losses = model(batch)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in upsampler_params)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": batch[0]["image"], "height": 64, "width": 96}])
    assert len(outputs) == 1 and outputs[0]
    return model


@pytest.mark.parametrize("name", sorted(FPN_CONFIGS) + NEAREST_CONFIGS + VITDET_CONFIGS)
def test_config_has_the_lazy_layout(name):
    cfg = load(name)
    assert set(LAZY_LAYOUT) <= set(cfg)
    check_dysample_config(cfg)
    stated_dysample_params(name)


@pytest.mark.parametrize("name", sorted(FPN_CONFIGS))
def test_only_the_upsampler_differs_from_detectron2(name):
    base = FPN_CONFIGS[name]
    ours = load(name)
    theirs = dict(zip(LAZY_LAYOUT, model_zoo_recipe(base))) if base else load(
        name.replace("_DySample", ""))
    assert ours.model.backbone._target_ is DySampleFPN
    assert theirs["model"].backbone._target_ is FPN
    for key in ("style", "groups", "dyscope", "scope_bias"):
        ours.model.backbone.pop(key)
    ours.model.backbone._target_ = FPN
    for key in LAZY_LAYOUT:
        assert plain(ours[key]) == plain(theirs[key]), key


def fast_or_slow(names, fast):
    """Parameters for the names; those not in `fast` marked slow (the same code, larger)."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in sorted(names)]


R50_DYSAMPLE = "new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py"
R50_DYSAMPLE_PLUS = "new_baselines/mask_rcnn_R_50_DySamplePlus_FPN_100ep_LSJ.py"
RETINANET = "COCO-Detection/retinanet_R_50_DySample_FPN_1x.py"


@pytest.mark.parametrize(
    "name", fast_or_slow(FPN_CONFIGS, fast=(R50_DYSAMPLE, R50_DYSAMPLE_PLUS, RETINANET))
)
def test_stated_parameter_count_and_nearest_checkpoint(name):
    """Each config's full-size FPN: the DySample parameters its docstring states, and a state
    dict of Detectron2's nearest FPN loads with exactly the DySample keys missing."""
    cfg = load(name)
    torch.manual_seed(0)
    dysample = instantiate(cfg.model.backbone)
    assert dysample_params(dysample) == stated_dysample_params(name)
    cfg.model.backbone._target_ = FPN
    for key in ("style", "groups", "dyscope", "scope_bias"):
        cfg.model.backbone.pop(key)
    nearest = instantiate(cfg.model.backbone)
    result = dysample.load_state_dict(nearest.state_dict(), strict=False)
    assert result.unexpected_keys == []
    keys = UPSAMPLER_PLUS_KEYS if "Plus" in name else UPSAMPLER_KEYS
    stages = (4, 5) if "retinanet" in name else (3, 4, 5)
    assert set(result.missing_keys) == {f"fpn_upsample{s}.{k}" for s in stages for k in keys}


@pytest.mark.parametrize("name", fast_or_slow(FPN_CONFIGS, fast=(R50_DYSAMPLE,)))
def test_trains_and_infers_at_tiny_settings(name):
    cfg = load(name)
    make_tiny(cfg.model)
    model = train_and_infer(cfg)
    assert isinstance(model.backbone, DySampleFPN)


@pytest.mark.slow
def test_whole_model_checkpoint_of_detectron2_loads():
    """Detectron2's own Mask R-CNN (LSJ recipe) state dict into the DySample+ model."""
    theirs = make_tiny(model_zoo_recipe("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")[2])
    ours = make_tiny(load(R50_DYSAMPLE_PLUS).model)
    result = instantiate(ours).load_state_dict(instantiate(theirs).state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {
        f"backbone.fpn_upsample{s}.{k}" for s in (3, 4, 5) for k in UPSAMPLER_PLUS_KEYS
    }


def test_helper_keeps_every_other_argument():
    model = model_zoo_recipe("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")[2]
    before = plain(model.backbone)
    model.backbone = to_dysample(model.backbone, style="pl", groups=8, dyscope=True)
    after = plain(model.backbone)
    assert model.backbone.in_features == ["res2", "res3", "res4", "res5"]  # interpolation kept
    assert after.pop("_target_") is DySampleFPN and before.pop("_target_") is FPN
    assert after == dict(before, style="pl", groups=8, dyscope=True, scope_bias=False)


def test_helper_refuses_other_nodes():
    model = model_zoo_recipe("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")[2]
    with pytest.raises(TypeError, match=r"model.roi_heads is a LazyCall\(StandardROIHeads\)"):
        to_dysample(model.roi_heads)


BAD_VALUES = [
    ("style", "xx", "style must be one of ['lp', 'pl'], got 'xx'"),
    ("groups", 3, "groups=3 must divide"),
    ("groups", 0, "groups must be an int >= 1, got 0"),
    ("dyscope", "yes", "dyscope must be True or False, got 'yes'"),
    ("scope_bias", True, "scope_bias=True needs "),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_bad_values_fail_early_with_the_key_path(key, value, message):
    """A bad override fails the config check, and a bad helper argument the config load,
    naming the node's key path, the argument and its allowed values."""
    cfg = load(R50_DYSAMPLE)
    LazyConfig.apply_overrides(cfg, [f"model.backbone.{key}={value!r}"])
    with pytest.raises(ValueError, match=r"^model\.backbone\.") as err:
        check_dysample_config(cfg)
    assert message in str(err.value)
    nearest = load("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    with pytest.raises(ValueError, match=r"^model\.backbone\.") as err:
        to_dysample(nearest.model.backbone, **{key: value})
    assert message in str(err.value)


@pytest.mark.parametrize("key, value, message", BAD_VALUES[:2])
def test_bad_values_fail_at_instantiate(key, value, message):
    cfg = load(R50_DYSAMPLE)
    cfg.model.backbone[key] = value
    with pytest.raises(ValueError) as err:
        instantiate(cfg.model.backbone)
    assert message in str(err.value)
