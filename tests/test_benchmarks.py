"""The benchmark scripts run end to end (--quick: tiny inputs, one repeat) and write their files.
They assert what the scripts write (rows, columns, values that parse), never a timing."""
import os
import subprocess
import sys

import pytest

from bench_common import SMOKE_RUN, UPSAMPLING_EVENTS, is_top_down_sum

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, out_dir, *args):
    # one thread: a smoke run, and 2-thread runs crawl when other jobs load the machine
    cmd = [sys.executable, os.path.join(REPO, "scripts", name), "--quick", "--threads", "1",
           "--out", str(out_dir)]
    result = subprocess.run(
        cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(SMOKE_RUN) == 2  # printed first and last
    assert f"**{SMOKE_RUN}** (--quick)" in (out_dir / "results.md").read_text()
    return result.stdout


def table_rows(markdown):
    return [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ")][1:]


def assert_times(values):
    """Timings are numbers >= 0 (a tiny smoke-run case may round to 0.00 ms)."""
    assert all(float(v) >= 0 for v in values)


def assert_numbers(values):
    """Every cell parses as a number (a ratio to a 0.00 ms case may be inf or nan)."""
    for v in values:
        float(v.replace(",", ""))


@pytest.mark.slow
def test_benchmark_upsamplers_quick(tmp_path):
    stdout = run_script("benchmark_upsamplers.py", tmp_path, "--shape", "1,8,5,7")
    markdown = (tmp_path / "results.md").read_text()
    rows = table_rows(markdown)
    names = ["nearest", "bilinear", "deconv", "pixel shuffle", "CARAFE", "DySample-lp",
             "DySample-lp (grid_sample)", "DySample-pl",
             "DySample-lp+", "DySample-lp+ (grid_sample)", "DySample-pl+"] + [
        f"authors-{variant}" for variant in ("lp", "pl", "lp+", "pl+")
    ]
    assert "compiled CPU sampling kernel: loaded" in markdown
    for shape in ("1x16x6x10", "1x8x5x7"):
        assert [r[1].strip() for r in rows if r[0].strip() == shape] == names
    assert all(len(row) == 12 for row in rows)
    by_case = {r[1].strip(): r for r in rows if r[0].strip() == "1x16x6x10"}
    # C = 16: deconv 16 * 16 * 9 + 16; pixel shuffle 16 * 64 * 9 + 64; CARAFE's compressor
    # 16 * 64 + 64 and encoder 64 * 100 * 9 + 100
    assert [by_case[n][2].strip() for n in ("deconv", "pixel shuffle", "CARAFE")] == [
        "2,320", "9,280", "58,788"]
    # CARAFE at 6x10 -> 12x20: convs 61,440 + 3,456,000, reassembly 25 taps x 16 x 240,
    # softmax 25 x 240 multiply-adds
    assert by_case["CARAFE"][3].strip() == "3.6"
    assert_times(v for row in rows for v in row[4:6])  # fwd, fwd+bwd ms
    assert_numbers(v for row in rows for v in row[2:])
    assert stdout.count("fwd+bwd") == len(rows)  # a progress line per case
    chart = tmp_path / "latency_vs_params.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < chart.stat().st_size < 200_000
    assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_benchmark_upsamplers_only_given_shapes(tmp_path):
    run_script("benchmark_upsamplers.py", tmp_path, "--shape", "1,8,5,7", "--no-default-shapes",
               "--offset-px", "2")
    markdown = (tmp_path / "results.md").read_text()
    rows = table_rows(markdown)
    assert {r[0].strip() for r in rows} == {"1x8x5x7"} and len(rows) == 15
    # every DySample's offset conv scaled to a mean |offset| of 2 input pixels
    assert "the offset convs scaled to 2 px (--offset-px), measured 2-2 px." in markdown
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_upsamplers.py"),
         "--no-default-shapes", "--out", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "--no-default-shapes needs at least one --shape B,C,H,W" in result.stderr
    assert not (tmp_path / "none").exists()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_upsamplers.py"),
         "--offset-px", "0", "--out", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "--offset-px must be > 0, got 0.0" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("arch, calibrate", [("faster_rcnn", False), ("backbone", False),
                                             ("backbone", True)])
def test_benchmark_model_quick(tmp_path, arch, calibrate):
    run_script("benchmark_model.py", tmp_path, "--archs", arch, "--device", "cpu",
               *(["--calibrate-bn"] if calibrate else []))
    rows = table_rows((tmp_path / "results.md").read_text())
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        (arch, "nearest"), (arch, "DySample"), (arch, "DySample+")
    ]
    params = [float(r[3]) for r in rows]
    assert params[0] < params[1] < params[2]  # DySample+ adds the scope convs
    assert all(float(r[4]) > 0 for r in rows)  # GFLOPs
    assert [r[8].strip() for r in rows][0] == "1.0000"  # params / nearest
    assert_times(r[c].split()[0] for r in rows for c in (5, 6))  # "median (min-max)"
    # the upsamplers' own CPU time inside the model (profiler), and what DySample adds
    assert_times(v for r in rows for v in r[13].split("/"))
    assert rows[0][14].strip() == "+0.00 % / +0.00 %"
    # DySample's offsets: random FrozenBN weights blow the features (and offsets) up,
    # calibrated statistics leave them at the offset conv's initialization (std 0.001)
    assert rows[0][15].strip() == "-"
    mean_px, max_px = (float(v) for v in rows[1][15].split("/"))
    assert 0 < mean_px <= max_px
    assert (mean_px < 0.1) if calibrate else (mean_px > 1)


@pytest.mark.slow
def test_benchmark_model_refuses_calibration_without_frozen_bn(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_model.py"), "--quick",
         "--norm", "GN", "--calibrate-bn", "--out", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "--calibrate-bn calibrates FrozenBN statistics; --norm GN has none" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_benchmark_kernel_quick(tmp_path):
    stdout = run_script("benchmark_kernel.py", tmp_path, "--offset-px", "0,3")
    markdown = (tmp_path / "results.md").read_text()
    assert "compiled CPU sampling kernel: loaded" in markdown
    rows = table_rows(markdown)
    assert [(r[0].strip(), float(r[1])) for r in rows] == [("2x8x5x7", 0.0), ("2x8x5x7", 3.0)]
    assert all(len(r) == 8 for r in rows)
    assert_times(v for r in rows for v in r[2:6])  # fwd / bwd ms, kernel and ATen
    assert_numbers(v for r in rows for v in r[6:])
    assert stdout.count("offsets") == 2  # a progress line per case
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_kernel.py"),
         "--offset-px", "1,-2", "--out", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "--offset-px: comma-separated sizes >= 0" in result.stderr
    assert not (tmp_path / "none").exists()


def test_model_benchmark_profiles_exactly_the_top_down_steps():
    """The profiled column's events: per top-down step, nearest's interpolation and its sum with
    the lateral features (one aten::add each, not the backbone's other adds), DySample's
    Function (which holds the sum)."""
    import torch
    from detectron2.modeling import build_backbone
    from torch.profiler import ProfilerActivity, profile

    from helpers import load_config

    counts = {}
    for name in ("faster_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_DySample_FPN_1x"):
        cfg = load_config(f"COCO-Detection/{name}.yaml", opts=["MODEL.RESNETS.NORM", "FrozenBN"])
        model = build_backbone(cfg)
        # with gradients FrozenBN adds its bias with aten::add (without, it calls batch_norm)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(torch.randn(1, 3, 64, 96))
        events = prof.key_averages(group_by_input_shape=True)
        counts[name] = {
            "sums": sum(e.count for e in events if is_top_down_sum(e, 256)),
            "upsampling": sum(e.count for e in events if e.key in UPSAMPLING_EVENTS),
            "adds": sum(e.count for e in events if e.key == "aten::add"),
        }
    assert counts["faster_rcnn_R_50_FPN_1x"]["sums"] == 3  # p4, p3, p2
    assert counts["faster_rcnn_R_50_FPN_1x"]["upsampling"] == 3
    assert counts["faster_rcnn_R_50_FPN_1x"]["adds"] > 3  # FrozenBN's bias adds are not counted
    dysample = counts["faster_rcnn_R_50_DySample_FPN_1x"]
    assert dysample["sums"] == 0 and dysample["upsampling"] == 3
