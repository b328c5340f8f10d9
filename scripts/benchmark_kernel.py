#!/usr/bin/env python
"""
The compiled CPU sampling kernel (dysample_d2/layers/csrc) against ATen's grid_sampler_2d, alone:
forward and backward (input and grid gradients) of bilinear sampling, padding "border", on
DySample-like grids (the bilinear x2 positions plus random offsets of a given size, in input
pixels). How far apart the pixels of an output row read is what the kernel's channels-last
row copies depend on; the defaults are an FPN's three top-down steps of a batch of 2 with
4 groups (8 image-groups of 64 channels). Median of interleaved repeats. Writes
DIR/results.md and DIR/results.json.

    python scripts/benchmark_kernel.py --out output/kernel
    python scripts/benchmark_kernel.py --quick --out output/kernel    # smoke run
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from bench_common import header_lines, start_info, write_results  # noqa: E402
from bench_common import dysample_like_grid  # noqa: E402

DEFAULT_SHAPES = [(8, 64, 25, 42), (8, 64, 50, 84), (8, 64, 100, 168)]
DEFAULT_OFFSETS = (0.0, 0.5, 2.0, 10.0)


def measure(shape, offset_px, kernel, args):
    n, c, h, w = shape
    s = args.scale
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    grad = torch.randn(n, c, s * h, s * w, generator=gen)
    grid = dysample_like_grid(n, h, w, s, offset_px, torch.float32)
    grid_nhwc = grid.permute(0, 2, 3, 1)
    cases = {
        "kernel fwd": lambda: kernel.sample_forward(x, grid),
        "kernel bwd": lambda: kernel.sample_backward(grad, x, grid, True),
        "ATen fwd": lambda: torch.grid_sampler_2d(x, grid_nhwc, 0, 1, False),
        "ATen bwd": lambda: torch.ops.aten.grid_sampler_2d_backward(
            grad, x, grid_nhwc, 0, 1, False, [True, True]),
    }
    times = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(args.warmup):
            fn()
    names = list(cases)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    row = dict(shape="x".join(map(str, shape)), offset_px=offset_px)
    for name, samples in times.items():
        row[name] = 1e3 * statistics.median(samples)
    print(f"  [{row['shape']}] offsets {offset_px:5.2f} px: kernel fwd {row['kernel fwd']:7.2f} "
          f"bwd {row['kernel bwd']:7.2f} ms | ATen fwd {row['ATen fwd']:7.2f} "
          f"bwd {row['ATen bwd']:7.2f} ms", flush=True)
    return row


def write_markdown(path, rows, info, args):
    lines = header_lines("Sampling kernel benchmark", info) + [
        f"{info['kernel']}. Float32, x{args.scale}, bilinear, padding border; grid = bilinear "
        "positions + N(0, offsets) input pixels; bwd: input and grid gradients; median of "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up.", "",
        "| input [N, C, H, W] | offsets px | kernel fwd ms | ATen fwd ms | kernel bwd ms "
        "| ATen bwd ms | fwd kernel / ATen | bwd kernel / ATen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['offset_px']:g} | {r['kernel fwd']:.2f} | {r['ATen fwd']:.2f} "
            f"| {r['kernel bwd']:.2f} | {r['ATen bwd']:.2f} "
            f"| {r['kernel fwd'] / r['ATen fwd']:.2f} | {r['kernel bwd'] / r['ATen bwd']:.2f} |")
    Path(path).write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", default=[], metavar="N,C,H,W",
                   help="input shape (repeatable; default: the FPN's three steps)")
    p.add_argument("--offset-px", default=",".join(f"{v:g}" for v in DEFAULT_OFFSETS),
                   help="comma-separated offset sizes, input pixels (std of the offsets)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 7)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", default="benchmark_results/kernel", help="output directory")
    p.add_argument("--quick", action="store_true", help="one tiny shape, 1 repeat: smoke run")
    args = p.parse_args(argv)
    try:
        args.offsets = [float(v) for v in args.offset_px.split(",") if v]
        args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape]
    except ValueError as e:
        p.error(f"--offset-px / --shape: {e}")
    if not args.offsets or any(v < 0 for v in args.offsets):
        p.error(f"--offset-px: comma-separated sizes >= 0, got {args.offset_px!r}")
    if any(len(s) != 4 or min(s) < 1 for s in args.shapes):
        p.error(f"--shape: N,C,H,W with positive sizes, got {args.shape}")
    args.shapes = args.shapes or ([(2, 8, 5, 7)] if args.quick else DEFAULT_SHAPES)
    args.repeats = args.repeats or (1 if args.quick else 7)
    return args


def main(argv=None):
    args = parse_args(argv)
    from dysample_d2.layers import native

    kernel = native.load()
    if kernel is None:
        sys.exit(native.status())
    torch.set_num_threads(args.threads)
    info = start_info(torch.device("cpu"), args.threads, __file__, args.quick)
    info["kernel"] = native.status()
    print(info["kernel"], flush=True)
    rows = [measure(shape, px, kernel, args) for shape in args.shapes for px in args.offsets]
    out = write_results(args.out, info, rows, write_markdown, args)
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
