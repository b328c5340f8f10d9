"""train_net.py with YACS configs, end to end on the generated COCO-layout data: the real
configs, data loading, trainer, checkpointer and evaluators, at tiny CPU settings; and bad
input refused before anything is written."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser, launch

import train_net
from tools.engine import CheckpointMismatchError

from conftest import REPO

CONFIGS = {
    "det": os.path.join(REPO, "configs/quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml"),
    "mask": os.path.join(REPO, "configs/quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml"),
    "panoptic": os.path.join(REPO, "configs/quickstart/panoptic_fpn_R_50_DySample_tiny.yaml"),
}
EXPECTED_TASKS = {
    "det": {"bbox"},
    "mask": {"bbox", "segm"},
    "panoptic": {"bbox", "segm", "sem_seg", "panoptic_seg"},
}


def tiny_opts(output_dir, max_iter=4):
    return [
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
        # keep every detection so that AP is computed (finite) after a few steps
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
        "OUTPUT_DIR", str(output_dir),
    ]


def run(*argv):
    return train_net.main(default_argument_parser().parse_args([str(a) for a in argv]))


def flat_metrics(results):
    return {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()}


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request, coco_root, tmp_path_factory):
    task = request.param
    output_dir = tmp_path_factory.mktemp(f"train_{task}")
    results = run("--config-file", CONFIGS[task], *tiny_opts(output_dir))
    # read now: later in-process runs add their own handlers to Detectron2's loggers
    log = (output_dir / "log.txt").read_text()
    return task, output_dir, results, log


@pytest.mark.slow
def test_training_writes_checkpoint_events_and_metrics(trained):
    task, output_dir, results, _ = trained
    assert set(results) == EXPECTED_TASKS[task]
    metrics = flat_metrics(results)
    for key in ["bbox/AP", "bbox/AP50", "bbox/APs"] + (["segm/AP"] if task != "det" else []):
        assert math.isfinite(metrics[key]), (key, metrics[key])
    if task == "panoptic":
        for key in ["panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "sem_seg/mIoU"]:
            assert math.isfinite(metrics[key]), (key, metrics[key])
    files = os.listdir(output_dir)
    assert {"model_final.pth", "model_0000001.pth", "last_checkpoint", "config.yaml"} <= set(files)
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert not [f for f in files if f.startswith(".")], "temporary files left behind"
    checkpoint = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)
    assert checkpoint["iteration"] == 3
    assert any(k.startswith("backbone.fpn_upsample3.offset") for k in checkpoint["model"])
    lines = read_metrics(output_dir)
    assert [m["iteration"] for m in lines if "total_loss" in m][-1] == 3
    assert all(math.isfinite(m["total_loss"]) for m in lines if "total_loss" in m)
    assert lines[-1]["bbox/AP"] == pytest.approx(metrics["bbox/AP"], nan_ok=True)


@pytest.mark.slow
def test_log_file_is_plain_text_with_each_dump_once(trained):
    _, output_dir, _, log = trained
    assert "\x1b[" not in log  # no terminal colour codes
    for dump in ("Environment info:", "Full config, saved to", "Model:\n", "Command line arguments"):
        assert log.count(dump) == 1, dump
    assert "Contents of args.config_file" not in log  # the full config includes the file
    assert "iter: 3" in log and "total_loss" in log  # Detectron2's progress lines


@pytest.mark.slow
def test_eval_only_reproduces_training_metrics(trained):
    task, output_dir, results, _ = trained
    weights = os.path.join(output_dir, "model_final.pth")
    evaluated = run(
        "--config-file", CONFIGS[task], "--eval-only", *tiny_opts(output_dir / "eval"),
        "MODEL.WEIGHTS", weights,
    )
    assert flat_metrics(evaluated) == pytest.approx(
        flat_metrics(results), rel=1e-9, abs=1e-9, nan_ok=True
    )


@pytest.mark.slow
def test_resume_continues_at_saved_iteration(trained, tmp_path):
    task, output_dir, _, _ = trained
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed_dir)
    before = len(read_metrics(resumed_dir))
    run("--config-file", CONFIGS[task], "--resume", *tiny_opts(resumed_dir, max_iter=6))
    new_iterations = [m["iteration"] for m in read_metrics(resumed_dir)[before:] if "total_loss" in m]
    assert new_iterations and min(new_iterations) >= 4 and max(new_iterations) == 5
    checkpoint = torch.load(os.path.join(resumed_dir, "model_final.pth"), weights_only=False)
    assert checkpoint["iteration"] == 5


@pytest.mark.slow
def test_two_process_cpu_training_and_evaluation(coco_root, tmp_path):
    config = CONFIGS["det"]
    argv = ["--config-file", config, "--num-gpus", "2", *tiny_opts(tmp_path, max_iter=2)]
    args = default_argument_parser().parse_args(argv)
    launch(train_net.main, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 1
    assert (tmp_path / "inference" / "coco_instances_results.json").exists()

    eval_dir = tmp_path / "eval"
    argv = ["--config-file", config, "--num-gpus", "2", "--eval-only",
            *tiny_opts(eval_dir), "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    args = default_argument_parser().parse_args(argv)
    launch(train_net.main, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
    with open(eval_dir / "inference" / "coco_instances_results.json") as f:
        detections = json.load(f)
    image_ids = {d["image_id"] for d in detections}
    assert len(image_ids) == 3  # both processes' shares of the 3 val images were gathered


# ---- bad input: a clear error naming the file or key, before anything is written ----


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config-file 'nope.yaml' does not exist"):
        run("--config-file", "nope.yaml", "OUTPUT_DIR", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_names_the_key_meant(coco_root, tmp_path):
    with pytest.raises(KeyError, match=r"STYEL \(did you mean MODEL.FPN.DYSAMPLE.STYLE\?\)"):
        run("--config-file", CONFIGS["det"], *tiny_opts(tmp_path / "out"),
            "MODEL.FPN.DYSAMPLE.STYEL", "lp")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("eval_only", [False, True])
def test_bad_config_value_is_refused_before_anything_is_written(coco_root, tmp_path, eval_only):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")  # never read: the config is refused first
    argv = ["--eval-only"] if eval_only else []
    with pytest.raises(ValueError, match=r"MODEL.FPN.DYSAMPLE.STYLE must be one of \['lp', 'pl'\]"):
        run("--config-file", CONFIGS["det"], *argv, *tiny_opts(tmp_path / "out"),
            "MODEL.WEIGHTS", weights, "MODEL.FPN.DYSAMPLE.STYLE", "xx")
    assert not (tmp_path / "out").exists()


def test_eval_only_needs_existing_weights(coco_root, tmp_path):
    with pytest.raises(ValueError, match="--eval-only needs a checkpoint"):
        run("--config-file", CONFIGS["det"], "--eval-only", *tiny_opts(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="missing.pth' does not exist"):
        run("--config-file", CONFIGS["det"], "--eval-only", *tiny_opts(tmp_path / "b"),
            "MODEL.WEIGHTS", tmp_path / "missing.pth")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_eval_only_refuses_a_checkpoint_of_another_model(coco_root, tmp_path):
    """A nearest-FPN checkpoint evaluated as DySample-FPN would leave the upsamplers random."""
    from detectron2.modeling import build_model

    from helpers import load_config

    nearest = build_model(load_config("quickstart/faster_rcnn_R_50_FPN_tiny.yaml"))
    torch.save({"model": nearest.state_dict()}, tmp_path / "nearest.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        run("--config-file", CONFIGS["det"], "--eval-only", *tiny_opts(tmp_path / "out"),
            "MODEL.WEIGHTS", tmp_path / "nearest.pth")
    message = str(err.value)
    # a summary, not a key per line: the count, the first modules, the likely cause
    assert "missing in the checkpoint: 9 tensors: " in message
    assert "backbone.fpn_upsample5.offset.{bias, weight}" in message
    assert "likely cause: the checkpoint has no DySample upsamplers" in message
    assert "fpn_lateral" not in message and len(message.splitlines()) <= 4
    assert not (tmp_path / "out").exists()  # refused before config.yaml or log.txt


def test_missing_dataset_directory_is_reported(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "no_datasets"))
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIGS["det"],
         "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "dataset 'coco_2017_train'" in proc.stderr and "does not exist" in proc.stderr
    assert "scripts/make_coco_dataset.py" in proc.stderr
    assert not (tmp_path / "out").exists()
