#!/usr/bin/env python
"""
Upsampler micro-benchmark, x2 upsampling: nearest, bilinear, deconvolution, pixel shuffle and
CARAFE as mmdet's FPN_CARAFE builds them (dysample_d2/layers/upsamplers.py), the project's
DySample (lp/pl x static/dynamic scope; on CPU also lp and lp+ on the reference formulation,
"(grid_sample)"; on CUDA, where DySample runs the reference formulation, also lp and lp+ on
the gather sampler, "(gather)", what deterministic training runs) and the authors' formulation
(scripts/authors_dysample.py). Shapes: the three top-down steps of an 800x1333 image's FPN
(batch 2) and the DySample paper's complexity setting, 1x256x120x120.

Per case: parameters, FLOPs (fvcore, counted on the traced graph), forward and forward+backward
latency (medians after warm-up, cases interleaved and rotated every repeat so that load drift
hits all alike), peak memory of a forward and of a training step, ratios to bilinear/nearest.
Writes DIR/results.md, DIR/results.json and DIR/latency_vs_params.png (latency against
parameters, circle area FLOPs, at 1x256x120x120 when it was measured).

    python scripts/benchmark_upsamplers.py --out benchmark_results/upsamplers
    python scripts/benchmark_upsamplers.py --quick --out output/up     # smoke run, seconds
    python scripts/benchmark_upsamplers.py --offset-px 2 --out output/up2px   # learned-size offsets
    python scripts/benchmark_upsamplers.py --device cuda --dtype bfloat16 --out output/up_bf16
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import torch  # noqa: E402
from bench_common import SMOKE_RUN  # noqa: E402
from torch import nn  # noqa: E402

from bench_common import (  # noqa: E402
    count_flops, header_lines, peak_memory_mb, start_info, synchronize, write_chart,
    write_results,
)

# an 800x1333 image padded to 800x1344: the FPN's top-down steps, batch 2; the paper's setting
DEFAULT_SHAPES = [(2, 256, 25, 42), (2, 256, 50, 84), (2, 256, 100, 168), (1, 256, 120, 120)]
CHART_SHAPE = "1x256x120x120"
# the comparison upsamplers, row names and build_upsampler names
BASELINES = [("nearest", "nearest"), ("bilinear", "bilinear"), ("deconv", "deconv"),
             ("pixel shuffle", "pixel_shuffle"), ("CARAFE", "carafe")]
QUICK_SHAPES = [(1, 16, 6, 10)]
VARIANTS = [("lp", False), ("pl", False), ("lp", True), ("pl", True)]


class ReferencePath(nn.Module):
    """DySample on its reference formulation (conv2d + grid_sample), also on eager CPU; or,
    with ``sampler_name="gather"``, on its gather form."""

    def __init__(self, module, sampler_name="gridsample"):
        super().__init__()
        self.module = module
        self.sampler_name = sampler_name

    def forward(self, x):
        from dysample_d2.layers import sampler

        with sampler(self.sampler_name):
            return self.module(x)


def scale_offsets(module, x, offset_px):
    """Scales DySample's offset conv so that its mean |offset| on x is offset_px input pixels."""
    with torch.no_grad():
        current = module.offsets(x).abs().mean()
        module.offset.weight.mul_(offset_px / current)
        module.offset.bias.mul_(offset_px / current)
        return module.offsets(x).abs().mean().item()


def build_cases(channels, scale, groups, dtype, device, x, offset_px=None):
    from dysample_d2 import DySample
    from dysample_d2.layers import build_upsampler
    from authors_dysample import AuthorsDySample

    cases = [(row, build_upsampler(name, channels, scale)) for row, name in BASELINES]
    references = []
    for style, dyscope in VARIANTS:
        tag = f"{style}{'+' if dyscope else ''}"
        module = DySample(channels, scale, style=style, groups=groups, dyscope=dyscope)
        module.mean_offset_px = (scale_offsets(module, x.float().cpu(), offset_px) if offset_px
                                 else module.offsets(x.float().cpu()).abs().mean().item())
        authors = AuthorsDySample(channels, scale, style, groups, dyscope)
        authors.load_state_dict(module.state_dict())  # same weights: same outputs
        cases.append((f"DySample-{tag}", module))
        if device.type == "cpu" and style == "lp":  # the kernel against the reference path
            cases.append((f"DySample-{tag} (grid_sample)", ReferencePath(module)))
        if device.type == "cuda" and style == "lp":  # the deterministic-training path
            cases.append((f"DySample-{tag} (gather)", ReferencePath(module, "gather")))
        references.append((f"authors-{tag}", authors))
    return [(name, m.to(device=device, dtype=dtype)) for name, m in cases + references]


def time_once(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_shape(shape, args, device, dtype):
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    cases = build_cases(c, args.scale, args.groups, dtype, device, x, args.offset_px)
    x_train = x.clone().requires_grad_()
    grad = torch.randn(b, c, h * args.scale, w * args.scale, generator=gen)
    grad = grad.to(device=device, dtype=dtype)
    rows = []
    for name, module in cases:
        flops, skipped = count_flops(module, (x,))
        rows.append(dict(shape=f"{b}x{c}x{h}x{w}", case=name,
                         params=sum(p.numel() for p in module.parameters()),
                         flops=flops, flops_skipped=skipped, fwd=[], train=[],
                         offset_px=getattr(module, "mean_offset_px", None)))

    def forward(module):
        with torch.no_grad():
            module(x)

    def clear_grads(module):
        x_train.grad = None
        for p in module.parameters():
            p.grad = None

    def train(module):
        clear_grads(module)
        module(x_train).backward(grad)

    for name, module in cases:  # warm-up, and peak memory outside the timed runs
        for _ in range(args.warmup):
            forward(module)
            train(module)
    for row, (name, module) in zip(rows, cases):
        row["fwd_peak_mb"] = peak_memory_mb(lambda: forward(module), device)
        clear_grads(module)  # the step's own gradients count, not the last step's
        row["train_peak_mb"] = peak_memory_mb(lambda: module(x_train).backward(grad), device)
    order = list(range(len(cases)))
    for r in range(args.repeats):
        for i in order[r % len(order):] + order[: r % len(order)]:
            module = cases[i][1]
            rows[i]["fwd"].append(time_once(lambda: forward(module), device))
            rows[i]["train"].append(time_once(lambda: train(module), device))
    for row in rows:
        row["fwd_ms"] = 1e3 * statistics.median(row.pop("fwd"))
        row["train_ms"] = 1e3 * statistics.median(row.pop("train"))
    ref = {row["case"]: row for row in rows}
    for row in rows:
        for base in ("bilinear", "nearest"):
            row[f"fwd_vs_{base}"] = row["fwd_ms"] / ref[base]["fwd_ms"]
            row[f"train_vs_{base}"] = row["train_ms"] / ref[base]["train_ms"]
        print(
            f"  [{row['shape']}] {row['case']:<26} fwd {row['fwd_ms']:8.2f} ms "
            f"({row['fwd_vs_bilinear']:.2f}x bilinear)  fwd+bwd {row['train_ms']:8.2f} ms "
            f"({row['train_vs_bilinear']:.2f}x)  peak {row['train_peak_mb']:.1f} MB",
            flush=True,
        )
    return rows


def _offset_range(rows):
    values = [r["offset_px"] for r in rows if r.get("offset_px") is not None]
    return f"{min(values):.3g}-{max(values):.3g} px" if values else "none"


def write_markdown(path, rows, info, args):
    lines = header_lines("Upsampler benchmark", info) + [
        f"Device {args.device}, dtype {args.dtype}, scale x{args.scale}, groups {args.groups}; "
        f"{info['kernel']}; deconv, pixel shuffle and CARAFE as mmdet's FPN_CARAFE builds them "
        "(kernel 3; CARAFE up kernel 5, encoder 3, 64 compressed channels; its reassembly in "
        "PyTorch, one kernel tap at a time); \"(grid_sample)\": the same module on its "
        "reference formulation "
        "(sampler \"gridsample\"); authors: the authors' formulation, same weights; "
        f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up. "
        "FLOPs: fvcore on the traced graph (multiply-adds; grid_sampler 4 per output "
        "element, elementwise ops, softmax and CARAFE's reassembly taps 1 per element via "
        "handles bench_common.py adds); peak: memory "
        "allocated during one forward / one training step (torch.profiler on CPU, "
        "max_memory_allocated on CUDA). Offsets (mean |offset| in input pixels, which sets how "
        "far apart the pixels DySample reads are): "
        + (f"the offset convs scaled to {args.offset_px:g} px (--offset-px)" if args.offset_px
           else "as initialized (std 0.001 weights; 0.002-0.003 px on these unit-variance inputs)")
        + f", measured {_offset_range(rows)}.", "",
        "| input | upsampler | params | MFLOPs | fwd ms | fwd+bwd ms | fwd peak MB "
        "| train peak MB | fwd / bilinear | fwd+bwd / bilinear | fwd / nearest "
        "| fwd+bwd / nearest |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['case']} | {r['params']:,} | {r['flops'] / 1e6:.1f} "
            f"| {r['fwd_ms']:.2f} | {r['train_ms']:.2f} | {r['fwd_peak_mb']:.1f} "
            f"| {r['train_peak_mb']:.1f} | {r['fwd_vs_bilinear']:.2f} "
            f"| {r['train_vs_bilinear']:.2f} | {r['fwd_vs_nearest']:.2f} "
            f"| {r['train_vs_nearest']:.2f} |"
        )
    skipped = sorted({op for r in rows for op in r["flops_skipped"]})
    lines += ["", f"Ops without a FLOP handle (not counted): {', '.join(skipped) or 'none'}."]
    Path(path).write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--shape", action="append", default=[], metavar="B,C,H,W",
                   help="an extra input shape (repeatable)")
    p.add_argument("--no-default-shapes", action="store_true",
                   help="only the --shape shapes, not the FPN steps and the paper's setting")
    p.add_argument("--offset-px", type=float, default=None, metavar="PX",
                   help="scale DySample's offset convs to this mean |offset| (input pixels); "
                   "default: as initialized, 0.002-0.003 px")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--out", default="benchmark_results/upsamplers", help="output directory")
    p.add_argument("--quick", action="store_true", help="one tiny shape, 1 repeat: smoke run")
    args = p.parse_args(argv)
    if args.no_default_shapes and not args.shape:
        p.error("--no-default-shapes needs at least one --shape B,C,H,W")
    if args.offset_px is not None and not args.offset_px > 0:
        p.error(f"--offset-px must be > 0, got {args.offset_px}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = [] if args.no_default_shapes else list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    shapes += [tuple(int(v) for v in s.split(",")) for s in args.shape]
    info = start_info(device, args.threads, __file__, args.quick)
    from dysample_d2.layers import native

    info["kernel"] = (native.status() if device.type == "cpu" else
                      "CUDA: DySample is conv2d + grid_sample (the reference formulation); "
                      "\"(gather)\": the gather sampler, which deterministic training runs")
    print(f"{info['kernel']}\n{len(shapes)} shapes, {args.repeats} repeats", flush=True)
    rows = []
    for shape in shapes:
        print(f"input {shape}:", flush=True)
        rows += measure_shape(shape, args, device, dtype)
    out = write_results(args.out, info, rows, write_markdown, args)
    shapes_done = [r["shape"] for r in rows]
    chart_shape = CHART_SHAPE if CHART_SHAPE in shapes_done else shapes_done[-1]
    title = f"x{args.scale} upsampling, input {chart_shape}, {args.device} {args.dtype}"
    write_chart(out / "latency_vs_params.png", [r for r in rows if r["shape"] == chart_shape],
                f"{SMOKE_RUN}\n{title}" if args.quick else title)
    print(f"wrote {out / 'results.md'}, {out / 'latency_vs_params.png'}")


if __name__ == "__main__":
    main()
