"""Create the separate mmdet 3.3.0 virtualenv that `verify_mmdet_equivalence.py` checks against.

Not a dependency of the project: mmdet is only used to prove the converter right.

    python scripts/mmdet_equivalence/setup_env.py [--venv DIR]   # idempotent

Installs torch==2.14.1 / torchvision==0.29.1 (the project's versions, from pip's configured
indexes or cache), numpy<2, mmengine, mmdet==3.3.0 and mmcv==2.1.0 built from its PyPI sdist
(mmdet 3.3.0 refuses mmcv>=2.2; mmcv-lite has no ops). mmcv 2.1.0's setup.py asks for
-std=c++14/17, which torch 2.14's headers reject: the flags are raised to -std=c++20. CPU ops
only, compiled without optimization (-O0): the check runs them on a few images, and the build
is what dominates the set-up.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_VENV = os.path.join(REPO, ".venv-mmdet")
PINS = ["numpy<2", "setuptools<81"]


def log(msg):
    print(f"[mmdet-env] {msg}", flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)


def has(py, code):
    return subprocess.run([py, "-c", code], capture_output=True).returncode == 0


def build_mmcv(py, workdir):
    run([py, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "mmcv==2.1.0",
         "-d", workdir])
    sdist = [f for f in os.listdir(workdir) if f.startswith("mmcv-2.1.0") and f.endswith("gz")]
    if not sdist:
        raise SystemExit(f"mmcv sdist not downloaded into {workdir}")
    with tarfile.open(os.path.join(workdir, sdist[0])) as tar:
        tar.extractall(workdir)
    src = os.path.join(workdir, "mmcv-2.1.0")
    setup_py = os.path.join(src, "setup.py")
    with open(setup_py) as f:
        text = f.read()
    patched, n = re.subn(r"-std=c\+\+1[47]", "-std=c++20", text)
    log(f"setup.py: {n} -std flags raised to -std=c++20")
    with open(setup_py, "w") as f:
        f.write(patched)
    env = dict(os.environ, MMCV_WITH_OPS="1", FORCE_CUDA="0", MAX_JOBS=str(os.cpu_count() or 2),
               CUDA_VISIBLE_DEVICES="", CFLAGS="-O0 -g0", CXXFLAGS="-O0 -g0")
    env.pop("CUDA_HOME", None)
    run([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", src], env=env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=DEFAULT_VENV)
    args = parser.parse_args(argv)
    py = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(py):
        base = shutil.which("python3.11") or sys.executable
        run([base, "-m", "venv", args.venv])
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    if not has(py, "import torch, torchvision; assert torch.__version__.startswith('2.14.1')"):
        run(pip + ["torch==2.14.1", "torchvision==0.29.1"] + PINS)
    if not has(py, "import mmengine"):
        # mmcv's runtime deps first (its own install is --no-deps, built against this torch)
        run(pip + ["mmengine", "addict", "packaging", "Pillow", "pyyaml", "yapf",
                   "opencv-python-headless", "ninja", "wheel"] + PINS)
    if not has(py, "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'"):
        with tempfile.TemporaryDirectory(prefix="mmcv-build-") as workdir:
            build_mmcv(py, workdir)
    if not has(py, "import mmdet; assert mmdet.__version__ == '3.3.0'"):
        run(pip + ["mmdet==3.3.0", "scipy", "shapely", "terminaltables", "pycocotools"] + PINS)
    run([py, "-c", "import torch, mmcv, mmcv.ops, mmdet, mmengine, numpy; "
         "print('torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmdet', "
         "mmdet.__version__, 'mmengine', mmengine.__version__, 'numpy', numpy.__version__)"])
    log(f"ready: {py}")
    return py


if __name__ == "__main__":
    main()
