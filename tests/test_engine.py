"""Checkpoint writing, the config builders, evaluators, the demo, and the quickstart's
result parsing."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tools.engine import AtomicDetectionCheckpointer, build_evaluator, setup_config
from tools.engine.checks import closest_key

from conftest import REPO



def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    monkeypatch.undo()
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 1


def test_demo_draws_predictions_on_a_generated_image(tmp_path, capsys):
    import demo

    image = np.zeros((96, 128, 3), dtype=np.uint8)
    image[20:60, 30:90] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "input.jpg")
    config = os.path.join(REPO, "configs/quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml")
    # a random model with every detection kept, so that something is drawn
    demo.main(["--config-file", config, "--input", str(tmp_path / "input.jpg"),
               "--output", str(tmp_path / "out.png"), "--confidence-threshold", "0.0",
               "MODEL.DEVICE", "cpu"])
    drawn = np.asarray(Image.open(tmp_path / "out.png"))
    assert drawn.shape[:2] == (96, 128)
    assert not np.array_equal(drawn[..., :3], image)  # boxes or masks were drawn over it
    assert "instances above 0.0" in capsys.readouterr().out


def test_demo_rejects_a_missing_image(tmp_path, capsys):
    import demo

    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", "x.yaml", "--input", "nope.jpg"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --input 'nope.jpg' does not exist\n"


def test_quickstart_reads_detectron2_result_lines():
    import quickstart

    output = "\n".join([
        "[d2.evaluation.testing]: copypaste: Task: bbox",
        "[d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl",
        "[d2.evaluation.testing]: copypaste: 2.2398,14.2755,0.2640,1.9575,3.2253,10.0000",
        "[d2.evaluation.testing]: copypaste: Task: segm",
        "[d2.evaluation.testing]: copypaste: AP,AP50",
        "[d2.evaluation.testing]: copypaste: 1.5,nan",
    ])
    results = quickstart.parse_copypaste(output)
    assert results["bbox"]["AP50"] == pytest.approx(14.2755)
    assert set(results) == {"bbox", "segm"} and np.isnan(results["segm"]["AP50"])


def test_resume_reads_the_checkpoint_tag_through_atomic_writes(tmp_path):
    model = nn.Linear(3, 2)
    AtomicDetectionCheckpointer(model, str(tmp_path)).save("model_0000004", iteration=4)
    restored = nn.Linear(3, 2)
    checkpointer = AtomicDetectionCheckpointer(restored, str(tmp_path))
    assert checkpointer.has_checkpoint()
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 4
    assert torch.equal(restored.weight, model.weight)


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    AtomicDetectionCheckpointer(nn.Linear(3, 2), str(tmp_path)).save("model_final")
    (tmp_path / "plain").write_bytes(b"")
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    for name in ("model_final.pth", "last_checkpoint"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected


# ---- the config builders ----

QUICKSTART = os.path.join(REPO, "configs/quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")


def test_setup_config_merges_options_and_freezes_on_request():
    cfg = setup_config(QUICKSTART, ["SOLVER.MAX_ITER", "7", "MODEL.FPN.DYSAMPLE.STYLE", "pl"],
                       freeze=True)
    assert cfg.is_frozen() and cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.FPN.DYSAMPLE.STYLE == "pl"
    cfg = setup_config(QUICKSTART)
    cfg.SOLVER.MAX_ITER = 3  # callers that set keys in code
    assert cfg.MODEL.FPN.DYSAMPLE.GROUPS == 4


@pytest.mark.parametrize("opts, error, message", [
    (["MODEL.FPN.DYSAMPLE.STYEL", "lp"], KeyError,
     "Non-existent key: MODEL.FPN.DYSAMPLE.STYEL (did you mean MODEL.FPN.DYSAMPLE.STYLE?)"),
    (["MODEL.RESNET.DEPTH", "50"], KeyError, "(did you mean MODEL.RESNETS.DEPTH?)"),
    (["MODEL.FPN.DYSAMPLE.STYLE", "xx"], ValueError,
     "MODEL.FPN.DYSAMPLE.STYLE must be one of ['lp', 'pl'], got 'xx'"),
    (["SOLVER.MAX_ITER", "abc"], ValueError, "for config key: SOLVER.MAX_ITER"),
    (["SOLVER.MAX_ITER"], ValueError, "KEY VALUE pairs"),
])
def test_setup_config_refuses_bad_options(opts, error, message):
    with pytest.raises(error) as err:
        setup_config(QUICKSTART, opts)
    assert message in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback applies without CUDA")
def test_setup_config_falls_back_to_cpu_without_amp():
    cfg = setup_config(QUICKSTART, ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"])
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED


def test_closest_key_prefers_the_siblings():
    keys = ["a.norm", "a.out_channels", "b.norm", "nrm"]
    assert closest_key("a.nrom", keys) == " (did you mean a.norm?)"
    assert closest_key("zzz.qqq", keys) == ""


# ---- evaluators ----


def test_semantic_segmentation_datasets_get_sem_seg_evaluator(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    assert MetadataCatalog.get("ade20k_sem_seg_val").evaluator_type == "sem_seg"
    name = "dysample_d2_test_sem_seg"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(evaluator_type="sem_seg", stuff_classes=["a", "b"],
                                      ignore_label=255)
    evaluators = build_evaluator(name, str(tmp_path))._evaluators
    assert [type(e) for e in evaluators] == [SemSegEvaluator]
