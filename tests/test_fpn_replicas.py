"""
DySample-FPN under ``nn.DataParallel``: each replica runs its own submodules. A replica is a
shallow copy of the module whose submodules and parameters are replaced by copies, so Python
lists of submodules would still name the original's. ``torch.nn.parallel.replicate`` is run
on CPU with its device broadcast replaced by clones (it refuses CPU devices), on a ResNet-18
DySample-FPN of 16 channels with the reference sampler (no compiled kernel to build).
"""
import sys

import pytest
import torch
from detectron2.modeling import FPN, build_backbone

from dysample_d2 import DySample
from dysample_d2.layers import sampler

from helpers import load_config

DYSAMPLE_FPN = "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"
TINY_FPN = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
            "MODEL.FPN.OUT_CHANNELS", "16"]
replicate_module = sys.modules["torch.nn.parallel.replicate"]


@pytest.fixture
def cpu_replicate(monkeypatch):
    monkeypatch.setattr(replicate_module, "_get_device_index", lambda device, optional: 0)
    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False:
                        [[t.detach().clone() for t in tensors] for _ in devices])
    return replicate_module.replicate


def test_a_replica_runs_only_its_own_parameters(cpu_replicate):
    torch.manual_seed(0)
    fpn = build_backbone(load_config(DYSAMPLE_FPN, opts=TINY_FPN)).eval()
    (replica,) = cpu_replicate(fpn, [torch.device("cpu")])
    assert [type(m) for m in replica.upsamplers] == [DySample] * 3
    own = [getattr(replica, f"fpn_upsample{k}") for k in (5, 4, 3)]
    assert all(r is o for r, o in zip(replica.upsamplers, own))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), sampler("gridsample"):
        expected = fpn(x)
        # the original's FPN weights changed: the replica's stay (Detectron2's ResNet keeps its
        # stages in a Python list too: its replica reads the original's, left unchanged here)
        for name, p in fpn.named_parameters():
            if name.startswith("fpn_"):
                p.add_(1.0)
        out = replica(x)
    for name in expected:
        assert torch.equal(out[name], expected[name]), name


def test_upsamplers_are_registered_once_under_their_names():
    fpn = build_backbone(load_config(DYSAMPLE_FPN))
    names = [n for n, m in fpn.named_modules() if isinstance(m, DySample)]
    assert names == ["fpn_upsample5", "fpn_upsample4", "fpn_upsample3"]
    assert [m for m in fpn.upsamplers] == [getattr(fpn, n) for n in names]
    keys = [k for k in fpn.state_dict() if "upsample" in k]
    assert keys and all(k.startswith(tuple(n + "." for n in names)) for k in keys)
    assert len(list(fpn.parameters())) == len(dict(fpn.named_parameters()))


def test_scripting_stops_in_one_line_naming_tracing_and_torch_export():
    """torch.jit.script of the DySample-FPN, alone or inside a model, stops before compiling
    anything, with a message that names what works."""
    backbone = build_backbone(load_config(DYSAMPLE_FPN))
    assert isinstance(backbone, FPN)
    for module in (backbone, torch.nn.Sequential(backbone)):
        with pytest.raises(RuntimeError, match="torch.jit.trace .* or torch.export") as error:
            torch.jit.script(module)
        assert "\n" not in str(error.value)
