"""
The runtime matrix of docs/deployment.md on tiny random models: each export is written at
one size and run at two others in a runtime, against the eager model sampling the same way
(``dysample_d2.layers.sampler``). Features within 1e-4 of their largest value; whole models:
the same detections (count and classes), boxes within 1e-3 px, scores, mask probabilities
and semantic logits within 1e-4. Runtimes come from ``pip install -e ".[deploy]"``; a test
whose runtime is missing is skipped, naming it.
"""
import importlib.util

import pytest
import torch

from dysample_d2.export import BackboneExport, ExportError, export_program, tracing_adapter
from dysample_d2.export.onnx import output_names
from dysample_d2.layers import sampler
from bench_common import SMOKE_RUN
from test_export import image, tiny_model
from tools.deploy import export_sampler, load_runtime, max_abs_diffs, max_rel_diffs, write_onnx

MODELS = {
    "faster": "quickstart/faster_rcnn_R_50_DySample_FPN_tiny.yaml",
    "mask": "quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml",
    "panoptic": "quickstart/panoptic_fpn_R_50_DySample_tiny.yaml",
}
EXPORT_SIZE = (96, 128)
RUN_SIZES = [(128, 96), (96, 160)]
UNPADDED_SIZES = [(100, 130), (77, 200)]  # not multiples of 32: padded inside the export
DETECTION_TOLERANCES = {"pred_boxes": 1e-3, "scores": 1e-4, "pred_masks": 1e-4}
ONNX_CELLS = [("gridsample", 17), ("gather", 16)]


def needs(runtime):
    if importlib.util.find_spec(runtime) is None:
        pytest.skip(f"{runtime} is not installed (pip install -e '.[deploy]')")


_models = {}


def model(name):
    if name not in _models:
        _models[name] = tiny_model(MODELS[name])
    return _models[name]


def check_features(module, run, sampler_name, names, sizes=RUN_SIZES):
    for seed, size in enumerate(sizes, start=1):
        x = image(*size, seed=seed)
        with sampler(sampler_name), torch.no_grad():
            expected = module(x)
        for i, diff in max_rel_diffs(expected, run(x)).items():
            assert diff <= 1e-4, f"{names[i]} at {size}: relative difference {diff:.1e}"


def check_detections(adapter, run, sampler_name, names):
    for seed, size in enumerate(RUN_SIZES, start=1):
        x = image(*size, seed=seed)
        with sampler(sampler_name), torch.no_grad():
            expected = adapter(x)
        actual = run(x)
        assert len(expected[0]) > 0  # the comparison covers real detections
        diffs = max_abs_diffs(expected, actual)  # ValueError: another number of detections
        for i, name in enumerate(names):
            if name == "pred_classes" or name == "image_size":
                assert diffs[i] == 0, f"{name} at {size} differ"
            elif name == "sem_seg":
                rel = max_rel_diffs(expected, actual)[i]
                assert rel <= 1e-4, f"sem_seg at {size}: relative difference {rel:.1e}"
            else:
                limit = DETECTION_TOLERANCES[name]
                assert diffs[i] <= limit, f"{name} at {size}: {diffs[i]:.1e} > {limit}"


def whole_model_cells():
    """Every model x sampler x runtime; the quick subset (onnxruntime: all models with
    GridSample, Faster R-CNN with gathers) outside the slow marker."""
    for name in MODELS:
        for sampler_name, opset in ONNX_CELLS:
            for runtime in ("onnxruntime", "openvino"):
                quick = runtime == "onnxruntime" and (sampler_name == "gridsample"
                                                      or name == "faster")
                yield pytest.param(name, sampler_name, opset, runtime,
                                   marks=() if quick else pytest.mark.slow,
                                   id=f"{name}-{sampler_name}-{opset}-{runtime}")


@pytest.mark.parametrize("name,sampler_name,opset,runtime", list(whole_model_cells()))
def test_onnx_whole_model_in_runtime(tmp_path, name, sampler_name, opset, runtime):
    needs(runtime)
    adapter = tracing_adapter(model(name), image(*EXPORT_SIZE))
    path = str(tmp_path / "model.onnx")
    with sampler(sampler_name):
        names = write_onnx(adapter, image(*EXPORT_SIZE), path, opset=opset)
    check_detections(adapter, load_runtime(runtime, "onnx", path), sampler_name, names)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("opset", [11, 12])
def test_onnx_gather_backbone_below_opset_16(tmp_path, opset, runtime):
    """Detectron2's default opset 11 and the others before GridSample: the gather sampler."""
    needs(runtime)
    backbone = BackboneExport(model("faster"))
    path = str(tmp_path / "backbone.onnx")
    sampler_name = export_sampler("auto", opset, runtime)
    assert sampler_name == "gather"
    with sampler(sampler_name):
        names = write_onnx(backbone, image(*EXPORT_SIZE), path, opset=opset)
    check_features(backbone, load_runtime(runtime, "onnx", path), sampler_name, names)


def test_onnx_whole_model_below_opset_16_is_refused(tmp_path):
    adapter = tracing_adapter(model("faster"), image(*EXPORT_SIZE))
    with sampler("gather"), pytest.raises(
            ExportError, match=r"roi_heads.box_pooler.* ROIAlign with aligned=True"):
        write_onnx(adapter, image(*EXPORT_SIZE), str(tmp_path / "m.onnx"), opset=12)


@pytest.mark.parametrize("sampler_name", ["gridsample", "gather"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_whole_model_in_torch(tmp_path, name, sampler_name):
    adapter = tracing_adapter(model(name), image(*EXPORT_SIZE))
    path = str(tmp_path / "model.ts")
    with sampler(sampler_name):
        torch.jit.save(torch.jit.trace(adapter, (image(*EXPORT_SIZE),), check_trace=False), path)
    check_detections(adapter, load_runtime("torch", "torchscript", path), sampler_name,
                     output_names(adapter))


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", ["gridsample", "gather"])
def test_torch_export_backbone_in_torch(tmp_path, sampler_name):
    backbone = BackboneExport(model("faster"))
    path = str(tmp_path / "backbone.pt2")
    with sampler(sampler_name):
        torch.export.save(export_program(backbone, image(*EXPORT_SIZE)), path)
    check_features(backbone, load_runtime("torch", "export", path), sampler_name,
                   backbone.names, sizes=RUN_SIZES + UNPADDED_SIZES)


def test_torch_export_program_size_range():
    """Any height and width from 65 (padded to 96: a 64-pixel side's 1-pixel p6 would
    specialise the graph) to 8192."""
    backbone = BackboneExport(model("faster"))
    with pytest.raises(ExportError, match="from 65 to 8192 pixels"):
        export_program(backbone, image(64, 128))
    with pytest.raises(ExportError, match="from 65 to 8192 pixels"):
        export_program(backbone, image(96, 8193))


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", ["gridsample", "gather"])
def test_torch_export_program_in_openvino(sampler_name):
    """OpenVINO's PyTorch frontend converts the program in memory (DySample's size arithmetic
    is tensor ops, not Python float arithmetic on the symbolic sizes) and runs it at other
    sizes."""
    needs("openvino")
    import openvino

    backbone = BackboneExport(model("faster"))
    with sampler(sampler_name):
        program = export_program(backbone, image(*EXPORT_SIZE))
    compiled = openvino.Core().compile_model(openvino.convert_model(program), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})

    def run(x):
        result = compiled([x.numpy()])
        return [result[o] for o in compiled.outputs]

    check_features(backbone, run, sampler_name, backbone.names)


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", ["gridsample", "gather"])
def test_torch_export_program_file_in_openvino(tmp_path, sampler_name):
    """A program saved to .pt2 and loaded again converts (its input sizes are free, not
    multiples: torch's decompositions, which OpenVINO's converter runs, fail on derived
    sizes of a loaded program) and runs at sizes that are not multiples of 32."""
    needs("openvino")
    backbone = BackboneExport(model("faster"))
    path = str(tmp_path / "backbone.pt2")
    with sampler(sampler_name):
        torch.export.save(export_program(backbone, image(*EXPORT_SIZE)), path)
    check_features(backbone, load_runtime("openvino", "export", path), sampler_name,
                   backbone.names, sizes=UNPADDED_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["faster", "panoptic"])
def test_torch_export_whole_model_is_refused_naming_detectron2s_line(name):
    adapter = tracing_adapter(model(name), image(*EXPORT_SIZE))
    with pytest.raises(ExportError) as info:
        export_program(adapter, image(*EXPORT_SIZE))
    message = str(info.value)
    assert "proposal_generator (RPN)" in message
    assert "proposal_utils.py" in message and "valid_mask.all()" in message
    assert "--backbone-only" in message and "tracing" in message


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", ["gridsample", "gather"])
def test_dynamo_onnx_backbone_in_runtimes(tmp_path, sampler_name):
    needs("onnxscript")
    backbone = BackboneExport(model("faster"))
    path = str(tmp_path / "backbone.onnx")
    with sampler(sampler_name):
        names = write_onnx(backbone, image(*EXPORT_SIZE), path, dynamo=True)
    for runtime in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(runtime) is not None:
            check_features(backbone, load_runtime(runtime, "onnx", path), sampler_name, names)


@pytest.mark.slow
def test_benchmark_deploy_quick_writes_the_docs_table(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    docs = tmp_path / "deployment.md"
    docs.write_text("before\n<!-- benchmark_deploy: begin -->\nold\n"
                    "<!-- benchmark_deploy: end -->\nafter\n")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_deploy.py"), "--quick",
         "--threads", "1", "--formats", "onnx,torchscript", "--docs", str(docs),
         "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
         "MODEL.FPN.OUT_CHANNELS", "64"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert f"**{SMOKE_RUN}** (--quick)" in text
    assert "| ONNX GridSample (opset 17) | onnxruntime |" in text
    assert "| TorchScript (trace) | torch |" in text
