"""The installer's detectron2 fallback: the rebuilt wheel and the _C stand-in."""
import base64
import hashlib
import importlib.util
import os
import socket
import time
import zipfile

import pytest
import torch

from conftest import REPO

INSTALL_DIR = os.path.join(REPO, "scripts", "install")


def load_module(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(INSTALL_DIR, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def installer():
    return load_module("install_detectron2", "install_detectron2.py")


def fake_redistribution(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("detectron2/__init__.py", '__version__ = "0.7.2"\n')
        z.writestr("detectron2/layers/nms.py", "x = 1\n")
        z.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF")
        z.writestr("tools/train_net.py", "print()\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/LICENSE", "Apache\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/WHEEL", "Tag: cp310-none-any\n")
    return path


def test_rebuilt_wheel_is_pure_python_detectron2(installer, tmp_path):
    wheel = installer.build_pure_python_wheel(fake_redistribution(tmp_path / "sal.whl"), tmp_path)
    assert os.path.basename(wheel) == "detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "detectron2/layers/nms.py" in names and "detectron2/_C.py" in names
        assert not any(n.endswith(".so") or n.startswith(("tools/", "sal_")) for n in names)
        metadata = z.read("detectron2-0.7.2.dist-info/METADATA").decode()
        assert "Name: detectron2\n" in metadata and "Requires-Dist: fvcore" in metadata
        assert "Tag: py3-none-any" in z.read("detectron2-0.7.2.dist-info/WHEEL").decode()
        records = z.read("detectron2-0.7.2.dist-info/RECORD").decode().split()
        for line in records:
            name, digest, size = line.split(",")
            if not digest:
                continue
            data = z.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode() and int(size) == len(data)
        assert len(records) == len(names)


def test_unreachable_host_is_detected_in_seconds(installer):
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    assert installer.reachable("127.0.0.1", port=port, timeout=2.0) is False
    assert time.time() - start < 4.0


def test_standin_answers_the_environment_report_and_names_missing_ops():
    standin = load_module("standin_C", "detectron2_C_standin.py")
    assert standin.has_cuda() is False
    assert "stand-in" in standin.get_compiler_version()
    assert isinstance(standin.get_cuda_version(), str)
    with pytest.raises(standin.MissingCompiledOpError, match="deform_conv_forward needs detectron2's compiled"):
        standin.deform_conv_forward
    assert not hasattr(standin, "COCOevalAccumulate")  # feature probes see "absent"


def test_installed_detectron2_ops_fail_with_a_clear_message():
    import detectron2._C as C

    if not getattr(C, "IS_STANDIN", False):
        boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
        assert torch.ops.detectron2.nms_rotated(boxes, torch.ones(1), 0.5).tolist() == [0]
        return
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="nms_rotated needs detectron2's compiled extension"):
        nms_rotated(boxes, torch.ones(1), 0.5)
