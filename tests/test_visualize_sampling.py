"""scripts/visualize_sampling.py and scripts/sampling_plot.py on a small random model."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sampling_plot import choose_points
from helpers import config_path, load_script
from tools.deploy import load_model

CONFIG = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
OPTS = [  # a ResNet-18 with a narrow FPN: the same DySample-FPN, a fraction of the time
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
]
STATS = re.compile(r"(fpn_upsample\d): mean ([\d.]+) max ([\d.]+)")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A 120x160 RGB image with a few shapes (the script resizes it to 96x128)."""
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 90)], -1).astype(np.uint8)
    img[20:70, 30:80] = (230, 40, 40)
    img[((yy - 80) ** 2 + (xx - 115) ** 2) < 25 ** 2] = (30, 30, 200)
    path = tmp_path_factory.mktemp("vis") / "shapes.png"
    Image.fromarray(img).save(path)
    return str(path)


def save_checkpoint(path, offset_fn):
    torch.manual_seed(0)
    _, model = load_model(CONFIG, "", OPTS)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("backbone.fpn_upsample") and name.endswith(".offset"):
                offset_fn(module.weight)
                offset_fn(module.bias)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def run(tmp_path, capsys, weights, image_path):
    output = tmp_path / "sampling.png"
    code = load_script("visualize_sampling").main([
        "--config-file", CONFIG, "--weights", weights, "--input", image_path,
        "--output", str(output), "--points", "3", *OPTS,
    ])
    out = capsys.readouterr().out
    assert code == 0
    stats = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in STATS.finditer(out)}
    assert sorted(stats) == ["fpn_upsample3", "fpn_upsample4", "fpn_upsample5"], out
    with Image.open(output) as png:
        assert png.format == "PNG" and png.width >= 600 and png.height >= 400
    assert output.stat().st_size > 20_000
    return stats


def test_random_offsets_are_drawn_and_measured(tmp_path, capsys, image_path):
    weights = save_checkpoint(tmp_path / "random.pth", lambda p: p.normal_(0, 0.5))
    stats = run(tmp_path, capsys, weights, image_path)
    for name, (mean, largest) in stats.items():
        assert 0 < mean <= largest, (name, mean, largest)


def test_zero_offsets_measure_zero(tmp_path, capsys, image_path):
    weights = save_checkpoint(tmp_path / "zero.pth", lambda p: p.zero_())
    stats = run(tmp_path, capsys, weights, image_path)
    assert all(v == (0.0, 0.0) for v in stats.values()), stats


def test_choose_points_is_deterministic_and_inside():
    rgb = np.zeros((100, 140, 3), np.uint8)
    rgb[30:60, 40:90] = 255
    edges = choose_points(rgb, 4)
    assert len(edges) >= 1 and np.array_equal(edges, choose_points(rgb, 4))
    random_points = choose_points(rgb, 5, seed=3)
    assert random_points.shape == (5, 2)
    np.testing.assert_array_equal(random_points, choose_points(rgb, 5, seed=3))
    for points in (edges, random_points):
        assert (points >= 0).all() and (points[:, 0] < 140).all() and (points[:, 1] < 100).all()
