"""
The mmdet -> Detectron2 checkpoint converter, on state dicts with exactly the key names and
shapes of real mmdet models (tests/fixtures/mmdet_keys_rcnn.json, recorded from mmdet 3.3 by
scripts/verify_mmdet_equivalence.py --record-fixture; random values in these tests). mmdet itself is not
needed: that script compares the two frameworks' outputs.
"""
import json
import os
import pathlib
import tempfile

import pytest
import torch
from detectron2.modeling import build_model

from mmdet_conversion import (
    ConversionError,
    config_for_checkpoint,
    convert_checkpoint,
    convert_state_dict,
    rename_mmdet_key,
    reorder_semantic_classes,
    save_checkpoint,
)
from tools.engine import CheckpointMismatchError, load_exact_checkpoint, setup_config
from dysample_d2.layers import DySample
from dysample_d2.layers.carafe import CARAFE
from authors_dysample import AuthorsDySample

from helpers import CONFIG_DIR, config_path

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "mmdet_keys_rcnn.json")
with open(FIXTURE) as _f:
    RECORDED = json.load(_f)
MODELS = RECORDED["models"]
BN = ("weight", "bias", "running_mean", "running_var")


class FakeMessageHub:
    """Stands for the mmengine objects an mmengine checkpoint pickles beside the weights."""

    def __init__(self):
        self.log = {"loss": [1.0, 0.5]}

    def __setstate__(self, state):
        raise AssertionError("the converter must not rebuild foreign objects")


def random_state(name, seed=0, dense=False, **changes):
    """A state dict with the recorded keys and shapes of model `name`. Random values; unless
    `dense`, tensors over 64k values are filled with one value of their own (cheap, and still
    tells every tensor from every other)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (key, shape) in enumerate(MODELS[name]["keys"].items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key in MODELS[name]["values"]:
            state[key] = torch.tensor(MODELS[name]["values"][key]).view(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif not dense and torch.Size(shape).numel() > 65536:
            state[key] = torch.full(shape, 0.01 + 1e-4 * index)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def write_mmdet(path, state):
    torch.save({"state_dict": state, "meta": {"mmdet_version": "3.3.0", "epoch": 12}}, path)
    return str(path)


def config(config_name, opts=()):
    return setup_config(config_path(config_name), list(opts))


_MODELS, _META = {}, {}


def real_model(cfg):
    """One randomly initialised model per config (they are slow to build)."""
    key = cfg.dump()
    if key not in _MODELS:
        _MODELS[key] = build_model(cfg).eval()
    return _MODELS[key]


def meta_reference(cfg):
    """The names and shapes of the model's state dict, without computing any weights."""
    key = cfg.dump()
    if key not in _META:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            _META[key] = build_model(cfg).state_dict()
    return _META[key]


@pytest.fixture
def scratch(tmp_path):
    """A directory for checkpoint files, in memory where the machine has /dev/shm."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            yield pathlib.Path(d)
    else:
        yield tmp_path


def direct_mapping(mm):
    """The expected Detectron2 state dict, spelled out module by module (independent of the
    converter's rules)."""
    out = {"backbone.bottom_up.stem.conv1.weight": mm["backbone.conv1.weight"]}
    out.update({f"backbone.bottom_up.stem.conv1.norm.{p}": mm[f"backbone.bn1.{p}"] for p in BN})
    for layer in range(1, 5):
        blocks = {int(k.split(".")[2]) for k in mm if k.startswith(f"backbone.layer{layer}.")}
        for b in range(len(blocks)):
            src, dst = f"backbone.layer{layer}.{b}", f"backbone.bottom_up.res{layer + 1}.{b}"
            for c in (1, 2, 3):
                out[f"{dst}.conv{c}.weight"] = mm[f"{src}.conv{c}.weight"]
                out.update({f"{dst}.conv{c}.norm.{p}": mm[f"{src}.bn{c}.{p}"] for p in BN})
            if b == 0:
                out[f"{dst}.shortcut.weight"] = mm[f"{src}.downsample.0.weight"]
                out.update({f"{dst}.shortcut.norm.{p}": mm[f"{src}.downsample.1.{p}"] for p in BN})
    for i, stage in enumerate((2, 3, 4, 5)):
        for p in ("weight", "bias"):
            out[f"backbone.fpn_lateral{stage}.{p}"] = mm[f"neck.lateral_convs.{i}.conv.{p}"]
            out[f"backbone.fpn_output{stage}.{p}"] = mm[f"neck.fpn_convs.{i}.conv.{p}"]
    # upsample_modules[i] takes lateral i + 1 (stage i + 3) up to lateral i
    for i, stage in enumerate((3, 4, 5)):
        for p in ("offset.weight", "offset.bias", "scope.weight", "init_pos"):
            if f"neck.upsample_modules.{i}.{p}" in mm:
                out[f"backbone.fpn_upsample{stage}.{p}"] = mm[f"neck.upsample_modules.{i}.{p}"]
    pairs = {"proposal_generator.rpn_head.conv": "rpn_head.rpn_conv",
             "proposal_generator.rpn_head.objectness_logits": "rpn_head.rpn_cls",
             "proposal_generator.rpn_head.anchor_deltas": "rpn_head.rpn_reg",
             "roi_heads.box_head.fc1": "roi_head.bbox_head.shared_fcs.0",
             "roi_heads.box_head.fc2": "roi_head.bbox_head.shared_fcs.1",
             "roi_heads.box_predictor.cls_score": "roi_head.bbox_head.fc_cls",
             "roi_heads.box_predictor.bbox_pred": "roi_head.bbox_head.fc_reg"}
    if "roi_head.mask_head.upsample.weight" in mm:
        pairs.update({f"roi_heads.mask_head.mask_fcn{j + 1}": f"roi_head.mask_head.convs.{j}.conv"
                      for j in range(4)})
        pairs.update({"roi_heads.mask_head.deconv": "roi_head.mask_head.upsample",
                      "roi_heads.mask_head.predictor": "roi_head.mask_head.conv_logits"})
    for dst, src in pairs.items():
        out.update({f"{dst}.{p}": mm[f"{src}.{p}"] for p in ("weight", "bias")})
    if "semantic_head.conv_logits.weight" in mm:
        layout = {"p2": [0], "p3": [0], "p4": [0, 2], "p5": [0, 2, 4]}
        for level, (name, indices) in enumerate(layout.items()):
            for j, index in enumerate(indices):
                src = f"semantic_head.conv_upsample_layers.{level}.conv.{j}"
                out[f"sem_seg_head.{name}.{index}.weight"] = mm[f"{src}.conv.weight"]
                out[f"sem_seg_head.{name}.{index}.norm.weight"] = mm[f"{src}.gn.weight"]
                out[f"sem_seg_head.{name}.{index}.norm.bias"] = mm[f"{src}.gn.bias"]
        for p in ("weight", "bias"):  # mmdet: 53 stuff classes, then "things"; D2: things first
            logits = mm[f"semantic_head.conv_logits.{p}"]
            out[f"sem_seg_head.predictor.{p}"] = torch.cat([logits[53:54], logits[:53]])
    return out


def refuse(name, config_name, opts=(), state=None):
    """convert_state_dict against the config's model (names and shapes only)."""
    cfg = config(config_name, opts)
    state = random_state(name) if state is None else state
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, meta_reference(cfg), cfg.MODEL.FPN.IN_FEATURES)
    return str(info.value)


def test_fixture_records_mmdet_models():
    assert "mmdet" in RECORDED["source"]
    assert set(MODELS) >= {"faster_r50_nearest", "faster_r50_dysample", "faster_r101_dysampleplus",
                           "mask_r50_dysampleplus", "panoptic_r50_dysampleplus"}
    assert "neck.upsample_modules.2.scope.weight" in MODELS["panoptic_r50_dysampleplus"]["keys"]
    assert not any("upsample_modules" in k for k in MODELS["faster_r50_nearest"]["keys"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recorded_model_converts_exactly(name, scratch):
    entry = MODELS[name]
    cfg = config(entry["config"], entry["opts"])
    model = real_model(cfg)
    state = random_state(name)
    converted, report = convert_state_dict(state, model.state_dict(), cfg.MODEL.FPN.IN_FEATURES)
    expected = direct_mapping(state)
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key
    assert all(k.endswith("num_batches_tracked") for k in report.dropped)
    out = str(scratch / "d2.pth")
    save_checkpoint({"model": converted, "matching_heuristics": False}, out)
    load_exact_checkpoint(model, out)  # no missing, unexpected or mis-shaped key
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_checkpoint_file_converts_and_runs_as_the_direct_mapping(scratch):
    name = "panoptic_r50_dysampleplus"
    entry = MODELS[name]
    cfg = config(entry["config"])
    model = real_model(cfg)
    state = random_state(name, seed=1, dense=True)
    path = write_mmdet(scratch / "mmdet.pth", state)
    checkpoint, report = convert_checkpoint(path, cfg, task="panoptic",
                                            reference=model.state_dict())
    assert checkpoint["__author__"] == "dysample-d2 mmdet converter"
    assert checkpoint["matching_heuristics"] is False
    assert checkpoint["mmdet_source"] == {"file": "mmdet.pth", "mmdet_version": "3.3.0",
                                          "epoch": "12"}
    assert "semantic classes reordered" in report.summary()
    image = {"image": torch.rand(3, 72, 100) * 255, "height": 72, "width": 100}
    outputs = []
    rpn = model.proposal_generator
    topk = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
    rpn.pre_nms_topk[False], rpn.post_nms_topk[False] = 200, 50  # fewer RoIs: faster
    try:
        for weights in (checkpoint["model"], direct_mapping(state)):
            model.load_state_dict(weights, strict=True)
            with torch.no_grad():
                outputs.append(model([image])[0])
    finally:
        rpn.pre_nms_topk[False], rpn.post_nms_topk[False] = topk
    a, b = outputs
    assert torch.equal(a["sem_seg"], b["sem_seg"])
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def test_upsamplers_and_semantic_classes_keep_their_meaning():
    assert [rename_mmdet_key(f"neck.upsample_modules.{i}.offset.weight") for i in range(3)] == [
        f"backbone.fpn_upsample{k}.offset.weight" for k in (3, 4, 5)]
    state = random_state("panoptic_r50_dysampleplus")
    logits = state["semantic_head.conv_logits.weight"]
    reordered = reorder_semantic_classes(logits, 53)
    assert torch.equal(reordered[0], logits[53]) and torch.equal(reordered[1:], logits[:53])


@pytest.mark.parametrize("name", ["faster_r50_dysample", "panoptic_r50_dysampleplus"])
def test_converted_upsamplers_compute_what_the_authors_modules_compute(name):
    """Each mmdet upsampler, run as the authors' module (the one the mmdet verification
    registers), and the Detectron2 DySample the converter gives its weights to: same output."""
    entry = MODELS[name]
    cfg = config(entry["config"])
    state = random_state(name, seed=2)
    converted, _ = convert_state_dict(state, meta_reference(cfg), cfg.MODEL.FPN.IN_FEATURES)
    dyscope = name.endswith("plus")
    x = torch.randn(1, 256, 6, 8)
    def submodule(weights, prefix):
        return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}

    for index, stage in enumerate((3, 4, 5)):  # mmdet's module i takes level i + 1 to level i
        authors = AuthorsDySample(256, 2, "lp", 4, dyscope)
        authors.load_state_dict(submodule(state, f"neck.upsample_modules.{index}."), strict=True)
        ours = DySample(256, 2, "lp", 4, dyscope)
        ours.load_state_dict(submodule(converted, f"backbone.fpn_upsample{stage}."), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), authors(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, config_name, listed", [
    ("faster_r50_nearest", "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml",
     ["does not provide", "backbone.fpn_upsample3.offset.weight",
      "backbone.fpn_upsample5.init_pos"]),
    ("faster_r50_dysample", "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml",
     ["does not provide", "backbone.fpn_upsample4.scope.weight"]),
    ("mask_r50_dysampleplus", "mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml",
     ["the model does not have", "neck.upsample_modules.1.scope.weight"]),
    ("faster_r101_dysampleplus", "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml",
     ["the model does not have", "backbone.layer3.22.conv3.weight", "res4.22"]),
])
def test_mismatched_checkpoint_is_refused_with_the_keys(name, config_name, listed):
    message = refuse(name, config_name)
    for words in listed:
        assert words in message


def test_wrong_shape_and_unknown_keys_are_refused():
    state = random_state("faster_r50_dysample", **{
        "roi_head.bbox_head.fc_cls.weight": torch.zeros(91, 1024),
        "neck.extra_convs.0.conv.weight": torch.zeros(256, 256, 3, 3)})
    message = refuse("faster_r50_dysample", MODELS["faster_r50_dysample"]["config"], state=state)
    assert "roi_head.bbox_head.fc_cls.weight -> roi_heads.box_predictor.cls_score.weight: " \
           "shape (91, 1024) in the checkpoint, (81, 1024) in the model" in message
    assert "no rule maps" in message and "neck.extra_convs.0.conv.weight" in message


@pytest.mark.parametrize("keys, config_name, task, listed", [
    (["roi_head.bbox_head.fc_cls.weight"], "mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml",
     None, ["holds a det model", "builds a mask model"]),
    (["roi_head.bbox_head.fc_cls.weight"],
     "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml", "mask",
     ["--task mask but the config builds a det model"]),
    (["roi_head.mask_head.upsample.weight", "semantic_head.conv_logits.weight"],
     "mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml", None, ["holds a panoptic model"]),
    (["roi_head.bbox_head.fc_cls.weight"], "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
     None, ["STRIDE_IN_1X1", "INPUT.FORMAT", "PIXEL_MEAN", "PIXEL_STD"]),
])
def test_wrong_task_or_recipe_is_refused_before_mapping(keys, config_name, task, listed, scratch):
    path = write_mmdet(scratch / "small.pth", {k: torch.zeros(1) for k in keys})
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(path, config(config_name), task=task, reference={})
    for words in listed:
        assert words in str(info.value)


def test_dysampleplus_scope_bias_needs_the_scope_bias_key(scratch):
    """The authors' first dysample.py gave the scope conv a bias: dropped when all zero,
    converted into a SCOPE_BIAS model, refused (with the fix) for a bias-free one."""
    name = "mask_r50_dysampleplus"
    cfg = config(MODELS[name]["config"])
    zero = {f"neck.upsample_modules.{i}.scope.bias": torch.zeros(32) for i in range(3)}
    converted, report = convert_state_dict(random_state(name, **zero), meta_reference(cfg))
    assert "neck.upsample_modules.2.scope.bias" in report.dropped
    assert not any("scope.bias" in k for k in converted)

    biased = {f"neck.upsample_modules.{i}.scope.bias": torch.randn(32) for i in range(3)}
    state = random_state(name, **biased)
    message = refuse(name, MODELS[name]["config"], state=state)
    assert "upsample_modules.1.scope.bias: non-zero" in message
    assert "MODEL.FPN.DYSAMPLE.SCOPE_BIAS True" in message

    opts = ["MODEL.FPN.DYSAMPLE.SCOPE_BIAS", "True"]
    biased_cfg = config(MODELS[name]["config"], opts)
    converted, report = convert_state_dict(state, meta_reference(biased_cfg))
    for index, stage in enumerate((3, 4, 5)):  # module i takes level i + 1 to level i
        assert torch.equal(converted[f"backbone.fpn_upsample{stage}.scope.bias"],
                           biased[f"neck.upsample_modules.{index}.scope.bias"])
    # and a SCOPE_BIAS model needs the bias: a bias-free checkpoint leaves it missing
    assert "backbone.fpn_upsample4.scope.bias" in refuse(name, MODELS[name]["config"], opts)

    # evaluating the converted file without the key names the key to set
    out = str(scratch / "biased.pth")
    save_checkpoint({"model": converted, "matching_heuristics": False}, out)
    model = build_model(cfg)
    with pytest.raises(CheckpointMismatchError, match="set MODEL.FPN.DYSAMPLE.SCOPE_BIAS True"):
        load_exact_checkpoint(model, out)


def test_command_line(scratch, capsys):
    from convert_mmdet_checkpoint import main

    # an FPN_UPSAMPLE-layout file under a released name: that name picks the FPN_CARAFE
    # layout of the released files, which refuses it; its own config converts it
    released = scratch / "faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"
    state = random_state("faster_r50_dysample")
    torch.save({"state_dict": state, "meta": {}, "message_hub": FakeMessageHub()},
               released)  # a foreign class: loaded as an inert placeholder, never run
    assert config_for_checkpoint(str(released)).endswith(
        "mmdet-recipe/faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml")
    out = scratch / "out.pth"
    assert main([str(released), str(out)]) == 2  # config from the released file name
    assert "backbone.fpn_lateral6.weight" in capsys.readouterr().err and not out.exists()
    assert main([str(released), str(out), "--config-file", os.path.join(
        CONFIG_DIR, "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml")]) == 0
    assert "exact match" in capsys.readouterr().out
    converted = torch.load(out, weights_only=True)
    assert converted["__author__"] == "dysample-d2 mmdet converter"
    refused = scratch / "refused.pth"
    assert main([str(released), str(refused), "--config-file", os.path.join(
        CONFIG_DIR, "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml")]) == 2
    assert "fpn_upsample5.scope.weight" in capsys.readouterr().err
    assert not refused.exists()
    assert main([str(scratch / "other.pth"), str(refused)]) == 2
    assert "--config-file" in capsys.readouterr().err


# The released R-CNN files' own key lists (FPN_CARAFE neck), from the authors' training logs.
RELEASED_FIXTURE = os.path.join(os.path.dirname(FIXTURE), "mmdet_keys_carafe_rcnn_released.json")
with open(RELEASED_FIXTURE) as _f:
    RELEASED = json.load(_f)["models"]


def released_state(name, seed=0):
    """A state dict with exactly the logged keys and shapes of released model `name`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (key, shape) in enumerate(RELEASED[name]["keys"].items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key in RELEASED[name]["values"]:
            state[key] = torch.tensor(RELEASED[name]["values"][key]).view(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif torch.Size(shape).numel() > 65536:
            state[key] = torch.full(shape, 0.01 + 1e-4 * index)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_released_fixture_is_the_logged_fpn_carafe():
    for name, log in (("faster_r50_dysampleplus", "COCO2017_detection/"),
                      ("mask_r50_dysampleplus", "COCO2017_instance/")):
        keys = RELEASED[name]["keys"]
        assert RELEASED[name]["log"].startswith(log) and RELEASED[name]["log"].endswith(".log")
        assert keys["neck.lateral_convs.4.conv.weight"] == [256, 2048, 3, 3]
        assert "neck.fpn_convs.4.conv.weight" in keys and "neck.upsample_modules.3.init_pos" in keys
    assert "neck.upsample_modules.3.scope.bias" in RELEASED["faster_r50_dysampleplus"]["keys"]
    assert not any(k.endswith("scope.bias") for k in RELEASED["mask_r50_dysampleplus"]["keys"])


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_file_converts_as_it_is_from_its_name(name, scratch, capsys):
    """The released file name picks its config; no option; every tensor lands where the
    CARAFE-layout FPN has it (P6 lateral / output, the fourth upsampler, biased scopes)."""
    from convert_mmdet_checkpoint import main

    released = scratch / RELEASED[name]["released_file"]
    state = released_state(name)
    torch.save({"state_dict": state, "meta": {"mmdet_version": "2.25.0"}}, released)
    out = scratch / "out.pth"
    assert main([str(released), str(out)]) == 0, capsys.readouterr().err
    assert "CarafeFPN" in capsys.readouterr().out
    model = torch.load(out, weights_only=True)["model"]
    neck = {"neck.lateral_convs.4.conv.weight": "backbone.fpn_lateral6.weight",
            "neck.fpn_convs.4.conv.bias": "backbone.fpn_output6.bias",
            "neck.lateral_convs.0.conv.weight": "backbone.fpn_lateral2.weight",
            "neck.upsample_modules.0.offset.weight": "backbone.fpn_upsample3.offset.weight",
            "neck.upsample_modules.3.offset.weight": "backbone.fpn_upsample6.offset.weight",
            "neck.upsample_modules.3.scope.weight": "backbone.fpn_upsample6.scope.weight"}
    if "neck.upsample_modules.3.scope.bias" in state:
        neck["neck.upsample_modules.3.scope.bias"] = "backbone.fpn_upsample6.scope.bias"
    for src, dst in neck.items():
        assert torch.equal(model[dst], state[src]), src
    assert len(model) == sum(not k.endswith("num_batches_tracked") for k in state)


def test_released_upsamplers_compute_what_the_authors_modules_compute():
    name = "faster_r50_dysampleplus"
    cfg = config(RELEASED_CHECKPOINTS_CONFIG(name))
    state = released_state(name, seed=3)
    converted, _ = convert_state_dict(state, meta_reference(cfg), cfg.MODEL.FPN.IN_FEATURES)
    x = torch.randn(1, 256, 5, 7)
    for index, stage in enumerate((3, 4, 5, 6)):  # module i takes level i + 1 to level i
        authors = AuthorsDySample(256, 2, "lp", 4, True, scope_bias=True)
        authors.load_state_dict({k.split(f"upsample_modules.{index}.")[1]: v
                                 for k, v in state.items()
                                 if k.startswith(f"neck.upsample_modules.{index}.")})
        ours = DySample(256, 2, "lp", 4, True, scope_bias=True)
        ours.load_state_dict({k.split(f"fpn_upsample{stage}.")[1]: v
                              for k, v in converted.items()
                              if k.startswith(f"backbone.fpn_upsample{stage}.")})
        with torch.no_grad():
            torch.testing.assert_close(ours(x), authors(x), rtol=1e-5, atol=1e-5)


def RELEASED_CHECKPOINTS_CONFIG(name):  # noqa: N802 (reads as the table it looks up)
    from mmdet_conversion import RELEASED_CHECKPOINTS

    return "mmdet-recipe/" + RELEASED_CHECKPOINTS[RELEASED[name]["released_file"]]


def test_released_file_is_refused_by_the_fpn_upsample_configs():
    """The layout mismatch that made the released files unusable is still refused, naming
    the extra level's tensors."""
    message = refuse("faster_r50_dysampleplus",
                     "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml",
                     opts=["MODEL.FPN.DYSAMPLE.SCOPE_BIAS", "True"],
                     state=released_state("faster_r50_dysampleplus"))
    assert "backbone.fpn_lateral6.weight (from neck.lateral_convs.4.conv.weight)" in message
    assert "neck.upsample_modules.3.offset.weight" in message


def test_mask_dysampleplus_without_scope_bias_refuses_a_biased_file():
    """The released Mask R-CNN DySample+ log has no scope bias; a file with a non-zero one
    is refused with the key that converts it (the refusal of the FPN_UPSAMPLE configs)."""
    name = "mask_r50_dysampleplus"
    state = released_state(name)
    state.update({f"neck.upsample_modules.{i}.scope.bias": torch.randn(32) for i in range(4)})
    message = refuse(name, RELEASED_CHECKPOINTS_CONFIG(name), state=state)
    assert "upsample_modules.3.scope.bias: non-zero" in message
    assert "MODEL.FPN.DYSAMPLE.SCOPE_BIAS True" in message


ZOO_FIXTURE = os.path.join(os.path.dirname(FIXTURE), "mmdet_keys_carafe_zoo.json")
with open(ZOO_FIXTURE) as _f:
    ZOO = json.load(_f)["models"]


def zoo_state(name, seed=0):
    """A state dict with the keys and shapes of mmdet's model-zoo CARAFE model `name`."""
    gen = torch.Generator().manual_seed(seed)
    return {key: (torch.tensor(1000) if key.endswith("num_batches_tracked") else
                  torch.rand(shape, generator=gen) + 0.5 if key.endswith("running_var") else
                  torch.randn(shape, generator=gen) * 0.05)
            for key, shape in ZOO[name]["keys"].items()}


def test_mmdet_carafe_faster_rcnn_converts_from_its_file_name(scratch, capsys):
    """mmdet's faster_rcnn_r50_fpn_carafe_1x_coco file picks the CARAFE CarafeFPN config; its
    CARAFE upsamplers land name for name on fpn_upsample3..6 and compute mmcv's CARAFEPack."""
    from convert_mmdet_checkpoint import main

    released = scratch / ZOO["faster_r50_carafe"]["released_file"]
    state = zoo_state("faster_r50_carafe")
    torch.save({"state_dict": state, "meta": {"mmdet_version": "2.0.0"}}, released)
    out = scratch / "out.pth"
    assert main([str(released), str(out)]) == 0, capsys.readouterr().err
    assert "faster_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml" in capsys.readouterr().out
    model = torch.load(out, weights_only=True)["model"]
    assert len(model) == sum(not k.endswith("num_batches_tracked") for k in state)
    for index, stage in enumerate((3, 4, 5, 6)):
        for part in ("channel_compressor.weight", "content_encoder.bias"):
            assert torch.equal(model[f"backbone.fpn_upsample{stage}.{part}"],
                               state[f"neck.upsample_modules.{index}.{part}"])
    carafe = CARAFE(256, 2)
    carafe.load_state_dict({k.split("fpn_upsample6.")[1]: v for k, v in model.items()
                            if k.startswith("backbone.fpn_upsample6.")})
    assert carafe(torch.randn(1, 256, 3, 4)).shape == (1, 256, 6, 8)


def test_mmdet_carafe_mask_rcnn_converts_with_its_carafe_mask_head(scratch, capsys):
    """mmdet's mask_rcnn_r50_fpn_carafe_1x_coco picks the CARAFE Mask R-CNN config; its mask
    head's CARAFE lands on MaskRCNNCarafeUpsampleHead's upsample, its logits on predictor."""
    from convert_mmdet_checkpoint import main

    released = scratch / ZOO["mask_r50_carafe"]["released_file"]
    state = zoo_state("mask_r50_carafe")
    torch.save({"state_dict": state, "meta": {}}, released)
    out = scratch / "out.pth"
    assert main([str(released), str(out)]) == 0, capsys.readouterr().err
    assert "mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml" in capsys.readouterr().out
    model = torch.load(out, weights_only=True)["model"]
    assert len(model) == sum(not k.endswith("num_batches_tracked") for k in state)
    for part in ("channel_compressor.weight", "channel_compressor.bias",
                 "content_encoder.weight", "content_encoder.bias"):
        assert torch.equal(model[f"roi_heads.mask_head.upsample.{part}"],
                           state[f"roi_head.mask_head.upsample.{part}"])
    assert torch.equal(model["roi_heads.mask_head.predictor.weight"],
                       state["roi_head.mask_head.conv_logits.weight"])
    assert not any(k.startswith("roi_heads.mask_head.deconv") for k in model)


@pytest.mark.parametrize("carafe_file", [True, False])
def test_mask_head_upsampler_mismatch_is_refused_naming_the_key(scratch, capsys, carafe_file):
    """A CARAFE mask head file with a deconv config, or the reverse, is refused in one
    problem line naming MODEL.ROI_MASK_HEAD.NAME and the value that converts it."""
    from convert_mmdet_checkpoint import main

    if carafe_file:  # a CARAFE mask head, a config with Detectron2's deconv head
        state = zoo_state("mask_r50_carafe")
        config, head = "mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml", "MaskRCNNCarafeUpsampleHead"
        opts = ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    else:  # a deconv mask head, the CARAFE Mask R-CNN config
        state, opts = released_state("mask_r50_dysampleplus"), []
        config, head = "mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml", "MaskRCNNConvUpsampleHead"
    released = scratch / "model.pth"
    torch.save({"state_dict": state, "meta": {}}, released)
    out = scratch / "out.pth"
    assert main([str(released), str(out), "--config-file",
                 os.path.join(CONFIG_DIR, "mmdet-recipe", config), *opts]) == 2
    err = capsys.readouterr().err
    assert f"set MODEL.ROI_MASK_HEAD.NAME {head}" in err
    assert not out.exists()