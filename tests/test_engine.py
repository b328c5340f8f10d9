"""Checkpoint writing, the demo, and the quickstart's result parsing."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dysample_d2.engine import AtomicDetectionCheckpointer

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))


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
               "--opts", "MODEL.DEVICE", "cpu"])
    drawn = np.asarray(Image.open(tmp_path / "out.png"))
    assert drawn.shape[:2] == (96, 128)
    assert not np.array_equal(drawn[..., :3], image)  # boxes or masks were drawn over it
    assert "instances above 0.0" in capsys.readouterr().out


def test_demo_rejects_a_missing_image(tmp_path):
    import demo

    with pytest.raises(SystemExit, match="--input 'nope.jpg' does not exist"):
        demo.main(["--config-file", "x.yaml", "--input", "nope.jpg"])


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
