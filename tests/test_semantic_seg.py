"""The semantic FPN head with DySample: parameters, keys, checkpoints, configs, ADE20K data."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead, build_sem_seg_head
from detectron2.utils.events import EventStorage
from PIL import Image

from dysample_d2 import DySample, DySampleSemSegFPNHead, add_dysample_config
from dysample_d2.config import check_dysample_config, upsampler_from_config

from helpers import config_path, load_config, synthetic_batch

ADE = "ADE20K-SemanticSegmentation/"
# config -> (meta-architecture, DySample modules in the FPN, DySample modules in the head)
CONFIGS = {
    ADE + "semantic_fpn_R_50_80k.yaml": ("SemanticSegmentor", 0, 0),
    ADE + "semantic_fpn_R_50_DySample_FPN_80k.yaml": ("SemanticSegmentor", 3, 0),
    ADE + "semantic_fpn_R_50_DySample_head_80k.yaml": ("SemanticSegmentor", 0, 6),
    ADE + "semantic_fpn_R_50_DySample_FPN_head_80k.yaml": ("SemanticSegmentor", 3, 6),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_FPN_head_1x.yaml": ("PanopticFPN", 3, 6),
}
# Parameters each DySample adds at 256 (FPN) or 128 (head) channels, scale 2, 4 groups:
# lp: a 1x1 conv C -> 2 * 4 * 2^2 = 32 (+ bias); pl: C/4 -> 8; DySample+ adds a scope conv.
FPN_UPSAMPLER_PARAMS = 256 * 32 + 32
HEAD_UPSAMPLER_PARAMS = {("lp", False): 128 * 32 + 32, ("pl", False): 32 * 8 + 8,
                         ("lp", True): 128 * 32 * 2 + 32}
FPN_SHAPES = {f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in (2, 3, 4, 5)}


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def head_config(**dysample):
    cfg = get_cfg()
    add_dysample_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DySampleSemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    for key, value in dysample.items():
        cfg.MODEL.SEM_SEG_HEAD.DYSAMPLE[key] = value
    return cfg


@pytest.mark.parametrize("style, dyscope", sorted(HEAD_UPSAMPLER_PARAMS))
def test_head_replaces_each_bilinear_step_and_adds_the_stated_parameters(style, dyscope):
    cfg = head_config(STYLE=style, DYSCOPE=dyscope)
    head = build_sem_seg_head(cfg, FPN_SHAPES)
    baseline = SemSegFPNHead(cfg, FPN_SHAPES)
    assert isinstance(head, DySampleSemSegFPNHead)
    sites = [name for name, m in head.named_modules() if isinstance(m, DySample)]
    assert sites == ["p3.1", "p4.1", "p4.3", "p5.1", "p5.3", "p5.5"]
    assert not any(isinstance(m, torch.nn.Upsample) for m in head.modules())
    assert all(m.in_channels == 128 and m.style == style for m in head.modules()
               if isinstance(m, DySample))
    added = num_params(head) - num_params(baseline)
    assert added == 6 * HEAD_UPSAMPLER_PARAMS[(style, dyscope)]
    assert (style, dyscope) != ("lp", False) or added == 24768


def test_head_equals_semsegfpnhead_at_zero_offsets():
    """DySample with zero offsets is bilinear 2x: the head is then SemSegFPNHead exactly."""
    cfg = head_config()
    torch.manual_seed(0)
    baseline = SemSegFPNHead(cfg, FPN_SHAPES).eval()
    head = build_sem_seg_head(cfg, FPN_SHAPES).eval()
    head.load_state_dict(baseline.state_dict(), strict=False)
    for m in head.modules():
        if isinstance(m, DySample):
            torch.nn.init.zeros_(m.offset.weight)
    features = {k: torch.randn(1, 256, 64 // s.stride, 96 // s.stride)
                for k, s in FPN_SHAPES.items()}
    with torch.no_grad():
        expected, _ = baseline(features)
        out, _ = head(features)
    assert out.shape == (1, 150, 64, 96)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("STYLE", "bilinear",
         "MODEL.SEM_SEG_HEAD.DYSAMPLE.STYLE must be one of ['lp', 'pl'], got 'bilinear'"),
        ("GROUPS", 3,
         "MODEL.SEM_SEG_HEAD.DYSAMPLE.GROUPS=3 must divide MODEL.SEM_SEG_HEAD.CONVS_DIM=128; "
         "allowed values: [1, 2, 4, 8, 16, 32, 64, 128]"),
        ("GROUPS", 0, "MODEL.SEM_SEG_HEAD.DYSAMPLE.GROUPS must be an int >= 1, got 0"),
        ("DYSCOPE", "yes", "MODEL.SEM_SEG_HEAD.DYSAMPLE.DYSCOPE must be True or False"),
        ("SCOPE_BIAS", True, "MODEL.SEM_SEG_HEAD.DYSAMPLE.SCOPE_BIAS=True needs "
         "MODEL.SEM_SEG_HEAD.DYSAMPLE.DYSCOPE=True"),
    ],
)
def test_bad_head_values_fail_naming_the_key(key, value, message):
    cfg = head_config(**{key: value})
    for check in (lambda: build_sem_seg_head(cfg, FPN_SHAPES), lambda: check_dysample_config(cfg)):
        with pytest.raises(ValueError) as err:
            check()
        assert message in str(err.value)


def test_style_pl_needs_convs_dim_divisible_by_4():
    cfg = head_config(STYLE="pl", GROUPS=1)
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 130
    with pytest.raises(ValueError, match=r"STYLE='pl' needs MODEL.SEM_SEG_HEAD.CONVS_DIM "):
        upsampler_from_config(cfg, "MODEL.SEM_SEG_HEAD")


def test_early_check_validates_only_the_sites_a_config_selects():
    cfg = head_config(GROUPS=3)
    cfg.MODEL.FPN.DYSAMPLE.GROUPS = 3
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    check_dysample_config(cfg)  # neither site selected: unused keys never fail
    cfg.MODEL.BACKBONE.NAME = "build_resnet_dysample_fpn_backbone"
    with pytest.raises(ValueError, match=r"MODEL.FPN.DYSAMPLE.GROUPS=3 must divide"):
        check_dysample_config(cfg)
    assert upsampler_from_config(load_config(ADE + "semantic_fpn_R_50_80k.yaml")) == ("dysample", {
        "style": "lp", "groups": 4, "dyscope": False, "scope_bias": False})


def test_unknown_head_key_is_refused_naming_it():
    from tools.engine import setup_config

    with pytest.raises(KeyError, match="MODEL.SEM_SEG_HEAD.DYSAMPLE.GROUP"):
        setup_config(config_path(ADE + "semantic_fpn_R_50_DySample_head_80k.yaml"),
                     ["MODEL.SEM_SEG_HEAD.DYSAMPLE.GROUP", "8"])


@pytest.mark.parametrize(
    "baseline, name",
    [(ADE + "semantic_fpn_R_50_80k.yaml", ADE + "semantic_fpn_R_50_DySample_FPN_head_80k.yaml"),
     ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
      "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_FPN_head_1x.yaml")],
)
def test_checkpoint_of_the_bilinear_model_loads_with_only_dysample_keys_missing(baseline, name):
    torch.manual_seed(0)
    original = build_model(load_config(baseline))
    state = original.state_dict()
    model = build_model(load_config(name))
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    upsamplers = tuple(n + "." for n, m in model.named_modules() if isinstance(m, DySample))
    assert len(upsamplers) == 9
    assert result.missing_keys and all(k.startswith(upsamplers) for k in result.missing_keys)
    added = num_params(model) - num_params(original)
    assert added == 3 * FPN_UPSAMPLER_PARAMS + 6 * HEAD_UPSAMPLER_PARAMS[("lp", False)] == 49440


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_trains_a_step_and_infers_150_or_54_classes(name):
    meta_arch, in_fpn, in_head = CONFIGS[name]
    torch.manual_seed(0)
    cfg = load_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == meta_arch
    model = build_model(cfg)
    fpn_upsamplers = [m for m in model.backbone.modules() if isinstance(m, DySample)]
    head_upsamplers = [m for m in model.sem_seg_head.modules() if isinstance(m, DySample)]
    assert (len(fpn_upsamplers), len(head_upsamplers)) == (in_fpn, in_head)
    num_classes = 150 if meta_arch == "SemanticSegmentor" else 54
    assert (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE) == (
        num_classes, 255)

    model.train()
    with EventStorage():
        losses = model(synthetic_batch(cfg))
    assert ("loss_sem_seg" in losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for m in fpn_upsamplers + head_upsamplers:
        assert m.offset.weight.grad is not None and m.offset.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 70, 90) * 255, "height": 70, "width": 90}])
    assert out[0]["sem_seg"].shape == (num_classes, 70, 90)


def test_lazy_head_is_the_yacs_head():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    node = L(DySampleSemSegFPNHead)(input_shape=FPN_SHAPES, num_classes=150, conv_dims=128,
                                    common_stride=4, norm="GN", ignore_value=255, groups=8)
    head = instantiate(node)
    yacs = build_sem_seg_head(head_config(GROUPS=8), FPN_SHAPES)
    assert [k for k in head.state_dict()] == [k for k in yacs.state_dict()]
    assert all(m.groups == 8 for m in head.modules() if isinstance(m, DySample))


LAZY_PANOPTIC = "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_FPN_head_1x.py"


def test_lazy_panoptic_config_changes_only_the_upsamplers_and_trains():
    import re

    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate

    from dysample_d2.config import check_dysample_config

    cfg = LazyConfig.load(config_path(LAZY_PANOPTIC))
    zoo = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py")
    head, zoo_head = cfg.model.sem_seg_head, zoo.model.sem_seg_head
    assert head._target_ is DySampleSemSegFPNHead and zoo_head._target_ is SemSegFPNHead
    assert {k: v for k, v in head.items() if k != "_target_"} == dict(
        {k: v for k, v in zoo_head.items() if k != "_target_"},
        style="lp", groups=4, dyscope=False, scope_bias=False)
    with open(config_path(LAZY_PANOPTIC)) as f:
        stated = re.search(r"DySample parameters: ([\d,]+)", f.read()).group(1)
    stated = int(stated.replace(",", ""))

    bottom_up = cfg.model.backbone.bottom_up  # tiny: GroupNorm (random-init FrozenBN diverges)
    bottom_up.stem.norm = bottom_up.stages.norm = "GN"
    cfg.model.proposal_generator.pre_nms_topk = cfg.model.proposal_generator.post_nms_topk = (
        50, 50)
    cfg.model.roi_heads.batch_size_per_image = 32
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    upsamplers = [m for m in model.modules() if isinstance(m, DySample)]
    assert stated == sum(p.numel() for m in upsamplers for p in m.parameters()) == 49440
    model.train()
    with EventStorage():
        losses = model(synthetic_batch(None, batch_size=2, height=64, width=96))
    sum(losses.values()).backward()
    assert all(m.offset.weight.grad.abs().sum() > 0 for m in upsamplers)

    bad = LazyConfig.apply_overrides(LazyConfig.load(config_path(LAZY_PANOPTIC)),
                                     ["model.sem_seg_head.groups=3"])
    with pytest.raises(ValueError, match=r"model.sem_seg_head.groups=3 must divide "
                                         r"model.sem_seg_head.conv_dims=128"):
        check_dysample_config(bad)


# --- the ADE20K-layout synthetic dataset ---------------------------------------------------

@pytest.fixture(scope="module")
def ade20k_root():
    from synthetic_data import generate_synthetic_ade20k

    root = os.environ["DETECTRON2_DATASETS"]  # set by conftest.py before detectron2 is imported
    generate_synthetic_ade20k(root, train_images=4, val_images=2, size=96, seed=0)
    return root


def test_ade20k_layout_loads_by_builtin_names(ade20k_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    ade = os.path.join(ade20k_root, "ADEChallengeData2016")
    for name, split, prefix, n in (("ade20k_sem_seg_train", "training", "ADE_train", 4),
                                   ("ade20k_sem_seg_val", "validation", "ADE_val", 2)):
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == n
        assert dicts[0]["file_name"] == os.path.join(ade, "images", split, f"{prefix}_00000001.jpg")
        labels = set()
        for d in dicts:
            with Image.open(d["sem_seg_file_name"]) as im:
                assert im.mode == "L" and im.size == (96, 96)
                labels |= set(np.unique(np.asarray(im)).tolist())
        assert labels <= set(range(150)) | {255} and len(labels - {255}) >= 3
        assert MetadataCatalog.get(name).evaluator_type == "sem_seg"


def test_ade20k_labels_are_the_drawn_classes(ade20k_root):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    from synthetic_data.ade20k import ADE20K_CLASS_OF

    allowed = {ADE20K_SEM_SEG_CATEGORIES.index(c) for c in ADE20K_CLASS_OF.values()} | {255}
    for d in DatasetCatalog.get("ade20k_sem_seg_train"):
        with Image.open(d["sem_seg_file_name"]) as im:
            assert set(np.unique(np.asarray(im)).tolist()) <= allowed


def test_sem_seg_evaluator_scores_the_ground_truth_100(ade20k_root):
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import SemSegEvaluator

    evaluator = SemSegEvaluator("ade20k_sem_seg_val", distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get("ade20k_sem_seg_val"):
        gt = torch.as_tensor(np.asarray(Image.open(d["sem_seg_file_name"]), dtype=np.int64))
        logits = torch.nn.functional.one_hot(gt.clamp(max=149), 150).permute(2, 0, 1).float()
        evaluator.process([d], [{"sem_seg": logits}])
    results = evaluator.evaluate()["sem_seg"]
    assert results["mIoU"] == pytest.approx(100.0) and results["pACC"] == pytest.approx(100.0)


def test_ade20k_generator_reuses_and_refuses_as_the_coco_one(ade20k_root, tmp_path):
    from synthetic_data import generate_synthetic_ade20k, validate_ade20k_dir

    args = dict(train_images=4, val_images=2, size=96, seed=0)
    ade_dir, reused = generate_synthetic_ade20k(ade20k_root, **args)
    assert reused
    validate_ade20k_dir(ade_dir)
    with pytest.raises(FileExistsError, match="other arguments"):
        generate_synthetic_ade20k(ade20k_root, **dict(args, seed=1))
    (tmp_path / "ADEChallengeData2016").mkdir()  # e.g. the real ADE20K: never replaced
    with pytest.raises(FileExistsError, match="not written by this generator"):
        generate_synthetic_ade20k(str(tmp_path), **args, force=True)


# --- end to end ----------------------------------------------------------------------------

@pytest.mark.slow
def test_train_net_trains_and_evaluates_miou(ade20k_root, tmp_path):
    import train_net
    from detectron2.engine import default_argument_parser

    argv = [
        "--config-file", config_path(ADE + "semantic_fpn_R_50_DySample_FPN_head_80k.yaml"),
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
        "MODEL.RESNETS.NORM", "GN", "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "INPUT.CROP.SIZE", "(64, 64)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", str(tmp_path),
    ]
    results = train_net.main(default_argument_parser().parse_args(argv))
    miou = results["sem_seg"]["mIoU"]
    print(f"mIoU after 2 iterations: {miou:.2f}")
    assert np.isfinite(miou) and 0 <= miou <= 100
    assert os.path.isfile(tmp_path / "model_final.pth")
