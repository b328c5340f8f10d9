"""Every config in configs/ builds a model that trains one step and infers on CPU."""
import glob
import os

import pytest
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dysample_d2 import DySample

from helpers import CONFIG_DIR, config_path, load_config, synthetic_batch
from test_semantic_seg import CONFIGS as SEMANTIC_SEG  # built, trained and inferred there

# The paper's COCO systems: config -> (meta-architecture, depth, mask head, upsampler).
EXPECTED = {
    "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample"),
    "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample+"),
    "COCO-Detection/faster_rcnn_R_101_FPN_1x.yaml": ("GeneralizedRCNN", 101, False, "nearest"),
    "COCO-Detection/faster_rcnn_R_101_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 101, False, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml": ("GeneralizedRCNN", 101, True, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 101, True, "DySample+"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml": ("PanopticFPN", 50, True, "DySample"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySamplePlus_1x.yaml": ("PanopticFPN", 50, True, "DySample+"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_1x.yaml": ("PanopticFPN", 101, True, "nearest"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_DySamplePlus_1x.yaml": ("PanopticFPN", 101, True, "DySample+"),
}

# Detectron2's own model-zoo configs that are the R50 nearest rows (not copied into configs/;
# helpers.config_path finds them in Detectron2's model zoo).
DETECTRON2_BASELINES = {
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "nearest"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml": ("PanopticFPN", 50, True, "nearest"),
}

# The same systems on the FPN of the DySample authors' released R-CNN models (mmdet's
# FPN_CARAFE layout, build_resnet_carafe_fpn_backbone: four upsamplers, P6 a stride-2 conv),
# "nearest" the paper's Nearest rows on that FPN.
EXPECTED_CARAFE = {
    "COCO-Detection/faster_rcnn_R_50_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, False, "nearest"),
    "COCO-Detection/faster_rcnn_R_50_DySample_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample"),
    "COCO-Detection/faster_rcnn_R_50_DySamplePlus_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample+"),
    "COCO-Detection/faster_rcnn_R_101_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 101, False, "nearest"),
    "COCO-Detection/faster_rcnn_R_101_DySamplePlus_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 101, False, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, True, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 101, True, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DySamplePlus_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 101, True, "DySample+"),
    **{f"COCO-{task}/{arch}_R_50_{row}_CarafeFPN_1x.yaml": ("GeneralizedRCNN", 50, mask, row)
       for task, arch, mask in (("Detection", "faster_rcnn", False),
                                ("InstanceSegmentation", "mask_rcnn", True))
       for row in ("Deconv", "PixelShuffle", "CARAFE")},
}
# The comparison rows' upsamplers -> MODEL.FPN.UPSAMPLER; they are the nearest CarafeFPN
# system with that key changed.
COMPARISON_ROWS = {"Deconv": "deconv", "PixelShuffle": "pixel_shuffle", "CARAFE": "carafe"}
CARAFE_BACKBONE = "build_resnet_carafe_fpn_backbone"

# The tiny CPU variants that the quickstart and the end-to-end tests train: config -> the
# COCO-* system it is, at the settings of quickstart/Base-quickstart.yaml.
TINY_BASE = "quickstart/Base-quickstart.yaml"
QUICKSTART = {
    "quickstart/faster_rcnn_R_50_FPN_tiny.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml":
        "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
    "quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml":
        "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
    "quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml":
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml",
    "quickstart/panoptic_fpn_R_50_DySample_tiny.yaml":
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml",
    "quickstart/faster_rcnn_R_50_DySample_CarafeFPN_tiny.yaml":
        "COCO-Detection/faster_rcnn_R_50_DySample_CarafeFPN_1x.yaml",
    "quickstart/faster_rcnn_R_50_CarafeFPN_tiny.yaml":
        "COCO-Detection/faster_rcnn_R_50_CarafeFPN_1x.yaml",
    **{f"quickstart/faster_rcnn_R_50_{row}_CarafeFPN_tiny.yaml":
       f"COCO-Detection/faster_rcnn_R_50_{row}_CarafeFPN_1x.yaml" for row in COMPARISON_ROWS},
}

# What a tiny config changes beyond its system and the tiny settings (besides OUTPUT_DIR).
TINY_OWN_KEYS = {
    "quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml": {
        "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.FPN.OUT_CHANNELS",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_BOX_HEAD.FC_DIM",
        "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"},
}

# The DySample authors' released mmdet checkpoints, evaluated as mmdet runs them (converted with
# scripts/convert_mmdet_checkpoint.py): config -> (the COCO-* config it inherits, the released
# checkpoint file name). Architecture columns come from that COCO-* config's EXPECTED row.
EXPECTED_MMDET = {
    "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
        "faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml",
        "faster_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_101_DySamplePlus_FPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_101_DySamplePlus_FPN_1x.yaml",
        "faster_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml",
        "mask_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_FPN_1x.yaml",
        "mask_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_101_DySamplePlus_FPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_101_DySamplePlus_FPN_1x.yaml",
        "mask_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_50_DySample_CarafeFPN_1x.yaml",
        "faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_50_DySamplePlus_CarafeFPN_1x.yaml",
        "faster_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_101_DySamplePlus_CarafeFPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_101_DySamplePlus_CarafeFPN_1x.yaml",
        "faster_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_CarafeFPN_1x.yaml",
        "mask_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x.yaml",
        "mask_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/mask_rcnn_R_101_DySamplePlus_CarafeFPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_101_DySamplePlus_CarafeFPN_1x.yaml",
        "mask_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/faster_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml": (
        "COCO-Detection/faster_rcnn_R_50_CARAFE_CarafeFPN_1x.yaml",
        "faster_rcnn_r50_fpn_carafe_1x_coco_bbox_mAP-0.386_20200504_175733-385a75b7.pth"),
    "mmdet-recipe/mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_CARAFE_CarafeFPN_1x.yaml",
        "mask_rcnn_r50_fpn_carafe_1x_coco_bbox_mAP-0.393__segm_mAP-0.358_20200503_135957-8687f195.pth"),
    # comparison rows with no convertible released checkpoint (None)
    **{f"mmdet-recipe/{arch}_R_50_{row}_CarafeFPN_1x_mmdet.yaml": (
        f"COCO-{task}/{arch}_R_50_{row}_CarafeFPN_1x.yaml", None)
       for task, arch in (("Detection", "faster_rcnn"), ("InstanceSegmentation", "mask_rcnn"))
       for row in COMPARISON_ROWS if row != "CARAFE"},
    "mmdet-recipe/panoptic_fpn_R_50_DySample_1x_mmdet.yaml": (
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml",
        "panoptic_fpn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "mmdet-recipe/panoptic_fpn_R_50_DySamplePlus_1x_mmdet.yaml": (
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySamplePlus_1x.yaml",
        "panoptic_fpn_r50_fpn_dysample-lpg4ds_1x_coco.pth"),
    "mmdet-recipe/panoptic_fpn_R_101_DySamplePlus_1x_mmdet.yaml": (
        "COCO-PanopticSegmentation/panoptic_fpn_R_101_DySamplePlus_1x.yaml",
        "panoptic_fpn_r101_fpn_dysample-lpg4ds_1x_coco.pth"),
}
# The recipe files the mmdet-recipe configs inherit: the common one, and for Panoptic FPN.
MMDET_BASE = "mmdet-recipe/Base-mmdet-recipe.yaml"
MMDET_PANOPTIC_BASE = "mmdet-recipe/Base-mmdet-recipe-panoptic.yaml"
MMDET_CARAFE_BASE = "mmdet-recipe/Base-mmdet-recipe-CarafeFPN.yaml"
# Every leaf config -> (meta-architecture, depth, mask head, upsampler).
_COCO = {**EXPECTED, **EXPECTED_CARAFE, **DETECTRON2_BASELINES}
SYSTEMS = {**_COCO, **{name: _COCO[base] for name, base in QUICKSTART.items()},
           **{name: _COCO[base] for name, (base, _) in EXPECTED_MMDET.items()}}


def flat(cfg, prefix=""):
    """{"MODEL.RPN.NMS_THRESH": value, ...} of a config."""
    items = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            items.update(flat(value, prefix + key + "."))
        else:
            items[prefix + key] = value
    return items


def keys_set_in(name):
    """The keys a config file sets itself, not through its _BASE_."""
    with open(config_path(name)) as f:
        data = yaml.safe_load(f)
    data.pop("_BASE_", None)
    return set(flat(CfgNode(data)))


def assert_is_system_with(name, system, bases, own_keys):
    """
    Config `name` resolves to config `system` with the settings of the `bases` files (each
    key at the value the last base setting it gives, unless in `own_keys`) and, beyond
    those, changes only `own_keys`.
    """
    cfg, system_cfg = flat(load_config(name, tiny=False)), flat(load_config(system, tiny=False))
    settings = {}
    for base in bases:  # from the most general to the most specific
        base_cfg = flat(load_config(base, tiny=False))
        settings.update({key: base_cfg[key] for key in keys_set_in(base)})
    settings = {key: value for key, value in settings.items() if key not in own_keys}
    assert {key: cfg[key] for key in settings} == settings, name
    changed = {key for key, value in cfg.items() if value != system_cfg[key]}
    assert changed <= set(settings) | own_keys, (name, changed - set(settings) - own_keys)


def leaf_configs():
    """Every config file except the Base-*.yaml files meant for inheritance."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    names = [os.path.relpath(p, CONFIG_DIR) for p in paths]
    return sorted(n for n in names if not os.path.basename(n).startswith("Base-"))


def test_every_config_is_covered():
    assert set(leaf_configs()) == (set(EXPECTED) | set(EXPECTED_CARAFE) | set(EXPECTED_MMDET)
                                   | set(QUICKSTART) | set(SEMANTIC_SEG)), (
        "configs/ and EXPECTED / EXPECTED_MMDET / QUICKSTART in this test differ: describe "
        "every new config here so that the build/train/infer test below covers it"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_describes_the_paper_system(name):
    meta_arch, depth, mask_on, upsampler = EXPECTED[name]
    cfg = load_config(name, tiny=False)
    assert cfg.MODEL.META_ARCHITECTURE == meta_arch
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.MASK_ON == mask_on
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.IMS_PER_BATCH) == (
        90000, (60000, 80000), 16
    )
    is_dysample = cfg.MODEL.BACKBONE.NAME == "build_resnet_dysample_fpn_backbone"
    assert is_dysample == (upsampler != "nearest")
    if is_dysample:
        assert cfg.MODEL.FPN.DYSAMPLE.DYSCOPE == (upsampler == "DySample+")
        assert (cfg.MODEL.FPN.DYSAMPLE.STYLE, cfg.MODEL.FPN.DYSAMPLE.GROUPS) == ("lp", 4)
    else:
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert f"R-{depth}.pkl" in cfg.MODEL.WEIGHTS


@pytest.mark.parametrize("name", sorted(EXPECTED_CARAFE))
def test_carafe_fpn_config_is_its_plain_fpn_system_on_the_carafe_fpn(name):
    """The COCO-* system of the same name with the FPN_CARAFE-layout backbone; nothing else."""
    meta_arch, depth, mask_on, upsampler = EXPECTED_CARAFE[name]
    cfg = load_config(name, tiny=False)
    twin = load_config(name.replace(f"_{upsampler}_CarafeFPN_", "_CarafeFPN_")
                       if upsampler in COMPARISON_ROWS else
                       name.replace("_CarafeFPN_", "_FPN_"), tiny=False)
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.MASK_ON) == (
        meta_arch, depth, mask_on)
    assert cfg.MODEL.BACKBONE.NAME == CARAFE_BACKBONE
    assert cfg.MODEL.FPN.UPSAMPLER == COMPARISON_ROWS.get(
        upsampler, "nearest" if upsampler == "nearest" else "dysample")
    if upsampler in ("DySample", "DySample+"):
        assert cfg.MODEL.FPN.DYSAMPLE.DYSCOPE == (upsampler == "DySample+")
        assert (cfg.MODEL.FPN.DYSAMPLE.STYLE, cfg.MODEL.FPN.DYSAMPLE.GROUPS) == ("lp", 4)
    changed = {k for k, v in flat(cfg).items() if v != flat(twin)[k]}
    # the CARAFE Mask R-CNN upsamples its masks with CARAFE too, as mmdet's configs/carafe
    carafe_mask_head = {"MODEL.ROI_MASK_HEAD.NAME"} if upsampler == "CARAFE" and mask_on else set()
    assert changed <= {"MODEL.BACKBONE.NAME", "MODEL.FPN.UPSAMPLER",
                       "MODEL.FPN.DYSAMPLE.SCOPE_BIAS"} | carafe_mask_head, changed
    assert (cfg.MODEL.ROI_MASK_HEAD.NAME == "MaskRCNNCarafeUpsampleHead") == bool(carafe_mask_head)


@pytest.mark.parametrize("name", sorted(EXPECTED_MMDET))
def test_mmdet_recipe_config_is_its_system_run_as_mmdet_runs_it(name):
    """The architecture of the COCO-* config it inherits; mmdet's input, ResNet and tests."""
    from mmdet_conversion import RELEASED_CHECKPOINTS, check_mmdet_recipe, task_of_config

    base, released = EXPECTED_MMDET[name]
    cfg, base_cfg = load_config(name, tiny=False), load_config(base, tiny=False)
    assert check_mmdet_recipe(cfg) == [] and check_mmdet_recipe(base_cfg) != []
    for key in ("META_ARCHITECTURE", "MASK_ON", "BACKBONE", "FPN", "ANCHOR_GENERATOR",
                "ROI_BOX_HEAD", "ROI_MASK_HEAD", "SEM_SEG_HEAD"):
        assert cfg.MODEL[key] == base_cfg.MODEL[key], key
    assert cfg.MODEL.RESNETS.DEPTH == base_cfg.MODEL.RESNETS.DEPTH
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (1000, 1000)
    assert (cfg.MODEL.RPN.NMS_THRESH, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST) == (0.7, 0.5)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    panoptic = task_of_config(cfg) == "panoptic"
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == (0.6 if panoptic else 0.05)
    if released is None:  # a comparison row: nothing released converts to it
        assert cfg.MODEL.WEIGHTS == "" and os.path.basename(name) not in set(
            RELEASED_CHECKPOINTS.values())
        return
    # the released R-CNN files pick the FPN_CARAFE-layout twin of the FPN_UPSAMPLE configs
    carafe_twin = os.path.basename(name).replace("_FPN_1x", "_CarafeFPN_1x")
    assert RELEASED_CHECKPOINTS[released] == (
        os.path.basename(name) if panoptic or "CarafeFPN" in name else carafe_twin)
    assert (cfg.MODEL.BACKBONE.NAME == CARAFE_BACKBONE) == ("CarafeFPN" in name)
    assert cfg.MODEL.WEIGHTS == f"checkpoints/mmdet/{released[:-len('.pth')]}_d2.pth"


@pytest.mark.parametrize("name", sorted(QUICKSTART))
def test_tiny_config_is_its_system_at_the_tiny_settings(name):
    own_keys = {"OUTPUT_DIR"} | TINY_OWN_KEYS.get(name, set())
    assert_is_system_with(name, QUICKSTART[name], [TINY_BASE], own_keys)


@pytest.mark.parametrize("name", sorted(EXPECTED_MMDET))
def test_mmdet_recipe_config_is_its_system_at_the_recipe_settings(name):
    base, _ = EXPECTED_MMDET[name]
    bases = [MMDET_BASE] + ([MMDET_PANOPTIC_BASE] if "panoptic" in name else []) + (
        [MMDET_CARAFE_BASE] if "CarafeFPN" in name else [])
    comparison_row = any(f"_{row}_" in name for row in COMPARISON_ROWS)
    assert_is_system_with(name, base, bases, own_keys={"MODEL.WEIGHTS"} | (
        {"MODEL.FPN.UPSAMPLER"} if comparison_row else set()))


def one_step_configs():
    """The leaves to train one step; the mmdet-recipe and R-101 ones build the modules of an
    R-50 COCO-* config (tests above) at other depths and test settings: slow tests."""
    for name in leaf_configs():
        if name in SEMANTIC_SEG:
            continue
        slow = name.startswith("mmdet-recipe/") or "_R_101_" in name
        yield pytest.param(name, marks=pytest.mark.slow) if slow else name


@pytest.mark.parametrize("name", one_step_configs())
def test_config_trains_one_step_and_infers(name):
    meta_arch, _, mask_on, upsampler = SYSTEMS[name]
    torch.manual_seed(0)
    cfg = load_config(name)
    model = build_model(cfg)
    upsamplers = [m for m in model.modules() if isinstance(m, DySample)]
    # one per level pair: four on the CARAFE-layout FPN (P6 -> P5 too), three on Detectron2's
    assert len(upsamplers) == (0 if upsampler not in ("DySample", "DySample+") else
                               4 if cfg.MODEL.BACKBONE.NAME == CARAFE_BACKBONE else 3)
    assert all(m.dyscope == (upsampler == "DySample+") for m in upsamplers)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    with EventStorage():
        losses = model(synthetic_batch(cfg))
    expected_losses = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    if mask_on:
        expected_losses.add("loss_mask")
    if meta_arch == "PanopticFPN":
        expected_losses.add("loss_sem_seg")
    assert set(losses) == expected_losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    for module in upsamplers:
        assert module.offset.weight.grad is not None
        assert module.offset.weight.grad.abs().sum() > 0
    if upsampler in COMPARISON_ROWS:  # the deconv, pixel shuffle and CARAFE weights learn
        learned = [p for m in model.backbone.upsamplers for p in m.parameters()]
        assert learned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)
    optimizer.step()

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 70, 90) * 255, "height": 70, "width": 90}])
    assert len(outputs) == 1
    instances = outputs[0]["instances"]
    assert instances.image_size == (70, 90)
    assert instances.has("pred_masks") == mask_on
    if meta_arch == "PanopticFPN":
        panoptic_seg, segments = outputs[0]["panoptic_seg"]
        assert panoptic_seg.shape == (70, 90)
        assert outputs[0]["sem_seg"].shape[-2:] == (70, 90)
