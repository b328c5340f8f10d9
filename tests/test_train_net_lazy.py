"""train_net.py with LazyConfig (.py) configs: Detectron2's own new_baselines Mask R-CNN LSJ
recipe (and this project's DySample variant of it) trained, resumed and evaluated on the
generated COCO-layout data at tiny CPU settings given as key=value overrides; bad overrides
and checkpoints refused before anything is written."""
import json
import math
import os

import pytest
import torch
from detectron2 import model_zoo
from detectron2.engine import default_argument_parser

import train_net
from tools.engine import CheckpointMismatchError, setup_config

from conftest import REPO

D2_LSJ = model_zoo.get_config_file("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
DYSAMPLE_LSJ = os.path.join(REPO, "configs/new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py")

TRAIN_AUGMENTATIONS = (
    "[{_target_:detectron2.data.transforms.ResizeScale,min_scale:0.5,max_scale:1.0,"
    "target_height:128,target_width:128},"
    "{_target_:detectron2.data.transforms.RandomFlip,horizontal:true}]"
)


def tiny_overrides(output_dir, max_iter=2):
    return [
        # SyncBN needs several processes: GroupNorm, as Detectron2's scratch recipes use
        "model.backbone.bottom_up.stem.norm=GN", "model.backbone.bottom_up.stages.norm=GN",
        "model.backbone.norm=GN", "model.roi_heads.box_head.conv_norm=GN",
        "model.roi_heads.mask_head.conv_norm=GN",
        # 128 px images; the recipe's FixedSizeCrop is left out as it needs shapely for
        # polygon masks, which Detectron2 does not install
        "dataloader.train.mapper.augmentations=" + TRAIN_AUGMENTATIONS,
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=128",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "model.proposal_generator.pre_nms_topk=[200,100]",
        "model.proposal_generator.post_nms_topk=[50,50]",
        "model.roi_heads.batch_size_per_image=32",
        # keep every detection so that AP is computed after a few steps; an argument the
        # config leaves at its default, accepted because FastRCNNOutputLayers takes it
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "model.roi_heads.box_predictor.test_topk_per_image=20",
        # the recipe's lr is for batch 64 after 500 warm-up steps (a fraction of max_iter)
        "optimizer.lr=0.001",
        f"dataloader.evaluator.output_dir={output_dir}/inference",  # the detections' json
        f"train.max_iter={max_iter}", "train.device=cpu", "train.seed=0",
        f"train.output_dir={output_dir}",
    ]


def flat(results):
    return {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()}


def run(config, *argv):
    args = default_argument_parser().parse_args(["--config-file", str(config)] +
                                                [str(a) for a in argv])
    return train_net.main(args)


@pytest.fixture(scope="module")
def trained(coco_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lazy_train")
    results = run(D2_LSJ, *tiny_overrides(output_dir))
    return output_dir, results


@pytest.mark.slow
def test_training_writes_checkpoint_and_evaluates(trained):
    output_dir, results = trained
    assert set(results) == {"bbox", "segm"}
    assert all(math.isfinite(results[task]["AP"]) for task in ("bbox", "segm"))
    files = set(os.listdir(output_dir))
    assert {"model_final.pth", "last_checkpoint", "config.yaml", "log.txt", "metrics.json"} <= files
    assert not [f for f in files if f.startswith(".")], "temporary files left behind"
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 1
    assert {"model", "optimizer", "trainer"} <= set(checkpoint)  # trainer: the LR scheduler
    log = (output_dir / "log.txt").read_text()
    assert "\x1b[" not in log and "iter: 1" in log


@pytest.mark.slow
def test_eval_only_loads_the_checkpoint_exactly_and_prints_coco_metrics(trained, tmp_path):
    output_dir, results = trained
    evaluated = run(D2_LSJ, "--eval-only", *tiny_overrides(tmp_path / "eval"),
                    f"train.init_checkpoint={output_dir / 'model_final.pth'}")
    assert flat(evaluated) == pytest.approx(flat(results), rel=1e-9, abs=1e-9, nan_ok=True)
    detections = [json.loads((d / "inference" / "coco_instances_results.json").read_text())
                  for d in (output_dir, tmp_path / "eval")]
    assert detections[0] and detections[0] == detections[1]  # the very same model
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


@pytest.mark.slow
def test_resume_continues_at_the_saved_iteration(trained, tmp_path):
    import shutil

    output_dir, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed)
    run(D2_LSJ, "--resume", *tiny_overrides(resumed, max_iter=3))
    assert torch.load(resumed / "model_final.pth", weights_only=False)["iteration"] == 2


@pytest.mark.slow
def test_eval_only_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    """A Faster R-CNN checkpoint (no mask head) evaluated as Mask R-CNN: refused, naming keys."""
    output_dir, _ = trained
    state = torch.load(output_dir / "model_final.pth", weights_only=False)["model"]
    detection_only = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_head")}
    torch.save({"model": detection_only}, tmp_path / "faster_rcnn.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        run(D2_LSJ, "--eval-only", *tiny_overrides(tmp_path / "out"),
            f"train.init_checkpoint={tmp_path / 'faster_rcnn.pth'}")
    message = str(err.value)
    assert message.startswith("train.init_checkpoint=")
    # a summary: the count, the first modules of the mask head, how many more
    assert "missing in the checkpoint: " in message and "more modules)" in message
    assert "roi_heads.mask_head.mask_fcn1" in message and "backbone" not in message
    assert len(message.splitlines()) <= 4
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_process_cpu_training_with_the_recipes_ddp_settings(coco_root, tmp_path):
    """train.ddp of the recipe (fp16 gradient compression) over gloo, device_ids None."""
    from detectron2.engine import launch

    args = default_argument_parser().parse_args(
        ["--config-file", D2_LSJ, "--num-gpus", "2", *tiny_overrides(tmp_path, max_iter=1)])
    launch(train_net.main, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 0
    detections = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert len({d["image_id"] for d in detections}) == 3  # both processes' shares gathered


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(DYSAMPLE_LSJ), reason="DySample lazy configs not present")
def test_dysample_variant_trains_and_evaluates(coco_root, tmp_path):
    results = run(DYSAMPLE_LSJ, *tiny_overrides(tmp_path, max_iter=1))
    assert set(results) == {"bbox", "segm"}
    model = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert any(k.startswith("backbone.fpn_upsample3.offset") for k in model)


# ---- bad input: a clear error naming the override, before anything is written ----


@pytest.mark.parametrize("override, error, message", [
    ("model.backbone.bottom_up.stem.nrom=GN", KeyError,
     "the config has no key model.backbone.bottom_up.stem.nrom "
     "(did you mean model.backbone.bottom_up.stem.norm?)"),
    ("train.max_iter=abc", ValueError,
     "train.max_iter must be an int (the config has 2), got 'abc'"),
    ("train.max_iter", ValueError, "lazy configs take key=value overrides"),
])
def test_bad_override_fails_early(coco_root, tmp_path, override, error, message):
    with pytest.raises(error) as err:
        run(D2_LSJ, *tiny_overrides(tmp_path / "out"), override)
    assert f"override {override!r}" in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.isfile(DYSAMPLE_LSJ), reason="DySample lazy configs not present")
def test_bad_dysample_argument_fails_early(coco_root, tmp_path):
    with pytest.raises(ValueError, match=r"model.backbone.style must be one of"):
        run(DYSAMPLE_LSJ, "model.backbone.style=xx", f"train.output_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


def test_eval_only_needs_a_checkpoint(coco_root, tmp_path):
    with pytest.raises(ValueError, match="add train.init_checkpoint=path/to/model.pth"):
        run(D2_LSJ, "--eval-only", f"train.output_dir={tmp_path / 'out'}")
    with pytest.raises(FileNotFoundError, match="train.init_checkpoint: checkpoint file"):
        run(D2_LSJ, "--eval-only", f"train.output_dir={tmp_path / 'out'}",
            f"train.init_checkpoint={tmp_path / 'missing.pth'}")
    assert not (tmp_path / "out").exists()


def test_cuda_config_falls_back_to_cpu_without_amp():
    cfg = setup_config(D2_LSJ, ["train.device=cuda"])
    if torch.cuda.is_available():
        assert cfg.train.device == "cuda" and cfg.train.amp.enabled
    else:
        assert cfg.train.device == "cpu" and not cfg.train.amp.enabled
