"""
Low-precision inference of ONNX exports (tools/deploy/precision.py): DySample's
sampling nodes are tagged in the export, OpenVINO keeps them in float32 at bf16, and the
DySample-FPN backbone then drifts from float32 no more than its nearest-FPN twin (same
weights but the upsampler). Tiny random models, as in test_deploy.py.
"""
import importlib.util

import pytest
import torch
from detectron2.modeling import build_model

from dysample_d2.export import BackboneExport, ExportError
from dysample_d2.layers import sampler
from bench_common import SMOKE_RUN
from helpers import load_config
from test_export import SMALL, image, tiny_model
from tools.deploy import (SAMPLING_TAG, compiled_precision, load_runtime, max_rel_diffs,
                          sampling_nodes, write_onnx)

DYSAMPLE = "quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml"
NEAREST = "quickstart/faster_rcnn_R_50_FPN_tiny.yaml"
EXPORT_SIZE = (96, 128)
RUN_SIZE = (384, 640)  # large enough for a bf16 grid to be off by a sizeable part of a pixel
UPSAMPLED = slice(0, 3)  # p2..p4: the levels DySample's top-down steps produce


def needs(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[deploy]')")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """{"dysample": (module, path, sampler), "dysample_gather": ..., "nearest": ...}: ONNX
    exports of the same weights but the upsampler (DySample's with each sampler)."""
    needs("onnx")
    dysample = tiny_model(DYSAMPLE)
    nearest = build_model(load_config(NEAREST, opts=SMALL)).eval()
    result = nearest.load_state_dict(dysample.state_dict(), strict=False)
    assert not result.missing_keys  # the same weights but the upsampler
    assert all(k.startswith("backbone.fpn_upsample") for k in result.unexpected_keys)
    out = {}
    for name, model, sampler_name in (("dysample", dysample, "gridsample"),
                                      ("dysample_gather", dysample, "gather"),
                                      ("nearest", nearest, "gridsample")):
        module = BackboneExport(model)
        path = str(tmp_path_factory.mktemp(name) / "backbone.onnx")
        with sampler(sampler_name):
            write_onnx(module, image(*EXPORT_SIZE), path)
        out[name] = (module, path, sampler_name)
    return out


def drift(export, run):
    module, _, sampler_name = export
    x = image(*RUN_SIZE, seed=3)
    with sampler(sampler_name), torch.no_grad():
        expected = module(x)
    return max(list(max_rel_diffs(expected, run(x)).values())[UPSAMPLED])


def test_sampling_nodes_are_tagged_without_the_offset_convs(backbones):
    import onnx

    names = sampling_nodes(backbones["dysample"][1])
    assert any(n.endswith(f"fpn_upsample3/{SAMPLING_TAG}/GridSample") for n in names)
    assert {n.split(f"/{SAMPLING_TAG}/")[0] for n in names} == {
        f"/backbone/fpn_upsample{k}" for k in (3, 4, 5)}
    graph = onnx.load(backbones["dysample"][1]).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv" and "fpn_upsample" in n.name]
    assert len(convs) == 3 and not any(SAMPLING_TAG in n for n in convs)
    # the ops OpenVINO's CPU plugin would replace (dropping the marks) are written as others
    floats = _float_outputs(graph)
    tagged = {n.name: n.op_type for n in graph.node if SAMPLING_TAG in n.name}
    assert not [n for n in graph.node if SAMPLING_TAG in n.name and n.op_type == "Sub"
                and n.output[0] in floats]
    assert tagged[f"/backbone/fpn_upsample3/{SAMPLING_TAG}/Expand_1"] == "Mul"  # by expanded 1s
    assert sampling_nodes(backbones["nearest"][1]) == []


def _float_outputs(graph):
    import onnx

    inferred = onnx.shape_inference.infer_shapes(onnx.ModelProto(graph=graph, opset_import=[
        onnx.helper.make_opsetid("", 17)])).graph
    return {v.name for v in inferred.value_info
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def test_tagged_export_equals_eager_in_float32(backbones):
    needs("onnxruntime")
    export = backbones["dysample"]
    assert drift(export, load_runtime("onnxruntime", "onnx", export[1])) < 1e-4


@pytest.mark.parametrize("name", ["dysample", "dysample_gather"])
def test_openvino_bf16_dysample_drifts_no_more_than_nearest(backbones, name):
    needs("openvino")
    dysample, nearest = backbones[name], backbones["nearest"]
    kept = load_runtime("openvino", "onnx", dysample[1], precision="bf16")
    if compiled_precision(kept) != "bf16":
        pytest.skip("this CPU's OpenVINO plugin does not run bf16")
    reference = drift(nearest, load_runtime("openvino", "onnx", nearest[1], precision="bf16"))
    assert drift(dysample, kept) <= 1.1 * reference
    if name == "dysample":  # what the marks fix: a bf16 normalised grid
        unkept = load_runtime("openvino", "onnx", dysample[1], precision="bf16",
                              keep_sampling_f32=False)
        assert drift(dysample, unkept) > 2 * reference


@pytest.mark.parametrize("name", ["dysample", "dysample_gather"])
def test_onnxruntime_float16_dysample_drifts_no_more_than_nearest(backbones, name):
    needs("onnxruntime")
    dysample, nearest = backbones[name], backbones["nearest"]
    reference = drift(nearest, load_runtime("onnxruntime", "onnx", nearest[1], precision="f16"))
    kept = load_runtime("onnxruntime", "onnx", dysample[1], precision="f16")
    assert drift(dysample, kept) <= 1.1 * reference
    if name == "dysample":  # the grid converted to float16 with the rest
        unkept = load_runtime("onnxruntime", "onnx", dysample[1], precision="f16",
                              keep_sampling_f32=False)
        assert drift(dysample, unkept) > 2 * reference


def test_a_precision_the_runtime_lacks_is_refused(backbones):
    with pytest.raises(ExportError, match="runtime onnxruntime has no precision 'bf16'"):
        load_runtime("onnxruntime", "onnx", backbones["dysample"][1], precision="bf16")


@pytest.mark.slow
def test_precision_check_quick_writes_the_docs_table(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    needs("onnxruntime")
    needs("openvino")
    docs = tmp_path / "deployment.md"
    docs.write_text("before\n<!-- precision_check: begin -->\nold\n"
                    "<!-- precision_check: end -->\nafter\n")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "precision_check.py"), "--quick",
         "--threads", "1", "--docs", str(docs)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert f"**{SMOKE_RUN}** (--quick)" in text
    assert "| openvino | bf16 (" in text and "| onnxruntime | f16 (f16) | gather |" in text
    assert "0/20 unmatched" in text  # float32 rows: every detection matched
