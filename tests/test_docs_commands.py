"""
Every command of README.md and docs/*.md, checked the way a user runs it: offline, on CPU,
from the repository root, in the environment ./scripts/install.sh makes.

What is checked. The commands of the ```bash blocks (continuation lines joined, comments
dropped) of README.md and docs/*.md, and the ```python blocks of README.md and docs/usage.md
(PYTHON_DOCS). Each bash command has an entry
in COMMANDS, one of:

  Run(check)      run as written; exit status 0, then `check(mirror, output)` if given;
  Refuse(text)    run as written; it cannot do its job here (no COCO, no GPU, no download, no
                  released checkpoint) and must stop with one `error: ...` line containing
                  `text`, exit status 2, no traceback;
  Help(reason)    not run (it takes minutes or another environment, said in `reason`); its
                  script's --help must succeed, so the command's script and interpreter exist;
  Extra()         `pip install -e ".[X]"`: not run (it would change the shared environment),
                  X must be an extra of setup.py;
  Elsewhere(why)  checked another way, with the reason.

`test_every_docs_command_is_checked` fails for a command without an entry and for an entry no
document has any more, so a new command in the docs needs one here. Python blocks run in a
fresh namespace; a python block whose first line is `# NAME.py` is the file NAME.py of the
commands after it and is written to that name instead (docs/custom_dataset.md's launcher).

How commands run (the only differences from a fresh clone, all here):
  * `source .venv/bin/activate`: the checkout's .venv/bin first on PATH, VIRTUAL_ENV set;
    `export K=V` sets K for the rest of its block;
  * the working directory is a mirror of the checkout (`mirror` fixture): links to
    .venv/, train_net.py, configs/, scripts/, tools/, dysample_d2/, setup.py, pyproject.toml, a copy of docs/
    (a command regenerates docs/sampling.png), and its own datasets/, output/, checkpoints/, so
    nothing is written into the checkout; DYSAMPLE_D2_VENV names the checkout's .venv, which
    the scripts would otherwise look for in the mirror;
  * a command that reads output/quickstart/det/model_final.pth before the quickstart has run in
    the mirror finds a randomly initialised checkpoint of the quickstart config there.

The fast part (coverage, python blocks, extras) takes seconds; blocks that run commands are
marked slow (training, exports, and each process start costs 5-15 s on 2 cores).
"""
import json
import math
import os
import re
import shlex
import subprocess
import sys
from typing import Callable, NamedTuple, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".venv")
DOCS = ["README.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
    if name.endswith(".md")
)
# the documents whose python blocks are complete programs (elsewhere they are fragments of a
# page's explanation, e.g. docs/deployment.md's)
PYTHON_DOCS = ["README.md", "docs/usage.md"]
QUICKSTART_CONFIG = "configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml"
QUICKSTART_CHECKPOINT = "output/quickstart/det/model_final.pth"
TIMEOUT = 1200  # seconds for one command


# ---------------------------------------------------------------------------- extraction

def _strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def blocks(path):
    """[(language, text)] of the fenced code blocks of a markdown file."""
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def bash_commands(text):
    """The commands of a bash block: continuation lines joined, comments and blanks dropped,
    whitespace runs collapsed."""
    commands, pending = [], ""
    for line in text.splitlines():
        line = _strip_comment(line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = " ".join((pending + line).split())
        pending = ""
        if command:
            commands.append(command)
    return commands


def bash_blocks():
    """[(id, [command, ...])] of every ```bash block of the docs."""
    found = []
    for path in DOCS:
        index = 0
        for language, text in blocks(path):
            if language in ("bash", "sh", "shell", "console"):
                index += 1
                found.append((f"{path}#{index}", bash_commands(text)))
    return found


def python_blocks(docs=None):
    found = []
    for path in docs or DOCS:
        index = 0
        for language, text in blocks(path):
            if language == "python":
                index += 1
                found.append((f"{path}#py{index}", text))
    return found


# ---------------------------------------------------------------------------- the table

class Run(NamedTuple):
    check: Optional[Callable] = None
    slow: bool = True


class Refuse(NamedTuple):
    text: str


class Help(NamedTuple):
    reason: str


class Extra(NamedTuple):
    pass


class Elsewhere(NamedTuple):
    reason: str


ENVIRONMENT = object()  # `source .venv/bin/activate`, `export K=V`: the block's environment


def _loss_rows(metrics_json):
    with open(metrics_json) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if "total_loss" in row]


def trained(output_dir, iterations):
    """A check: training reached its last iteration (`iterations` - 1 in metrics.json, with
    finite losses there) and wrote model_final.pth. Every iteration's loss is finite, or
    Detectron2's trainer stops with FloatingPointError (exit status 1)."""
    def check(mirror, output):
        rows = _loss_rows(os.path.join(mirror, output_dir, "metrics.json"))
        assert rows and max(row["iteration"] for row in rows) == iterations - 1, rows
        assert all(math.isfinite(row[key]) for row in rows for key in row if "loss" in key), rows
        assert os.path.isfile(os.path.join(mirror, output_dir, "model_final.pth"))
    return check


def wrote(*paths, text=None):
    def check(mirror, output):
        for path in paths:
            assert os.path.getsize(os.path.join(mirror, path)) > 0, path
        if text is not None:
            assert text in output, output[-2000:]
    return check


def coco_ap(mirror, output):
    assert re.search(r"copypaste: [\d.nan]+,", output), output[-2000:]


def offsets_printed(mirror, output):
    assert re.search(r"fpn_upsample3: mean [\d.]+ max [\d.]+", output), output[-2000:]


RETINANET_SCRATCH = (
    "python train_net.py --config-file configs/COCO-Detection/retinanet_R_50_DySample_FPN_1x.py "
    "train.init_checkpoint=\"\" model.backbone.bottom_up.stem.norm=GN "
    "model.backbone.bottom_up.stages.norm=GN model.backbone.bottom_up.freeze_at=0 "
    "train.max_iter=20 dataloader.train.total_batch_size=2 "
    "'dataloader.train.mapper.augmentations.0.short_edge_length=[256]' "
    "dataloader.train.mapper.augmentations.0.max_size=256 "
    "dataloader.test.mapper.augmentations.0.short_edge_length=256 "
    "dataloader.test.mapper.augmentations.0.max_size=256 "
    "train.output_dir=output/retinanet_scratch"
)
EXPORT_ABBREVIATED = ("abbreviated: `...` stands for the first command's config and weights; "
                      "tests/test_deploy.py and tests/test_export.py run these formats, opsets, "
                      "runtimes and --backbone-only")

COMMANDS = {
    "source .venv/bin/activate": ENVIRONMENT,
    "export DETECTRON2_DATASETS=datasets": ENVIRONMENT,
    "export DETECTRON2_DATASETS=/path/to/datasets": ENVIRONMENT,
    # README: quick start, installation
    # .ci/run is exactly these two commands, on a clean clone (both run install.sh first)
    "./scripts/quickstart.sh": Elsewhere(".ci/run runs it as written on a clean clone"),
    "./scripts/test.sh": Elsewhere(".ci/run runs it as written on a clean clone (this file "
                                   "included)"),
    "./scripts/install.sh": Elsewhere("quickstart.sh and test.sh run it first, in .ci/run"),
    # README: training on generated data
    "python scripts/make_coco_dataset.py --root datasets": Run(
        wrote("datasets/coco/annotations/instances_val2017.json")),
    f"python train_net.py --config-file {QUICKSTART_CONFIG} SOLVER.MAX_ITER 40 OUTPUT_DIR output/tiny":
        Run(trained("output/tiny", 40)),
    f"python train_net.py --config-file {QUICKSTART_CONFIG} --eval-only MODEL.WEIGHTS "
    "output/tiny/model_final.pth OUTPUT_DIR output/tiny/eval": Run(coco_ap),
    f"python scripts/demo.py --config-file {QUICKSTART_CONFIG} --input "
    "datasets/coco/val2017/000000900003.jpg --output output/tiny/demo.png MODEL.WEIGHTS "
    "output/tiny/model_final.pth": Run(wrote("output/tiny/demo.png")),
    # README: COCO (needs COCO 2017 and 8 GPUs): offline, the ImageNet weights cannot download
    "python train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml "
    "--num-gpus 8": Refuse("MODEL.WEIGHTS"),
    "python train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml "
    "--num-gpus 8 --resume": Refuse("MODEL.WEIGHTS"),
    "python train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml "
    "--eval-only MODEL.WEIGHTS output/model_final.pth": Refuse("output/model_final.pth"),
    # docs/reproduce_paper.md: the authors' checkpoints (a download) and COCO
    "mkdir -p checkpoints/mmdet": Run(),
    "python scripts/convert_mmdet_checkpoint.py faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth "
    "checkpoints/mmdet/faster_rcnn_r50_fpn_dysample-lpg4_1x_coco_d2.pth":
        Refuse("faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth"),
    "python scripts/convert_mmdet_checkpoint.py mask_rcnn_r50_my_dysample.pth "
    "checkpoints/mmdet/mask_rcnn_r50_my_dysample_d2.pth --config-file "
    "configs/mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml --task mask":
        Refuse("mask_rcnn_r50_my_dysample.pth"),
    "python train_net.py --eval-only --config-file "
    "configs/mmdet-recipe/faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml":
        Refuse("faster_rcnn_r50_fpn_dysample-lpg4_1x_coco_d2.pth"),
    ".venv/bin/python scripts/verify_mmdet_equivalence.py --record-fixture": Help(
        "the mmdet environment: its first run builds .venv-mmdet (mmcv from source, tens of "
        "minutes, PyPI); tests/test_convert_mmdet.py replays the key names it recorded"),
    # README export section, docs/deployment.md
    'pip install -e ".[deploy]"': Extra(),
    'pip install -e ".[test]"': Extra(),
    "pip install -e .": Extra(),
    "python scripts/export_model.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml "
    "--weights output/quickstart/det/model_final.pth --format onnx --runtime onnxruntime "
    "--output output/export": Run(),
    "python scripts/export_model.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml "
    "--weights output/quickstart/det/model_final.pth --format onnx --output output/export": Run(),
    "python scripts/export_model.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml "
    "--weights output/quickstart/det/model_final.pth --format onnx --output output/export "
    "--input datasets/coco/val2017/000000900003.jpg": Run(),
    "python scripts/export_model.py --config-file ... --format onnx --opset 11 --backbone-only "
    "--runtime openvino --output output/export": Elsewhere(EXPORT_ABBREVIATED),
    "python scripts/export_model.py --config-file ... --format onnx --dynamo --backbone-only "
    "--output output/export": Elsewhere(EXPORT_ABBREVIATED),
    "python scripts/export_model.py --config-file ... --format export --backbone-only "
    "--output output/export": Elsewhere(EXPORT_ABBREVIATED),
    "python scripts/export_model.py --config-file ... --format torchscript --output output/export":
        Elsewhere(EXPORT_ABBREVIATED),
    "python scripts/export_model.py --config-file ... --format onnx --runtime openvino --precision bf16 "
    "--output output/export": Elsewhere(EXPORT_ABBREVIATED),
    "python scripts/benchmark_deploy.py --repeats 11 --docs docs/deployment.md": Help(
        "about 20 minutes of exports and timing, and it rewrites docs/deployment.md's table"),
    "python scripts/visualize_sampling.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml "
    "--weights output/quickstart/det/model_final.pth --input datasets/coco/val2017/000000900003.jpg":
        Run(wrote("output/sampling.png", text="wrote output/sampling.png")),
    "python scripts/visualize_sampling.py --config-file configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml "
    "--weights output/quickstart/det/model_final.pth --input datasets/coco/val2017/000000900003.jpg "
    "--output docs/sampling.png --dpi 80": Run(offsets_printed),  # the mirror's copy of docs/
    # docs/benchmarks.md: minutes each; tests/test_benchmarks.py runs their --quick smoke runs
    "python scripts/benchmark_upsamplers.py --out output/bench/upsamplers": Help("minutes of timing"),
    "python scripts/benchmark_kernel.py --out output/bench/kernel": Help("minutes of timing"),
    "python scripts/benchmark_model.py --archs backbone --repeats 3 --no-flops --out "
    "output/bench/model_backbone": Help("R50 training steps at 800x1333: tens of minutes"),
    "python scripts/benchmark_model.py --archs backbone --repeats 3 --no-flops --calibrate-bn "
    "--out output/bench/model_backbone_bn": Help("R50 training steps at 800x1333: tens of minutes"),
    "python scripts/benchmark_model.py --archs faster_rcnn --repeats 3 --out "
    "output/bench/model_faster_rcnn": Help("Faster R-CNN training steps at 800x1333: an hour"),
    # docs/gpu.md: a CUDA machine
    "bash scripts/gpu_wheelhouse.sh output/gpu_wheelhouse.tar.xz": Elsewhere(
        "downloads the GPU machine's wheels from PyPI, for another Python version; "
        "tests/test_gpu_wheelhouse.py checks its packing"),
    "bash scripts/gpu_check.sh output/gpu_wheelhouse.tar.xz output/gpu_check": Elsewhere(
        "a CUDA GPU; without one it exits 0 at once, saying so; docs/gpu.md records its runs"),
    # docs/custom_dataset.md (train_my_dataset.py is the doc's python block)
    "python train_my_dataset.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml "
    "DATASETS.TRAIN '(\"my_dataset_train\",)' DATASETS.TEST '(\"my_dataset_val\",)' "
    "MODEL.ROI_HEADS.NUM_CLASSES 80 OUTPUT_DIR output/my_dataset MODEL.WEIGHTS \"\" "
    "MODEL.RESNETS.NORM GN INPUT.MIN_SIZE_TRAIN \"(256,)\" INPUT.MAX_SIZE_TRAIN 256 "
    "INPUT.MIN_SIZE_TEST 256 INPUT.MAX_SIZE_TEST 256 SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.0025 "
    "SOLVER.MAX_ITER 20":
        Run(trained("output/my_dataset", 20)),
    # docs/lazy_configs.md: RetinaNet from scratch (GroupNorm; FrozenBN diverges)
    RETINANET_SCRATCH: Run(trained("output/retinanet_scratch", 20)),
}


def _help_command(command):
    """The command with its script's arguments replaced by --help."""
    words = shlex.split(command)
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return " ".join(shlex.quote(w) for w in words[:script + 1]) + " --help"


# ---------------------------------------------------------------------------- running

def _env(mirror):
    env = dict(os.environ)
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = VENV
    env["DYSAMPLE_D2_VENV"] = VENV
    env.pop("PYTHONPATH", None)
    env.pop("DETECTRON2_DATASETS", None)
    return env


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("checkout")
    for name in (".venv", "train_net.py", "configs", "scripts", "tools", "dysample_d2",
                 "setup.py", "pyproject.toml", "LICENSE"):
        os.symlink(os.path.join(REPO, name), root / name)
    shutil.copytree(os.path.join(REPO, "docs"), root / "docs")
    return str(root)


def _random_quickstart_checkpoint(mirror):
    path = os.path.join(mirror, QUICKSTART_CHECKPOINT)
    if os.path.exists(path):
        return
    import torch

    from tools.deploy import load_model

    torch.manual_seed(0)
    _, model = load_model(os.path.join(REPO, QUICKSTART_CONFIG), "", [])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model.state_dict(), "iteration": -1}, path)


def run_block(mirror, commands):
    env = _env(mirror)
    for command in commands:
        entry = COMMANDS[command]
        if entry is ENVIRONMENT:
            if command.startswith("export "):
                key, value = command[len("export "):].split("=", 1)
                env[key] = value
            continue
        if isinstance(entry, (Elsewhere, Extra)):
            continue
        if isinstance(entry, Help):
            command = _help_command(command)
        if QUICKSTART_CHECKPOINT in command:
            _random_quickstart_checkpoint(mirror)
        proc = subprocess.run(["bash", "-c", command], cwd=mirror, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
        output = proc.stdout
        os.makedirs(os.path.join(mirror, "logs"), exist_ok=True)
        log = os.path.join(mirror, "logs", f"{len(os.listdir(os.path.join(mirror, 'logs'))):02d}.log")
        with open(log, "w") as f:  # kept with pytest's tmp_path, for reading a failure
            f.write(f"$ {command}\n{output}")
        where = f"$ {command}\n{output[-3000:]}"
        if isinstance(entry, Refuse):
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert proc.returncode == 2, where
            assert "Traceback" not in output, where
            assert len(errors) == 1 and entry.text in errors[0], where
        else:
            assert proc.returncode == 0, where
            if isinstance(entry, Run) and entry.check is not None:
                entry.check(mirror, output)


# ---------------------------------------------------------------------------- tests

def test_every_docs_command_is_checked():
    found = {command for _, commands in bash_blocks() for command in commands}
    missing = sorted(found - set(COMMANDS))
    assert not missing, ("docs commands with no entry in tests/test_docs_commands.py COMMANDS "
                         "(run it, or say how it is checked):\n" + "\n".join(missing))
    stale = sorted(set(COMMANDS) - found)
    assert not stale, "COMMANDS entries no document has any more:\n" + "\n".join(stale)


def test_extraction_joins_continuations_and_drops_comments():
    text = "# a comment\npython a.py --x 1 \\\n    --y 'a # b'   # trailing\n\n./b.sh\n"
    assert bash_commands(text) == ["python a.py --x 1 --y 'a # b'", "./b.sh"]


def test_pip_extras_exist():
    with open(os.path.join(REPO, "setup.py")) as f:
        extras = set(re.findall(r'^\s*"(\w+)":', f.read().split("extras_require", 1)[1], re.M))
    for command, entry in COMMANDS.items():
        if isinstance(entry, Extra):
            match = re.fullmatch(r'pip install -e (?:\.|"\.\[(\w+)\]")', command)
            assert match, command
            assert match.group(1) is None or match.group(1) in extras, (command, extras)


def _block_params():
    params = []
    for block_id, commands in bash_blocks():
        entries = [COMMANDS.get(c) for c in commands]
        runs = any(isinstance(e, (Run, Refuse, Help)) for e in entries)
        slow = any(isinstance(e, (Run, Refuse, Help)) and getattr(e, "slow", True) for e in entries)
        if runs:
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(commands, id=block_id, marks=marks))
    return params


@pytest.mark.parametrize("commands", _block_params())
def test_docs_bash_block(mirror, commands):
    missing = [c for c in commands if c not in COMMANDS]
    if missing:
        pytest.fail(f"no COMMANDS entry for {missing}")
    # a launcher defined by the block's document (# NAME.py python block) is written first
    for _, text in python_blocks():
        first = text.splitlines()[0]
        match = re.fullmatch(r"# (\w+\.py)", first.strip())
        if match and any(match.group(1) in c for c in commands):
            with open(os.path.join(mirror, match.group(1)), "w") as f:
                f.write(text)
    run_block(mirror, commands)


@pytest.mark.parametrize("block_id,code", [
    pytest.param(i, t, id=i) for i, t in python_blocks(PYTHON_DOCS)
    if not re.fullmatch(r"# \w+\.py", t.splitlines()[0].strip())
])
def test_docs_python_block(block_id, code):
    namespace = {"__name__": "__docs__"}
    exec(compile(code, block_id, "exec"), namespace)
    model = namespace.get("model")
    if model is not None and "point_rend" in code:
        assert type(model.backbone).__name__ == "DySampleFPN"
        assert type(model.roi_heads.mask_head).__name__ == "PointRendMaskHead"
