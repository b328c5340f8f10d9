"""User errors: each refused with one clear message (what is wrong, the key, the fix) as a
UserInputError, before anything is written; train_net.py prints it as one ``error:`` line
with exit code 2 and no traceback."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser
from torch import nn

import train_net
from tools.engine import UserInputError, setup_config
from tools.engine import config as config_module

from conftest import REPO

DET = os.path.join(REPO, "configs/quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
PANOPTIC = os.path.join(REPO, "configs/quickstart/panoptic_fpn_R_50_DySample_tiny.yaml")
LSJ = os.path.join(REPO, "configs/new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py")
RETINANET = os.path.join(REPO, "configs/COCO-Detection/retinanet_R_50_DySample_FPN_1x.py")
UNREACHABLE = "http://127.0.0.1:9/R-50.pkl"  # refused at once: no network wait


def run(config, *argv):
    args = default_argument_parser().parse_args(["--config-file", str(config)] +
                                                [str(a) for a in argv])
    return train_net.main(args)


def refused(config, *argv, out):
    """The one-line message of the UserInputError that train_net.main raises."""
    with pytest.raises(UserInputError) as err:
        run(config, *argv)
    message = str(err.value)
    assert "\n" not in message, message
    assert not os.path.exists(out), "written before the input was refused"
    return message


def test_train_net_prints_one_error_line_without_traceback(tmp_path):
    """The whole script: stderr is the error line only (no traceback, no import warnings)."""
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", DET, "OUTPUT_DIR", str(tmp_path / "out"),
         "MODEL.FPN.DYSAMPLE.STYEL", "lp"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: command-line config options: Non-existent key: MODEL.FPN.DYSAMPLE.STYEL "
        "(did you mean MODEL.FPN.DYSAMPLE.STYLE?)"
    ]
    assert not (tmp_path / "out").exists()


def test_each_process_refuses_quietly_but_the_first(monkeypatch, capsys, tmp_path):
    """What launch runs in each process: exit code 2, one line from the first process."""
    args = default_argument_parser().parse_args(
        ["--config-file", DET, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "x"])
    for rank, lines in ((0, 1), (1, 0)):
        monkeypatch.setattr(train_net.comm, "get_rank", lambda: rank)
        with pytest.raises(SystemExit) as exit_:
            train_net.main_or_refuse(args)
        assert exit_.value.code == 2
        stderr = capsys.readouterr().err.splitlines()
        assert len(stderr) == lines and all(line.startswith("error: ") for line in stderr)


def test_user_errors_keep_their_builtin_types():
    with pytest.raises(KeyError) as err:
        setup_config(DET, ["MODEL.RESNET.DEPTH", "50"])
    assert isinstance(err.value, UserInputError)
    assert not str(err.value).startswith("'")  # not KeyError's quoted message
    with pytest.raises(ValueError):
        setup_config(DET, ["SOLVER.MAX_ITER", "abc"])
    with pytest.raises(FileNotFoundError):
        setup_config("nope.yaml")


def test_a_bug_is_not_a_user_error(coco_root, tmp_path, monkeypatch):
    """Any other exception keeps its traceback: main_or_refuse lets it through."""
    monkeypatch.setattr(train_net, "check_input", lambda args: 1 / 0)
    args = default_argument_parser().parse_args(["--config-file", DET])
    with pytest.raises(ZeroDivisionError):
        train_net.main_or_refuse(args)


# ---- class counts that do not fit the datasets ----


@pytest.mark.parametrize("config, argv, expected", [
    (DET, ["MODEL.ROI_HEADS.NUM_CLASSES", "10"],
     "MODEL.ROI_HEADS.NUM_CLASSES is 10 but dataset 'coco_2017_train' has 80 thing_classes: "
     "set MODEL.ROI_HEADS.NUM_CLASSES 80"),
    (DET, ["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET.NUM_CLASSES", "10"],
     "MODEL.RETINANET.NUM_CLASSES is 10 but dataset 'coco_2017_train' has 80 thing_classes: "
     "set MODEL.RETINANET.NUM_CLASSES 80"),
    (PANOPTIC, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "10"],
     "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 10 but dataset 'coco_2017_train_panoptic_separated' "
     "has 54 stuff_classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES 54"),
])
def test_num_classes_must_fit_the_datasets(coco_root, tmp_path, config, argv, expected):
    out = tmp_path / "out"
    assert refused(config, *argv, "OUTPUT_DIR", out, out=out) == expected


CARAFE_FPN = os.path.join(REPO, "configs/quickstart/faster_rcnn_R_50_CARAFE_CarafeFPN_tiny.yaml")


@pytest.mark.parametrize("config, argv, expected", [
    (CARAFE_FPN, ["MODEL.FPN.UPSAMPLER", "bicubic"],
     "MODEL.FPN.UPSAMPLER must be one of ['nearest', 'bilinear', 'deconv', 'pixel_shuffle', "
     "'carafe', 'dysample'], got 'bicubic'"),
    (CARAFE_FPN, ["MODEL.FPN.CARAFE.ENCODER_KERNEL", "2"],
     "MODEL.FPN.CARAFE.ENCODER_KERNEL must be odd (the output keeps the input's size), got 2"),
    (CARAFE_FPN, ["MODEL.FPN.CARAFE.UP_GROUP", "5"],
     "MODEL.FPN.CARAFE.UP_GROUP=5 must divide MODEL.FPN.OUT_CHANNELS=256; allowed values: "
     "[1, 2, 4, 8, 16, 32, 64, 128, 256]"),
    (DET, ["MODEL.FPN.UPSAMPLER", "deconv", "MODEL.FPN.UPSAMPLE_KERNEL", "0"],
     "MODEL.FPN.UPSAMPLE_KERNEL must be an int >= 1, got 0"),
])
def test_bad_fpn_upsampler_is_one_line_naming_the_key(tmp_path, config, argv, expected):
    out = tmp_path / "out"
    assert refused(config, *argv, "OUTPUT_DIR", out, out=out).endswith(expected)


@pytest.mark.parametrize("config, override, expected", [
    (LSJ, "model.roi_heads.num_classes=10",
     "model.roi_heads.num_classes is 10 but dataset 'coco_2017_train' has 80 thing_classes: "
     "set model.roi_heads.num_classes=80"),
    (RETINANET, "model.num_classes=10",
     "model.num_classes is 10 but dataset 'coco_2017_train' has 80 thing_classes: "
     "set model.num_classes=80"),
])
def test_lazy_num_classes_must_fit_the_datasets(coco_root, tmp_path, config, override, expected):
    out = tmp_path / "out"
    assert refused(config, override, 'train.init_checkpoint=""', f"train.output_dir={out}",
                   out=out) == expected


# ---- lazy overrides ----


def test_typo_of_an_argument_passed_through_kwargs(coco_root, tmp_path):
    """build_detection_train_loader takes **kwargs (for the DataLoader): a near miss of an
    argument it names is a typo, not an extra option."""
    out = tmp_path / "out"
    message = refused(LSJ, "dataloader.train.total_batch_sise=2", f"train.output_dir={out}",
                      out=out)
    assert message == (
        "override 'dataloader.train.total_batch_sise=2': the config has no key "
        "dataloader.train.total_batch_sise (did you mean dataloader.train.total_batch_size?)"
    )


def test_arguments_of_base_classes_and_kwargs_are_accepted():
    cfg = setup_config(LSJ, [
        "model.roi_heads.proposal_append_gt=false",  # ROIHeads', through StandardROIHeads
        "dataloader.train.pin_memory=true",  # the DataLoader's, through **kwargs
    ])
    assert cfg.model.roi_heads.proposal_append_gt is False
    assert cfg.dataloader.train.pin_memory is True
    with pytest.raises(KeyError, match=r"did you mean model.roi_heads.positive_fraction\?"):
        setup_config(LSJ, ["model.roi_heads.positive_fractoin=0.5"])


# ---- checkpoints ----


@pytest.fixture
def truncated(tmp_path):
    """The first 1000 bytes of a real checkpoint."""
    torch.save({"model": nn.Linear(64, 64).state_dict()}, tmp_path / "real.pth")
    path = tmp_path / "truncated.pth"
    path.write_bytes((tmp_path / "real.pth").read_bytes()[:1000])
    return path


@pytest.mark.parametrize("eval_only", [True, False])
def test_truncated_checkpoint(coco_root, tmp_path, truncated, eval_only):
    out = tmp_path / "out"
    message = refused(DET, *(["--eval-only"] if eval_only else []), "OUTPUT_DIR", out,
                      "MODEL.WEIGHTS", truncated, out=out)
    assert message.startswith(f"MODEL.WEIGHTS: checkpoint file '{truncated}' cannot be read "
                              "(truncated or corrupt: ")
    assert message.endswith("download or save it again, or set MODEL.WEIGHTS "
                            "path/to/model.pth to another file")


def test_truncated_lazy_checkpoint(coco_root, tmp_path, truncated):
    out = tmp_path / "out"
    message = refused(LSJ, "--eval-only", f"train.init_checkpoint={truncated}",
                      f"train.output_dir={out}", out=out)
    assert "cannot be read" in message and "set train.init_checkpoint=path/to/model.pth" in message


def test_weights_url_that_cannot_be_downloaded(coco_root, tmp_path):
    out = tmp_path / "out"
    message = refused(DET, "OUTPUT_DIR", out, "MODEL.WEIGHTS", UNREACHABLE, out=out)
    assert message.startswith(f"MODEL.WEIGHTS: cannot download '{UNREACHABLE}' (")
    assert ('train from scratch with MODEL.WEIGHTS "" and MODEL.RESNETS.NORM GN (or SyncBN on '
            "GPUs; FrozenBN diverges from scratch)") in message
    assert "download the file elsewhere and set MODEL.WEIGHTS path/to/local/file" in message


def test_lazy_init_checkpoint_url_that_cannot_be_downloaded(coco_root, tmp_path):
    out = tmp_path / "out"
    message = refused(LSJ, f"train.init_checkpoint={UNREACHABLE}", f"train.output_dir={out}",
                      out=out)
    assert message.startswith(f"train.init_checkpoint: cannot download '{UNREACHABLE}'")
    assert 'train.init_checkpoint="" and GN norms' in message


def test_checkpoint_of_another_class_count_names_the_fix(coco_root, tmp_path):
    """Shapes that differ: counted, one example, and the class count to set."""
    from detectron2.modeling import build_model

    cfg = setup_config(DET, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "three.pth")
    out = tmp_path / "out"
    with pytest.raises(UserInputError) as err:
        run(DET, "--eval-only", "OUTPUT_DIR", out, "MODEL.WEIGHTS", tmp_path / "three.pth")
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[1].startswith("  shapes differ: 4 tensors: roi_heads.box_predictor.cls_score")
    assert lines[2] == ("  likely cause: the checkpoint has 3 classes: set "
                        "MODEL.ROI_HEADS.NUM_CLASSES 3")
    assert not out.exists()


# ---- noise ----


def test_dataloader_workers_are_capped_at_the_cpu_count(monkeypatch, caplog):
    monkeypatch.setattr(config_module, "cpu_count", lambda: 1)
    with caplog.at_level(logging.INFO, logger="tools.engine.config"):
        cfg = setup_config(DET, ["DATALOADER.NUM_WORKERS", "4"])
    assert cfg.DATALOADER.NUM_WORKERS == 1
    assert "DATALOADER.NUM_WORKERS lowered from 4 to 1" in caplog.text
    cfg = setup_config(LSJ)
    assert cfg.dataloader.train.num_workers == 1 and cfg.dataloader.test.num_workers == 1
