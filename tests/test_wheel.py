"""The package as `pip install` gives it: a wheel of the library, its configs and the kernel's
sources, used from outside the source tree without the tooling (tools/, scripts/) or its
dependencies."""
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO

# Imported only by scripts/ and tests/ (or by an optional extra): `import dysample_d2` and its
# builders must work without them.
TOOLING_ONLY = ("cv2", "panopticapi", "onnx", "onnxruntime", "onnxscript", "openvino", "timm")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(out), REPO], check=True)
    (path,) = out.glob("dysample_d2-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_the_library_its_configs_and_kernel_sources_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    configs = [n for n in names if n.startswith("dysample_d2/model_zoo/configs/")]
    in_checkout = [os.path.relpath(os.path.join(root, f), os.path.join(REPO, "configs"))
                   for root, _, files in os.walk(os.path.join(REPO, "configs"), followlinks=True)
                   for f in files if f.endswith((".yaml", ".py"))]
    assert sorted(n[len("dysample_d2/model_zoo/configs/"):] for n in configs) == sorted(in_checkout)
    assert "dysample_d2/layers/csrc/sample_forward_cpu.cpp" in names
    assert "dysample_d2/layers/csrc/sampling_common.h" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"dysample_d2"}  # no scripts/, tests/ or tools/ (train_net.py's engine)
    assert not [n for n in names if n.startswith("dysample_d2/engine/")]


@pytest.mark.slow
def test_installed_wheel_builds_yacs_and_lazy_configs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure wheel: unpacking is installing
    code = textwrap.dedent(f"""
        import sys

        for name in {TOOLING_ONLY!r}:
            sys.modules[name] = None  # as if not installed: importing it raises
        import dysample_d2
        from dysample_d2 import model_zoo
        from detectron2.config import instantiate
        from detectron2.modeling import build_model

        assert dysample_d2.__file__.startswith({str(site)!r}), dysample_d2.__file__
        cfg = model_zoo.get_config("COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
                                   ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
        model = build_model(cfg)  # _BASE_ chain resolved inside the installed package
        ups = [n for n, m in model.named_modules() if isinstance(m, dysample_d2.DySample)]
        lazy = model_zoo.get_config("new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py",
                                    ["train.device=cpu"])
        lazy_model = instantiate(lazy.model)
        lazy_ups = [n for n, m in lazy_model.named_modules()
                    if isinstance(m, dysample_d2.DySample)]
        print(sorted(ups), sorted(lazy_ups), model_zoo.CONFIG_DIR)
    """)
    env = dict(os.environ, PYTHONPATH=str(site), DYSAMPLE_D2_SAMPLER="gridsample")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "['backbone.fpn_upsample3', 'backbone.fpn_upsample4', 'backbone.fpn_upsample5']"
    assert result.stdout.split("] ")[0] + "]" == expected
    assert f"{expected} {expected} {site}" in result.stdout


def test_get_config_file_names_the_closest_configs():
    from dysample_d2 import model_zoo

    path = model_zoo.get_config_file("configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml")
    assert os.path.samefile(
        path, os.path.join(REPO, "configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"))
    with pytest.raises(FileNotFoundError,
                       match=r"did you mean COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x\.yaml"):
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R50_DySample_FPN_1x.yaml")
