"""
TorchScript / ONNX export of DySample-FPN R-CNNs (dysample_d2/export/, tools/deploy/,
scripts/export_model.py), and torch.jit.script stopping on every model kind with DySample.

Tolerances (CPU, float32): traced vs eager, boxes 1e-4 px, scores and mask probabilities
1e-5, classes exact (measured: equal); ONNX Runtime vs eager FPN features,
atol = rtol = 1e-4 on values of magnitude ~4 (measured: <= 1.3e-5). More numbers:
docs/deployment.md.
"""
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model

from dysample_d2.export import (BackboneExport, ExportError, export_onnx, trace_model,
                                tracing_adapter)
from dysample_d2.export.onnx import output_names
from dysample_d2.layers import sampler
from helpers import REPO, config_path, load_config, load_script
from tools.deploy import (ExportWarning, check_opset, export_sampler, script_model, write_onnx,
                          write_torchscript)

TRACE_SIZE = (64, 96)
OTHER_SIZES = [(96, 64), (80, 112)]  # 80x112: padded to 96x128 inside
TOLERANCES = {"pred_boxes": 1e-4, "scores": 1e-5, "pred_masks": 1e-5}
SMALL = [  # fewer channels and a ResNet-18: the same architecture, a fraction of the time
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
]


def image(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def randomize_offsets(model, seed=0):
    """Offsets of up to about a pixel, so DySample really moves its sampling points."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("backbone.fpn_upsample") and name.endswith(".offset"):
                module.weight.normal_(0, 0.05, generator=generator)
                module.bias.normal_(0, 1.0, generator=generator)


def tiny_model(config_name):
    torch.manual_seed(0)
    model = build_model(load_config(config_name, opts=SMALL)).eval()
    randomize_offsets(model)
    return model


def check_traced_matches_eager(model, expected_fields):
    adapter = tracing_adapter(model, image(*TRACE_SIZE))
    traced = trace_model(adapter, (image(*TRACE_SIZE),))
    names = output_names(adapter)
    assert set(expected_fields) <= set(names)
    for seed, size in enumerate(OTHER_SIZES, start=1):
        x = image(*size, seed=seed)
        with torch.no_grad():
            expected = dict(zip(names, adapter(x)))
        actual = dict(zip(names, traced(x)))
        assert len(expected["pred_classes"]) > 0  # the comparison covers real detections
        assert expected["image_size"].tolist() == list(size)
        for name in names:
            atol = TOLERANCES.get(name, 0)
            torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0,
                                       msg=lambda m: f"{name} at {size}: {m}")


def test_traced_faster_rcnn_matches_eager_at_other_sizes():
    model = tiny_model("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    check_traced_matches_eager(model, ["pred_boxes", "scores", "pred_classes"])


def test_traced_mask_rcnn_matches_eager_at_other_sizes():
    model = tiny_model("quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml")
    check_traced_matches_eager(model, ["pred_boxes", "scores", "pred_classes", "pred_masks"])


def test_onnx_backbone_matches_eager_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_model("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    backbone = BackboneExport(model)
    path = str(tmp_path / "backbone.onnx")
    names = export_onnx(backbone, image(*TRACE_SIZE), path)
    assert names == ["p2", "p3", "p4", "p5", "p6"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for seed, size in enumerate(OTHER_SIZES, start=1):
        x = image(*size, seed=seed)
        with torch.no_grad():
            expected = backbone(x)
        actual = session.run(None, {"image": x.numpy()})
        padded = [-(-s // 32) * 32 for s in size]
        assert expected[0].shape[-2:] == (padded[0] // 4, padded[1] // 4)
        for name, e, a in zip(names, expected, actual):
            torch.testing.assert_close(torch.from_numpy(a), e, atol=1e-4, rtol=1e-4,
                                       msg=lambda m: f"{name} at {size}: {m}")


def run_script(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "export_model.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx", "--opset", "11", "--sampler", "gridsample"],
     "GridSample needs opset >= 16"),
    (["--format", "onnx", "--opset", "30"], "ONNX opset 30 is outside 11..20"),
    (["--format", "onnx", "--dynamo", "--opset", "17"], "ONNX opset 17 is outside 18..23"),
    (["--format", "export", "--opset", "17"], "--opset are options of --format onnx"),
    (["--format", "export", "--runtime", "onnxruntime"], "does not run the export format"),
    (["--format", "export", "--runtime", "executorch"], "requires numpy >= 2"),
    (["--format", "onnx", "--export-method", "scripting"], "use --format torchscript"),
    (["--format", "onnx", "--precision", "f16"], "checks the backbone only"),
])
def test_cli_refuses_impossible_combinations_before_building(tmp_path, capsys, args, message):
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    code = load_script("export_model").main(
        ["--config-file", config, "--output", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 1 and "cannot export" in err and message in err, err
    assert not os.listdir(tmp_path)


def test_cli_names_the_extra_of_a_missing_runtime(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    code = load_script("export_model").main(["--config-file", config, "--output", str(tmp_path),
                               "--format", "onnx", "--runtime", "openvino"])
    err = capsys.readouterr().err
    assert code == 1 and "runtime openvino is not installed: pip install -e '.[deploy]'" in err


@pytest.mark.slow
def test_cli_exports_torchscript(tmp_path):
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    result = run_script("--config-file", config, "--format", "torchscript",
                        "--output", str(tmp_path), "--size", "64", "96", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "model.ts"
    assert path.is_file() and path.stat().st_size > 1e6
    assert "wrote" in result.stdout
    assert re.search(r"64x96 \(pred_boxes \[\d+, 4\]\): max \|eager - export\|", result.stdout)
    assert "48x120 (pred_boxes" in result.stdout  # the second size


@pytest.mark.slow
def test_cli_exports_onnx_opset_11_with_gathers_and_checks_it_in_openvino(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[deploy]')")
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    result = run_script("--config-file", config, "--format", "onnx", "--opset", "11",
                        "--backbone-only", "--runtime", "openvino", "--output", str(tmp_path),
                        "--size", "96", "128", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sampler gather" in result.stdout and "checked in openvino" in result.stdout
    assert re.search(r"96x128 \(p2 \[1, 64, 24, 32\]\): max \|eager - export\|", result.stdout)
    assert "72x160 (p2" in result.stdout


@pytest.mark.slow
def test_cli_exports_a_torch_export_program_checked_at_a_padded_size(tmp_path):
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    result = run_script("--config-file", config, "--format", "export", "--backbone-only",
                        "--output", str(tmp_path), "--size", "96", "128", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "backbone.pt2").is_file() and "checked in torch" in result.stdout
    assert "96x160 (p2 [1, 64, 24, 40])" in result.stdout  # 72x160 rounded up to 32s


def test_impossible_export_says_which_op_and_module(tmp_path, capsys):
    """Detectron2's deformable conv is a Python autograd function: neither format has it."""
    script = load_script("export_model")
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    code = script.main([
        "--config-file", config, "--format", "torchscript", "--output", str(tmp_path),
        "--size", "64", "64", "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, False, True]",
        "MODEL.FPN.OUT_CHANNELS", "64",
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot export" in err and "_DeformConv" in err
    assert "backbone.bottom_up.res5.0.conv2" in err
    assert "Traceback" not in err
    assert not (tmp_path / "model.ts").exists()


@pytest.mark.parametrize("sampler_name", ["auto", "gridsample"])
def test_gridsample_below_opset_16_is_refused(tmp_path, sampler_name):
    model = tiny_model("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    with sampler(sampler_name), pytest.raises(
            ExportError, match="GridSample needs opset >= 16; use the gather sampler .* for "
                               "backbone.fpn_upsample5"):
        export_onnx(BackboneExport(model), image(64, 64), str(tmp_path / "x.onnx"), opset=11)
    with pytest.raises(ExportError, match="GridSample needs opset >= 16; use the gather"):
        export_sampler("gridsample", 11)


@pytest.mark.parametrize("opset,exporter", [(10, "torchscript"), (21, "torchscript"),
                                            (17, "dynamo"), (24, "dynamo")])
def test_opsets_the_exporters_cannot_write_are_refused(opset, exporter):
    with pytest.raises(ExportError, match=rf"ONNX opset {opset} is outside \d+\.\.\d+"):
        check_opset(opset, exporter)


def test_scripting_is_refused_naming_tracing_and_torch_export():
    """torch.jit.script cannot compile DySample's autograd Function and grid cache."""
    model = tiny_model("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    with pytest.raises(ExportError) as info:
        script_model(model, {})
    message = str(info.value)
    assert "backbone.fpn_upsample5 and 2 more" in message
    assert "tracing" in message and "torch.export" in message and "--format export" in message


def scriptable_kinds():
    """(kind, module, script) for every model kind holding DySample; script(module) is how a
    user would script it: torch.jit.script, or Detectron2's scripting_with_instances."""
    from detectron2.export import scripting_with_instances
    from detectron2.layers import ShapeSpec
    from detectron2.structures import Boxes

    from dysample_d2 import DySample, DySampleSemSegFPNHead
    from test_semantic_seg import head_config

    def whole(config):
        torch.manual_seed(0)
        return build_model(load_config(config)).eval()

    fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor,
              "pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
    shapes = {f"p{k}": ShapeSpec(channels=64, stride=2**k) for k in (2, 3, 4, 5)}
    cfg = head_config()
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    yield "DySample", DySample(16, 2), torch.jit.script
    yield ("DySampleFPN R-CNN", whole("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml"),
           lambda m: scripting_with_instances(m, fields))
    carafe_fpn = whole("quickstart/faster_rcnn_R_50_DySample_CarafeFPN_tiny.yaml")
    yield "CarafeFPN", carafe_fpn.backbone, torch.jit.script
    yield "CarafeFPN R-CNN", carafe_fpn, lambda m: scripting_with_instances(m, fields)
    yield "DySampleSemSegFPNHead", DySampleSemSegFPNHead(cfg, shapes).eval(), torch.jit.script


def test_torch_jit_script_stops_in_one_line_naming_trace_and_torch_export():
    """Every model kind with DySample: torch.jit.script and Detectron2's scripting export stop
    before compiling anything, in one line that names what works instead."""
    kinds = []
    for kind, module, script in scriptable_kinds():
        with pytest.raises(RuntimeError, match=r"cannot be compiled by torch\.jit\.script: "
                           r"export .* with torch\.jit\.trace .* or torch\.export") as info:
            script(module)
        assert "\n" not in str(info.value), kind
        kinds.append(kind)
    assert len(kinds) == 5


def test_torch_jit_script_stops_on_dysample_simple_feature_pyramid():
    from test_vitdet import DYSAMPLE, build_pyramid  # needs timm, as ViTDet does

    with pytest.raises(RuntimeError, match=r"DySample cannot be compiled by torch\.jit\.script: "
                       r"export .* with torch\.jit\.trace .* or torch\.export") as info:
        torch.jit.script(build_pyramid(DYSAMPLE))
    assert "\n" not in str(info.value)


def test_onnx_op_without_conversion_is_named(tmp_path):
    class FFT(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    x = torch.rand(3, 8, 8)
    adapter = TracingAdapter(FFT().eval(), (x,)).eval()
    with pytest.raises(ExportError, match=r"operator aten::fft_fft .*no ONNX conversion"):
        export_onnx(adapter, x, str(tmp_path / "fft.onnx"))


def scene(height, width, seed=0):
    """A 0-255 image of a vertical gradient and six filled ellipses: smooth regions and edges."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, -1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, -1)
    top, bottom = (torch.rand(3, 1, 1, generator=generator) * 255 for _ in range(2))
    result = (top + (bottom - top) * ys).expand(3, height, width)
    for _ in range(6):
        cy, cx, ry, rx = torch.rand(4, generator=generator).tolist()
        inside = ((ys - cy) / (0.1 + 0.2 * ry)) ** 2 + ((xs - cx) / (0.1 + 0.2 * rx)) ** 2 <= 1
        result = torch.where(inside, torch.rand(3, 1, 1, generator=generator) * 255, result)
    return result.contiguous()


def check_traced_batch(trace_images, run_images):
    """A Mask R-CNN traced through TracingAdapter on a batch of `trace_images` and run on
    `run_images`: the same boxes, scores, classes and masks as eager on the same sampler,
    within Detectron2's tolerance (assert_instances_allclose) and this file's."""
    from detectron2.utils.testing import assert_instances_allclose

    model = tiny_model("quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml")

    def inference(m, *images):
        return m.inference([{"image": x} for x in images], do_postprocess=False)

    with sampler("gridsample"), torch.no_grad():
        adapter = TracingAdapter(model, tuple(run_images), inference).eval()
        traced = trace_model(adapter, tuple(trace_images))
        expected = inference(model, *run_images)
        actual = adapter.outputs_schema(traced(*run_images))
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert len(e) > 0 and len(e) == len(a), f"image {i}: {len(e)} vs {len(a)} detections"
        assert_instances_allclose(e, a, size_as_tensor=True, msg=f"image {i}:")
        torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.scores, e.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.pred_masks, e.pred_masks, atol=1e-5, rtol=0)


def test_traced_batch_of_two_sizes_matches_eager_at_another_batch():
    """Traced on two images of different sizes (padded together by ImageList), run on two
    others of other sizes."""
    check_traced_batch([image(64, 96, seed=1), image(128, 160, seed=2)],
                       [image(200, 100, seed=3), image(50, 70, seed=4)])


def test_traced_batch_of_resized_clones_matches_eager_on_the_clones():
    """Detectron2's batched export test (testMaskRCNNFPN_batched): two clones of one image,
    traced on each resized by its own factor in 0.5..0.7 (two sizes, padded together to
    96x160), run on the clones at full size (128x192: every FPN level another size)."""
    x = scene(128, 192)
    clones = (x.clone(), x.clone())
    resized = [F.interpolate(c[None], scale_factor=f)[0] for c, f in zip(clones, (0.55, 0.68))]
    assert [tuple(r.shape[-2:]) for r in resized] == [(70, 105), (87, 130)]
    check_traced_batch(resized, clones)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_without_detections_warns(tmp_path, fmt):
    torch.manual_seed(0)
    model = build_model(load_config("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml",
                                    opts=SMALL + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"]))
    x = image(*TRACE_SIZE)
    adapter = tracing_adapter(model.eval(), x)
    with pytest.warns(ExportWarning, match="no detections on the export input"):
        if fmt == "onnx":
            write_onnx(adapter, x, str(tmp_path / "m.onnx"))
        else:
            write_torchscript(adapter, (x,), str(tmp_path / "m.ts"))


def test_backbone_export_does_not_warn_about_detections(tmp_path):
    import warnings

    model = tiny_model("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        write_onnx(BackboneExport(model), image(*TRACE_SIZE), str(tmp_path / "b.onnx"))


@pytest.mark.parametrize("runtime,opset,expected", [
    ("onnxruntime", 17, "gather"), ("onnxruntime", 11, "gather"), ("openvino", 11, "gather"),
    (None, 17, "gridsample"), ("torch", None, "gridsample"),
])
def test_auto_sampler_per_runtime(runtime, opset, expected):
    assert export_sampler("auto", opset, runtime) == expected
    assert export_sampler("gridsample", 17, runtime or "onnxruntime") == "gridsample"
    assert export_sampler("gather", opset, runtime) == "gather"


class FakeOpenVINOCore:
    """openvino.Core as export_sampler reads it: the CPU's name and default precision."""
    cpu, precision = "", ""

    def get_property(self, device, name):
        assert device == "CPU"
        if name == "FULL_DEVICE_NAME":
            return self.cpu
        return type("Precision", (), {"to_string": lambda _: self.precision})()


@pytest.mark.parametrize("cpu,precision,expected", [
    ("AMD EPYC 9554 64-Core Processor", "f32", "gather"),
    ("AMD EPYC 9554 64-Core Processor", "bf16", "gridsample"),
    ("Intel(R) Xeon(R) Platinum 8480+", "f32", "gridsample"),
])
def test_auto_sampler_for_openvino_follows_the_cpu_and_its_default_precision(
        monkeypatch, cpu, precision, expected):
    import types

    core = type("Core", (FakeOpenVINOCore,), {"cpu": cpu, "precision": precision})
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=core))
    assert export_sampler("auto", 17, "openvino") == expected
    assert export_sampler("auto", 17, "onnxruntime") == "gather"  # no probe for onnxruntime
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: the general choice
    assert export_sampler("auto", 17, "openvino") == "gridsample"


def test_dynamo_check_sizes_are_ones_programs_take():
    import argparse

    script = load_script("export_model")
    args = argparse.Namespace(check_size=None, format="onnx", dynamo=True)
    assert script.check_size(args, image(192, 192)) == (144, 240)
    assert script.check_size(args, image(64, 64)) == (96, 96)  # programs: sides from 65
    args.dynamo = False
    assert script.check_size(args, image(64, 64)) == (48, 80)


def test_cli_failed_check_leaves_no_file_and_says_one_line(tmp_path, capsys, monkeypatch):
    script = load_script("export_model")

    def refusing(*args, **kwargs):
        def run(image):
            raise RuntimeError("Attempting to broadcast an axis by a dimension other than 1.\n"
                               "more detail")
        return run

    monkeypatch.setattr(script, "load_runtime", refusing)
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    code = script.main(["--config-file", config, "--output", str(tmp_path), "--format", "onnx",
                        "--backbone-only", "--size", "64", "96", *SMALL])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if "export_model.py" in line]
    assert len(lines) == 1 and "did not pass its check in onnxruntime" in lines[0]
    assert "broadcast an axis" in lines[0] and "more detail" not in err
    assert os.listdir(tmp_path) == []


def test_cli_writes_the_export_under_its_name_once_checked(tmp_path, capsys):
    script = load_script("export_model")
    config = config_path("quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml")
    code = script.main(["--config-file", config, "--output", str(tmp_path), "--format", "onnx",
                        "--backbone-only", "--size", "64", "96", *SMALL])
    out = capsys.readouterr().out
    assert code == 0
    assert os.listdir(tmp_path) == ["backbone.onnx"]
    assert "sampler gather" in out  # auto for onnxruntime
    assert "checked in onnxruntime (f32)" in out
