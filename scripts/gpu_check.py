#!/usr/bin/env python
"""
The Python steps of scripts/gpu_check.sh:

    python scripts/gpu_check.py device                 # one line: the GPU, or why there is none
    python scripts/gpu_check.py pack WHEELS ARCHIVE    # the wheels of WHEELS into one .tar.xz
    python scripts/gpu_check.py install ARCHIVE DIR    # every wheel of ARCHIVE into DIR
    python scripts/gpu_check.py imports                # what the CUDA check needs imports
    python scripts/gpu_check.py summary OUT            # OUT/summary.md from the benchmarks' JSON

``pack`` (run by scripts/gpu_wheelhouse.sh) writes the wheelhouse as one file that is the same
bytes for the same wheels: each wheel re-zipped uncompressed, members sorted, fixed timestamps
and modes (so that xz compresses across all of them), in a tar of sorted members with fixed
mtime, owner and mode, compressed by xz. ``install`` reads it with tarfile and zipfile alone
(a wheel is a zip laid out for site-packages): no pip, no index, no network, and the
interpreter's own environment is left as it is: DIR goes first on PYTHONPATH, so its numpy<2
(Detectron2 of 2024 needs it) takes the place of a numpy 2 installed beside torch. ``device``
exits 0 with CUDA, 3 without.
"""
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

# module -> the wheel that provides it (what `imports` names when one is missing)
NEEDED = {
    "torch": "torch (installed beside CUDA, never from the wheelhouse)",
    "torchvision": "torchvision (beside torch)",
    "detectron2": "detectron2 (rebuilt by scripts/gpu_wheelhouse.sh)",
    "fvcore": "fvcore", "iopath": "iopath", "portalocker": "portalocker", "yacs": "yacs",
    "omegaconf": "omegaconf", "hydra": "hydra-core", "antlr4": "antlr4-python3-runtime",
    "pycocotools": "pycocotools", "termcolor": "termcolor", "tabulate": "tabulate",
    "cloudpickle": "cloudpickle", "tqdm": "tqdm", "yaml": "PyYAML", "PIL": "pillow",
    "cv2": "opencv-python-headless", "shapely": "shapely", "panopticapi": "panopticapi-lite",
    "tensorboard": "tensorboard", "pkg_resources": "setuptools<81", "matplotlib": "matplotlib",
    "pytest": "pytest", "dysample_d2": "this repository (on PYTHONPATH)",
}


def device() -> int:
    try:
        import torch
    except ImportError as e:
        print(f"gpu_check: torch does not import with {sys.executable} ({e})")
        return 4
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False): nothing to check without CUDA")
        return 3
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"gpu_check: {len(names)} CUDA device(s): {', '.join(names)}; torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")
    return 0


# the zip format's earliest date: every member of a packed wheel carries it
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _mode(executable):
    return 0o755 if executable else 0o644


def stored_wheel(path) -> bytes:
    """The wheel at `path` re-zipped: files only, sorted, uncompressed, fixed date and modes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as dst:
        for member in sorted(src.infolist(), key=lambda m: m.filename):
            if member.is_dir():
                continue
            info = zipfile.ZipInfo(member.filename, ZIP_EPOCH)
            info.create_system = 3  # Unix, so that the mode below is read as one
            info.external_attr = _mode((member.external_attr >> 16) & 0o111) << 16
            dst.writestr(info, src.read(member))
    return buffer.getvalue()


def pack(wheels, archive) -> int:
    """Every *.whl of directory `wheels` into the .tar.xz `archive` (see the module doc)."""
    paths = sorted(Path(wheels).glob("*.whl"))
    if not paths:
        print(f"gpu_check: no wheels in {wheels}")
        return 1
    archive = Path(archive)
    partial = archive.with_name(archive.name + ".partial")
    # xz preset 9: its 64 MiB dictionary spans most of a wheel
    with tarfile.open(partial, "w:xz", format=tarfile.GNU_FORMAT, preset=9) as tar:
        for path in paths:
            data = stored_wheel(path)
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    partial.replace(archive)
    print(f"gpu_check: packed {len(paths)} wheels into {archive} "
          f"({archive.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _unpack_wheel(wheel, target):
    """The files of zip `wheel` under `target`, laid out as pip would in site-packages."""
    for member in wheel.infolist():
        parts = Path(member.filename).parts
        if member.is_dir() or Path(member.filename).is_absolute() or ".." in parts:
            continue
        # NAME.data/purelib|platlib/... belongs in site-packages; scripts, headers and data
        # files are not needed here
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            parts = parts[2:]
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(wheel.read(member))
        os.chmod(destination, _mode((member.external_attr >> 16) & 0o111))


def install(archive, target) -> int:
    """Unpacks every wheel of the .tar.xz `archive` (see `pack`) into `target`."""
    if not os.path.isfile(archive) or not tarfile.is_tarfile(archive):
        print(f"gpu_check: {archive} is not a wheelhouse archive (scripts/gpu_wheelhouse.sh "
              "builds one)")
        return 1
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".whl"):
                with zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read())) as wheel:
                    _unpack_wheel(wheel, target)
                count += 1
    if not count:
        print(f"gpu_check: no wheels in {archive}")
        return 1
    print(f"gpu_check: unpacked {count} wheels of {archive} into {target}")
    return 0


def imports() -> int:
    import importlib

    missing = []
    for module, wheel in NEEDED.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # an ImportError, or a binary built for another numpy
            missing.append(f"{module} ({wheel}): {type(e).__name__}: {e}")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        missing.append(f"numpy {numpy.__version__} at {numpy.__file__}: Detectron2 needs numpy<2 "
                       "(numpy 1.26.4 from the wheelhouse, first on PYTHONPATH)")
    if missing:
        print("gpu_check: missing or broken:\n  " + "\n  ".join(missing))
        return 1
    import detectron2
    import torch

    print(f"gpu_check: imports ok: torch {torch.__version__}, numpy {numpy.__version__}, "
          f"detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}")
    return 0


def _ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def _ms(value):
    return f"{value:.3f}" if value is not None else "-"


def summary_rows(out):
    """One row per measured case: upsampler micro-benchmarks (each dtype), then the model."""
    rows = []
    for name in sorted(os.listdir(out)):
        path = Path(out) / name / "results.json"
        if not name.startswith("upsamplers") or not path.exists():
            continue
        data = json.loads(path.read_text())
        dtype = name.split("_", 1)[1] if "_" in name else "?"
        by_case = {(r["shape"], r["case"]): r for r in data["rows"]}
        for r in data["rows"]:
            bilinear = by_case.get((r["shape"], "bilinear"))
            authors = None
            if r["case"].startswith("DySample-"):
                variant = r["case"].split()[0][len("DySample-"):]
                authors = by_case.get((r["shape"], f"authors-{variant}"))
            rows.append(dict(
                benchmark="upsampler x2", input=r["shape"], dtype=dtype, case=r["case"],
                fwd=r["fwd_ms"], train=r["train_ms"],
                vs_bilinear=(_ratio(r["fwd_ms"], bilinear and bilinear["fwd_ms"]),
                             _ratio(r["train_ms"], bilinear and bilinear["train_ms"])),
                vs_authors=(_ratio(r["fwd_ms"], authors and authors["fwd_ms"]),
                            _ratio(r["train_ms"], authors and authors["train_ms"])),
                vs_nearest=("-", "-")))
    path = Path(out) / "model" / "results.json"
    if path.exists():
        data = json.loads(path.read_text())
        command = data["info"]["command"].split()
        size = (command[command.index("--size") + 1] if "--size" in command
                else "64x96" if "--quick" in command else "800x1333")
        for r in data["rows"]:
            rows.append(dict(
                benchmark=f"model {r['arch']} (batch 2 train, 1 image inference)",
                input=size, dtype="float32",
                case=f"{r['upsampler']}-FPN" if r["upsampler"] != "nearest" else "nearest-FPN",
                fwd=r["infer_ms"], train=r["train_ms"],
                vs_bilinear=("-", "-"), vs_authors=("-", "-"),
                vs_nearest=(f"{r['infer_ms_vs_nearest']:.3f}", f"{r['train_ms_vs_nearest']:.3f}")))
    return rows


def summary(out) -> int:
    rows = summary_rows(out)
    if not rows:
        print(f"gpu_check: no benchmark results under {out}")
        return 1
    machine = ""
    for name in sorted(os.listdir(out)):
        path = Path(out) / name / "results.json"
        if path.exists():
            machine = json.loads(path.read_text())["info"]["machine"]
            break
    lines = [
        "# GPU check: DySample on CUDA", "",
        f"Machine: {machine}.", "",
        "Upsampler rows: x2 upsampling of [B, C, H, W] (the FPN's top-down steps of an 800x1333 "
        "image), forward (no grad) and forward+backward, median of the repeats after warm-up, "
        "CUDA synchronized around each run (scripts/benchmark_upsamplers.py --device cuda; its "
        "results.md per dtype has FLOPs and peak memory). DySample-* is the reference "
        "formulation (conv2d + grid_sample); \"(gather)\": the gather sampler, which "
        "deterministic training runs; authors-*: the authors' formulation, same weights. "
        "Model rows: R50 detectors with random weights, inference ms per image and one "
        "training iteration (batch 2, forward + backward) "
        "(scripts/benchmark_model.py --device cuda; see its results.md). "
        "Ratios: time / the baseline's time (x bilinear interpolation, x the authors' "
        "formulation of the same variant, x the nearest-neighbour FPN).", "",
        "| benchmark | input | dtype | case | forward ms | forward+backward ms "
        "| fwd / bilinear | fwd+bwd / bilinear | fwd / authors | fwd+bwd / authors "
        "| fwd / nearest-FPN | fwd+bwd / nearest-FPN |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['input']} | {r['dtype']} | {r['case']} | {_ms(r['fwd'])} "
            f"| {_ms(r['train'])} | {r['vs_bilinear'][0]} | {r['vs_bilinear'][1]} "
            f"| {r['vs_authors'][0]} | {r['vs_authors'][1]} | {r['vs_nearest'][0]} "
            f"| {r['vs_nearest'][1]} |")
    (Path(out) / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"gpu_check: wrote {Path(out) / 'summary.md'} ({len(rows)} rows)")
    return 0


def main(argv):
    commands = {"device": (device, 0), "pack": (pack, 2), "install": (install, 2),
                "imports": (imports, 0), "summary": (summary, 1)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    function, _ = commands[argv[0]]
    return function(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
