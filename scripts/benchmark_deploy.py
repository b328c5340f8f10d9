#!/usr/bin/env python
"""
Latency of the exported DySample-FPN backbone beside the nearest-FPN backbone in each runtime.

    python scripts/benchmark_deploy.py --docs docs/deployment.md
    python scripts/benchmark_deploy.py --quick      # a smoke run: small image, 2 repeats

Both backbones (R-50, random weights, batch 1) are exported at a small size the same way
(ONNX with GridSample or gathers, TorchScript, torch.export) and run at --size in every
runtime that is installed (onnxruntime, OpenVINO in float32, torch), interleaved: each repeat
runs every cell once, so load changes hit all cells alike. Reported: medians, the ratio
DySample / nearest, and, where the runtime profiles per node (onnxruntime, OpenVINO), the
share of the DySample top-down steps (the nodes under ``fpn_upsample*``) in the DySample
backbone's time. --docs replaces the table between the benchmark markers of that file.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # tools/ and scripts/
from bench_common import header_lines, load_average, publish_table, start_info  # noqa: E402

from dysample_d2 import model_zoo  # noqa: E402
from dysample_d2.export import BackboneExport, export_program, trace_model  # noqa: E402
from dysample_d2.layers import sampler  # noqa: E402
from tools.deploy import load_model, load_runtime, write_onnx  # noqa: E402

CONFIGS = {  # as dysample_d2.model_zoo finds them (the nearest FPN: Detectron2's own config)
    "DySample-FPN": model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"),
    "nearest FPN": model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
}
# (label, format, runtime, sampler, opset)
CELLS = [
    ("ONNX GridSample (opset 17)", "onnx", "onnxruntime", "gridsample", 17),
    ("ONNX gather (opset 16)", "onnx", "onnxruntime", "gather", 16),
    ("ONNX GridSample (opset 17)", "onnx", "openvino", "gridsample", 17),
    ("ONNX gather (opset 16)", "onnx", "openvino", "gather", 16),
    ("TorchScript (trace)", "torchscript", "torch", "gridsample", None),
    ("torch.export", "export", "torch", "gridsample", None),
]
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "export": ".pt2"}
BEGIN, END = "<!-- benchmark_deploy: begin -->", "<!-- benchmark_deploy: end -->"
PROFILED_SCOPE = "fpn_upsample"


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"),
                        help="run size")
    parser.add_argument("--export-size", type=int, nargs=2, default=(224, 320),
                        metavar=("H", "W"), help="size the exports are made at")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per runtime")
    parser.add_argument("--formats", default="onnx,torchscript,export",
                        help="comma-separated subset of onnx, torchscript, export")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 128x192, exported at 96x128, 2 repeats")
    parser.add_argument("--docs", metavar="FILE", help="write the table into FILE's markers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options for both models, KEY VALUE pairs")
    return parser


def available_cells(formats):
    return [c for c in CELLS if c[1] in formats
            and (c[2] == "torch" or importlib.util.find_spec(c[2]) is not None)]


def export_all(models, cells, export_size, directory):
    """{(model, format, sampler): path}: each backbone exported once per format and sampler."""
    image = torch.rand(3, *export_size) * 255
    paths = {}
    for name, backbone in models.items():
        for _, fmt, _, sampler_name, opset in cells:
            if name != "DySample-FPN":
                sampler_name = "gridsample"  # nearest FPN has no DySample: one export
            key = (name, fmt, sampler_name)
            if key in paths:
                continue
            path = os.path.join(directory, f"{len(paths)}{SUFFIX[fmt]}")
            started = time.perf_counter()
            with sampler(sampler_name):
                if fmt == "onnx":
                    write_onnx(backbone, image, path, opset=opset)
                elif fmt == "torchscript":
                    torch.jit.save(trace_model(backbone, (image,)), path)
                else:
                    torch.export.save(export_program(backbone, image), path)
            print(f"exported {name}, {fmt}, {sampler_name} in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            paths[key] = path
    return paths


def top_down_share(runtime, path, image, threads):
    """Share of the nodes under fpn_upsample* in one profiled run, or None."""
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
        ort_session = onnxruntime.InferenceSession(path, options,
                                                   providers=["CPUExecutionProvider"])
        ort_session.run(None, {"image": image.numpy()})
        events = json.loads(Path(ort_session.end_profiling()).read_text())
        nodes = [(e["name"], e["dur"]) for e in events if e.get("cat") == "Node"
                 and e["name"].endswith("_kernel_time")]
    elif runtime == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(path, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
            "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer([image.numpy()])
        nodes = [(p.node_name, p.real_time.total_seconds()) for p in request.profiling_info]
    else:
        return None
    total = sum(d for _, d in nodes)
    return sum(d for n, d in nodes if PROFILED_SCOPE in n) / total if total else None


def measure(cells, paths, size, repeats, threads):
    """Rows: label, runtime, sampler, median ms of each model, ratio, top-down share."""
    torch.set_num_threads(threads)
    image = torch.rand(3, *size) * 255
    runs = {}
    for label, fmt, runtime, sampler_name, _ in cells:
        for name in CONFIGS:
            key = (name, fmt, sampler_name if name == "DySample-FPN" else "gridsample")
            run = load_runtime(runtime, fmt, paths[key], threads=threads)
            run(image)  # warm-up: first-run allocations and graph optimisations
            runs[(label, runtime, name)] = run
    times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            started = time.perf_counter()
            run(image)
            times[key].append(1000 * (time.perf_counter() - started))
    rows = []
    for label, fmt, runtime, sampler_name, _ in cells:
        dysample, nearest = (statistics.median(times[(label, runtime, n)]) for n in CONFIGS)
        path = paths[("DySample-FPN", fmt, sampler_name)]
        share = top_down_share(runtime, path, image, threads) if fmt == "onnx" else None
        rows.append(dict(export=label, runtime=runtime, dysample_ms=dysample,
                         nearest_ms=nearest, ratio=dysample / nearest, share=share))
        print(f"{label:28s} {runtime:12s} DySample {dysample:8.1f} ms  nearest "
              f"{nearest:8.1f} ms  x{dysample / nearest:.3f}", flush=True)
    return rows


def table(rows, info, args) -> str:
    lines = [BEGIN, ""] + header_lines(None, info) + [
        f"R-{info['depth']} backbones, random weights, batch 1, "
        f"{args.size[0]}x{args.size[1]}, exported at {args.export_size[0]}x"
        f"{args.export_size[1]}, medians of {args.repeats} interleaved runs.", "",
        "| export | runtime | DySample-FPN (ms) | nearest FPN (ms) | ratio | DySample "
        "top-down share |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = "" if r["share"] is None else f"{100 * r['share']:.1f} %"
        lines.append(f"| {r['export']} | {r['runtime']} | {r['dysample_ms']:.1f} | "
                     f"{r['nearest_ms']:.1f} | {r['ratio']:.3f} | {share} |")
    return "\n".join(lines + ["", END])


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.quick:
        args.size, args.export_size, args.repeats = (128, 192), (96, 128), 2
    formats = set(args.formats.split(","))
    info = start_info("cpu", args.threads, __file__, args.quick)
    models = {}
    for name, config in CONFIGS.items():
        cfg, model = load_model(config, "", ["MODEL.DEVICE", "cpu", *args.opts])
        models[name] = BackboneExport(model)
        info["depth"] = cfg.MODEL.RESNETS.DEPTH
    cells = available_cells(formats)
    with tempfile.TemporaryDirectory() as directory:
        paths = export_all(models, cells, args.export_size, directory)
        rows = measure(cells, paths, args.size, args.repeats, args.threads)
    info["load_end"] = load_average()
    text = table(rows, info, args)
    publish_table(text, args.docs, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
