"""
Install detectron2 into the running Python, in this order:

1. already importable: keep it;
2. the official GitHub source, when github.com answers within seconds (compiled ops);
3. otherwise upstream's Python sources from PyPI's ``sal-detectron2`` 0.7.2 wheel, rebuilt
   as a pure-Python ``detectron2`` distribution without its CPython-3.10 binary, plus a
   ``detectron2._C`` stand-in (see detectron2_C_standin.py).

Usage: python scripts/install/install_detectron2.py [--source auto|github|pypi]
Prints one line saying which source it used. Exits non-zero with a message on failure.
"""
import argparse
import base64
import hashlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile

GITHUB_URL = "git+https://github.com/facebookresearch/detectron2.git"
PYPI_REDIST = "sal-detectron2==0.7.2"
# Upstream's install_requires at that commit (sal-detectron2 left out fvcore and iopath).
REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "black",
    "packaging",
    "numpy<2",
]
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[install] {msg}", flush=True)


def fail(msg):
    print(f"[install] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    if subprocess.call(cmd) != 0:
        fail("command failed: " + " ".join(cmd))


def reachable(host, port=443, timeout=3.0):
    """True if a TCP connection to host:port opens within `timeout` seconds (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result)


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_pure_python_wheel(redist_wheel, out_dir):
    """Rebuild the redistributed wheel as ``detectron2-<ver>-py3-none-any.whl``."""
    with zipfile.ZipFile(redist_wheel) as src:
        init = src.read("detectron2/__init__.py").decode()
    version = re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)
    dist_info = f"detectron2-{version}.dist-info"
    out_path = os.path.join(out_dir, f"detectron2-{version}-py3-none-any.whl")
    with open(os.path.join(HERE, "detectron2_C_standin.py"), "rb") as f:
        standin = f.read()
    files = {}
    with zipfile.ZipFile(redist_wheel) as src:
        for name in src.namelist():
            # Keep upstream's package; drop the binary, the top-level `tools` scripts
            # (not a package upstream installs) and the redistributor's metadata.
            if not name.startswith("detectron2/") or name.endswith(".so"):
                continue
            files[name] = src.read(name)
        license_text = next(
            (src.read(n) for n in src.namelist() if n.endswith(".dist-info/LICENSE")), b""
        )
    files["detectron2/_C.py"] = standin
    metadata = [
        "Metadata-Version: 2.1",
        "Name: detectron2",
        f"Version: {version}",
        "Summary: Detectron2 (upstream Python sources of sal-detectron2 0.7.2, "
        "no compiled extension; built by dysample-d2's installer)",
        "License: Apache-2.0",
        "Requires-Python: >=3.8",
    ] + [f"Requires-Dist: {r}" for r in REQUIRES]
    files[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: dysample-d2\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    files[f"{dist_info}/top_level.txt"] = b"detectron2\n"
    files[f"{dist_info}/LICENSE"] = license_text
    record = [record_line(name, data) for name, data in sorted(files.items())]
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in sorted(files.items()):
            out.writestr(name, data)
        out.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return out_path


def install_from_github():
    log(f"detectron2: installing from GitHub ({GITHUB_URL}), compiling its ops (minutes)")
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", GITHUB_URL]
    return subprocess.call(cmd) == 0


def install_from_pypi_redistribution():
    log(f"detectron2: installing upstream's Python sources from PyPI ({PYPI_REDIST})")
    with tempfile.TemporaryDirectory() as tmp:
        pip(
            "download", "--no-deps", "--quiet", PYPI_REDIST, "--python-version", "3.10",
            "--only-binary=:all:", "--platform", "linux_x86_64", "--dest", tmp,
        )
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            fail(f"expected one {PYPI_REDIST} wheel, pip downloaded {wheels}")
        wheel = build_pure_python_wheel(os.path.join(tmp, wheels[0]), tmp)
        pip("install", "--quiet", wheel)


def describe_installed():
    code = (
        "import detectron2, os;"
        "from importlib import metadata;"
        "import detectron2._C as C;"
        "print(os.path.dirname(detectron2.__file__), metadata.version('detectron2'),"
        " 'stand-in _C (no compiled ops)' if getattr(C, 'IS_STANDIN', False) else 'compiled _C')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        fail("detectron2 was installed but does not import:\n" + out.stderr)
    return out.stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        choices=["auto", "github", "pypi"],
        default=os.environ.get("DYSAMPLE_D2_DETECTRON2_SOURCE", "auto"),
        help="where to take detectron2 from when it is not importable (default: auto)",
    )
    args = parser.parse_args()

    if importlib.util.find_spec("detectron2") is not None:
        log(f"detectron2: already installed, keeping it: {describe_installed()}")
        return
    use_github = args.source == "github" or (
        args.source == "auto" and reachable("github.com")
    )
    if args.source == "auto" and not use_github:
        log("detectron2: github.com is not reachable (checked in 3 s)")
    if use_github:
        if install_from_github():
            log(f"detectron2: source used: GitHub: {describe_installed()}")
            return
        if args.source == "github":
            fail("building detectron2 from GitHub failed (see pip's output above)")
        log("WARNING: building detectron2 from GitHub failed; using the PyPI redistribution")
    install_from_pypi_redistribution()
    log(f"detectron2: source used: PyPI {PYPI_REDIST} (Python sources): {describe_installed()}")


if __name__ == "__main__":
    main()
