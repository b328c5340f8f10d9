"""Every config in configs/ builds a model that trains one step and infers on CPU."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dysample_d2 import DySample

from helpers import CONFIG_DIR, load_config, synthetic_batch
from test_semantic_seg import CONFIGS as SEMANTIC_SEG  # built, trained and inferred there

# The paper's COCO systems: config -> (meta-architecture, depth, mask head, upsampler).
EXPECTED = {
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "nearest"),
    "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample"),
    "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 50, False, "DySample+"),
    "COCO-Detection/faster_rcnn_R_101_FPN_1x.yaml": ("GeneralizedRCNN", 101, False, "nearest"),
    "COCO-Detection/faster_rcnn_R_101_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 101, False, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample"),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 50, True, "DySample+"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml": ("GeneralizedRCNN", 101, True, "nearest"),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DySamplePlus_FPN_1x.yaml": ("GeneralizedRCNN", 101, True, "DySample+"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml": ("PanopticFPN", 50, True, "nearest"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml": ("PanopticFPN", 50, True, "DySample"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySamplePlus_1x.yaml": ("PanopticFPN", 50, True, "DySample+"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_1x.yaml": ("PanopticFPN", 101, True, "nearest"),
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_DySamplePlus_1x.yaml": ("PanopticFPN", 101, True, "DySample+"),
}

# The tiny CPU variants that the quickstart and the end-to-end tests train.
QUICKSTART = {
    "quickstart/faster_rcnn_R_50_FPN_tiny.yaml": ("GeneralizedRCNN", 50, False, "nearest"),
    "quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml": ("GeneralizedRCNN", 50, False, "DySample"),
    "quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml": ("GeneralizedRCNN", 50, True, "DySample"),
    "quickstart/panoptic_fpn_R_50_DySample_tiny.yaml": ("PanopticFPN", 50, True, "DySample"),
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
# Every leaf config -> (meta-architecture, depth, mask head, upsampler).
SYSTEMS = {**EXPECTED, **QUICKSTART,
           **{name: EXPECTED[base] for name, (base, _) in EXPECTED_MMDET.items()}}


def leaf_configs():
    """Every config file except the Base-*.yaml files meant for inheritance."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    names = [os.path.relpath(p, CONFIG_DIR) for p in paths]
    return sorted(n for n in names if not os.path.basename(n).startswith("Base-"))


def test_every_config_is_covered():
    assert set(leaf_configs()) == (set(EXPECTED) | set(EXPECTED_MMDET) | set(QUICKSTART)
                                   | set(SEMANTIC_SEG)), (
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


@pytest.mark.parametrize("name", sorted(EXPECTED_MMDET))
def test_mmdet_recipe_config_is_its_system_run_as_mmdet_runs_it(name):
    """The architecture of the COCO-* config it inherits; mmdet's input, ResNet and tests."""
    from dysample_d2.convert import RELEASED_CHECKPOINTS, check_mmdet_recipe, task_of_config

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
    assert RELEASED_CHECKPOINTS[released] == os.path.basename(name)
    assert cfg.MODEL.WEIGHTS == f"checkpoints/mmdet/{released[:-len('.pth')]}_d2.pth"


@pytest.mark.parametrize("name", [n for n in leaf_configs() if n not in SEMANTIC_SEG])
def test_config_trains_one_step_and_infers(name):
    meta_arch, _, mask_on, upsampler = SYSTEMS[name]
    torch.manual_seed(0)
    cfg = load_config(name)
    model = build_model(cfg)
    upsamplers = [m for m in model.modules() if isinstance(m, DySample)]
    assert len(upsamplers) == (0 if upsampler == "nearest" else 3)
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
