"""Helpers shared by the benchmark scripts (upsamplers, model, kernel, deployment) and their
tests: profiler events of an FPN's top-down steps, DySample-like sampling grids, FLOP counts,
the machine's description and the results files."""
import contextlib
import json
import os
import platform
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from dysample_d2.layers.dysample import _base_grid

REPO = Path(__file__).resolve().parents[1]

# printed and written by every --quick run
SMOKE_RUN = "smoke run: toy shapes, ratios are not results"

# Profiler events of the FPN's top-down steps on CPU (eager): nearest interpolation and the sum
# with the lateral features (aten::add of two [B, C_fpn, H, W]), DySample's kernel Function
# (its CPU total holds its matmul, grid, sampling and the sum, done in place) and their
# backward nodes.
UPSAMPLING_EVENTS = ("aten::upsample_nearest2d", "aten::upsample_nearest2d_backward",
                     "DySampleFunction", "DySampleFunctionBackward")


def is_top_down_sum(event, channels) -> bool:
    """aten::add of two same-shape [B, channels, H, W] tensors: the FPN's lateral + top-down
    (the backbone's other adds are in place, ResNet's, or add a [1, C, 1, 1] bias, FrozenBN's)."""
    shapes = event.input_shapes
    return (event.key == "aten::add" and len(shapes) >= 2 and len(shapes[0]) == 4
            and shapes[0] == shapes[1] and shapes[0][1] == channels)


def upsampling_ms(fn, runs, channels) -> float:
    """
    CPU time (ms) that `fn` spends in the FPN's top-down upsampling and sums, from
    torch.profiler: the median of `runs` runs, each profiled on its own (one page-faulting run
    moves a mean). channels: the FPN's output channels.
    """
    from torch.profiler import ProfilerActivity, profile

    totals = []
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        events = prof.key_averages(group_by_input_shape=True)
        totals.append(sum(e.cpu_time_total for e in events
                          if e.key in UPSAMPLING_EVENTS or is_top_down_sum(e, channels)) / 1e3)
    return statistics.median(totals)


def dysample_like_grid(n, h, w, scale, offset_px, dtype, seed=0):
    """Planar grid [N, 2, sH, sW] (the kernel's layout): bilinear positions plus random
    offsets of about offset_px input pixels."""
    gen = torch.Generator().manual_seed(seed)
    base = _base_grid(scale * h, scale * w, torch.device("cpu"), dtype)
    step = torch.tensor([2 / w, 2 / h], dtype=dtype)
    offsets = torch.randn(n, scale * h, scale * w, 2, dtype=dtype, generator=gen)
    return (base + offsets * offset_px * step).permute(0, 3, 1, 2).contiguous()

# shape/index arithmetic of the traced graphs: no arithmetic on feature maps
_NO_FLOP_OPS = [
    "aten::pixel_shuffle", "aten::pixel_unshuffle", "aten::cumsum", "aten::repeat_interleave",
    "aten::ones_like", "aten::zeros_like", "aten::stack", "aten::broadcast_tensors",
    "aten::flip", "aten::_shape_as_tensor", "aten::to", "aten::type_as", "aten::meshgrid",
    "aten::contiguous", "aten::repeat", "aten::select", "aten::slice", "aten::view",
    "aten::reshape", "aten::permute", "aten::unsqueeze", "aten::flatten", "aten::expand",
    "aten::pad", "aten::unbind",
]
# elementwise arithmetic on feature-sized tensors: 1 per output element (CARAFE's
# reassembly: one in-place addcmul_ per kernel tap, 1 multiply-add per output element)
_ELEMENTWISE_OPS = [
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div",
    "aten::sigmoid", "aten::addcmul", "aten::addcmul_", "aten::rsub", "aten::reciprocal",
    "aten::softmax",
]


def count_flops(module, inputs, analysis_cls=None):
    """
    fvcore FLOPs (one multiply-add = 1) of ``module(*inputs)`` on its traced graph.
    fvcore's own handles cover conv (transposed too), matmul, upsample_{nearest,bilinear}2d
    (1 / 4 per output element) and grid_sampler (4 per output element, bilinear); added by this
    module: elementwise ops and softmax, 1 per output element. Returns (flops, sorted names of
    ops that were still not counted).
    """
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter

    analysis = (analysis_cls or FlopCountAnalysis)(module, inputs)
    for name in _NO_FLOP_OPS:
        analysis.set_op_handle(name, None)
    for name in _ELEMENTWISE_OPS:
        analysis.set_op_handle(name, elementwise_flop_counter(0, 1))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    total = analysis.total()
    return total, sorted(Counter(analysis.unsupported_ops()))


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(fn, device):
    """
    Peak memory allocated while ``fn()`` runs, above what was allocated before, in MB.
    CPU: every allocation and free that torch.profiler records, replayed in time order
    (tracemalloc does not see torch's allocator; RSS misses short peaks). CUDA:
    torch.cuda.max_memory_allocated.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 1e6
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 1e6


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's start/stop lines, written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header_lines(title, info) -> list:
    """The first lines of a results table: title (none if None), the command that made it,
    machine and load; a --quick run says first that it is a smoke run."""
    smoke = [f"**{SMOKE_RUN}** (--quick)", ""] if info.get("smoke") else []
    return ([f"# {title}", ""] if title else []) + smoke + [
        f"Command: `{info['command']}`", "",
        f"Machine: {info['machine']}; 1-minute load average {info['load_start']} at the start, "
        f"{info['load_end']} at the end (other jobs share the machine).", "",
    ]


def start_info(device, threads, script, quick) -> dict:
    """machine_info plus the command line, the load at the start and the smoke-run flag;
    prints the machine line (and the smoke-run label)."""
    info = machine_info(device, threads)
    info["command"] = "python " + " ".join([os.path.relpath(script, REPO)] + sys.argv[1:])
    info["load_start"] = load_average()
    info["smoke"] = quick
    print(info["machine"], flush=True)
    if quick:
        print(SMOKE_RUN, flush=True)
    return info


def write_results(out_dir, info, rows, write_markdown, args) -> Path:
    """DIR/results.json (info and rows) and DIR/results.md (`write_markdown`), with the load at
    the end; returns DIR."""
    info["load_end"] = load_average()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(info=info, rows=rows), indent=1))
    write_markdown(out / "results.md", rows, info, args)
    if info.get("smoke"):
        print(SMOKE_RUN, flush=True)
    return out


def publish_table(text, docs, begin, end):
    """Print the table `text`; with a `docs` path, also replace that file's block from `begin`
    to `end` (markers included) by it."""
    print(text)
    if not docs:
        return
    content = Path(docs).read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: {docs} has no {begin} ... {end} block")
    head, rest = content.split(begin, 1)
    Path(docs).write_text(head + text + rest.split(end, 1)[1])
    print(f"wrote the table into {docs}")


def load_average() -> str:
    """1-minute load average (other jobs on the machine slow multi-threaded runs down)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info(device, threads) -> dict:
    device = torch.device(device)
    text = (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} intra-op threads"
    )
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return dict(machine=text, cpu=cpu_model(), cores=os.cpu_count(), torch=torch.__version__,
                threads=threads, device=str(device))


def write_chart(path, rows, title):
    """
    Latency against parameters, one circle per upsampler with its area proportional to its
    FLOPs, as the DySample paper's complexity figure draws them: forward on the left,
    forward+backward on the right. Latency on a log axis; parameters on a symmetric-log axis
    (nearest and bilinear have none).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), dpi=90, sharex=True)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours
    largest = max(max(r["flops"] for r in rows), 1)
    for ax, key, label in ((axes[0], "fwd_ms", "forward"), (axes[1], "train_ms",
                                                            "forward+backward")):
        for i, row in enumerate(rows):
            color = colors[(2 * i) % 20 + (2 * i) // 20 % 2]
            area = 30 + 1500 * row["flops"] / largest
            ax.scatter([row["params"] / 1e3], [row[key]], s=area, color=color, alpha=0.45,
                       edgecolors=color, label=f"{row['case']} ({row['flops'] / 1e9:.3g} GFLOPs)")
            ax.annotate(row["case"], (row["params"] / 1e3, row[key]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_xlabel("parameters (thousands)")
        ax.set_ylabel(f"{label} latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9, loc="left")
    axes[1].set_title("circle area: FLOPs", fontsize=9, loc="right")
    legend = axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for handle in legend.legend_handles:  # one marker size in the legend
        handle.set_sizes([30])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
