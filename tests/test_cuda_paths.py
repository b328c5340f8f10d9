"""
DySample's CUDA code paths checked without a GPU: tensors on the ``meta`` device and fake CUDA
tensors (``FakeTensorMode``), for each sampler, in eager mode, in the tracing branch (what
torch.jit tracing and the TorchScript ONNX exporter run), under torch.export and the dynamo
ONNX exporter; the module, the DySample-FPN backbone and a whole R-CNN as far as fake tensors
go; no host-to-device copy or host sync per forward; the deterministic sampler choice.

torch's own limits on a machine without CUDA, which the tests work around:
* ``torch.jit.trace`` runs neither on fake tensors nor on meta convolutions (the tracer's
  sizes are tensors where their shape checks need ints), so the tracing branch is run eagerly
  with ``tracing_mode()`` patched to "trace": the same code, on fake CUDA inputs;
* a backward on fake CUDA tensors starts the autograd engine's CUDA device thread, which needs
  a CUDA driver: backward passes run on the meta device;
* CUDA graph capture (``torch.cuda.graph``) needs a real stream: the capture rules (no
  host-to-device copy, no host sync) are checked on the dispatched ops instead.
"""
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from dysample_d2 import DySample
from dysample_d2.layers import SAMPLERS, sampler
from dysample_d2.layers import dysample as dysample_module

from helpers import load_config

FASTER_RCNN = "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"


@pytest.fixture(params=SAMPLERS)
def sampler_name(request):
    with sampler(request.param):
        yield request.param


@pytest.fixture
def fake_cuda():
    """A FakeTensorMode in which ``device="cuda"`` makes fake CUDA tensors; the base-grid
    cache is emptied after (it would keep fake grids under real devices' keys)."""
    dysample_module._cached_base_grid.cache_clear()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            yield mode
    finally:
        dysample_module._cached_base_grid.cache_clear()


@pytest.fixture
def tracing_branch(monkeypatch):
    """DySample's tracing branch (torch.jit tracing, TorchScript ONNX export) run eagerly:
    its sizes, stacked on the CPU as the tracer's are, then sent to the input's device."""
    monkeypatch.setattr(dysample_module, "tracing_mode", lambda: "trace")


def cuda_module(**kwargs):
    with torch.device("cuda"):
        return DySample(16, 2, groups=4, **kwargs)


class DeviceCopies(TorchDispatchMode):
    """Records each op that would copy host memory to a CUDA device (a CPU tensor of more
    than one element read by an op with a CUDA output), and each host sync (``.item()``)."""

    def __init__(self):
        super().__init__()
        self.copies, self.syncs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)]
        outputs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        if any(o.device.type == "cuda" for o in outputs) and any(
                a.device.type == "cpu" and a.dim() > 0 for a in inputs):
            self.copies.append(str(func))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs.append(str(func))
        return out


# ---- the module: eager, tracing branch, torch.export, the ONNX exporters ----


@pytest.mark.parametrize("dyscope", [False, True])
def test_module_on_fake_cuda_in_eager_mode_and_the_tracing_branch(sampler_name, fake_cuda,
                                                                  request, dyscope):
    module = cuda_module(dyscope=dyscope)
    x = torch.empty(2, 16, 5, 7, device="cuda")
    out = module(x)
    assert out.device.type == "cuda" and out.shape == (2, 16, 10, 14)
    assert module(x, size=(9, 13)).shape == (2, 16, 9, 13)
    request.getfixturevalue("tracing_branch")
    traced_branch = module(x, add_to=torch.empty(2, 16, 9, 14, device="cuda"))
    assert traced_branch.device.type == "cuda" and traced_branch.shape == (2, 16, 9, 14)
    assert module.sampling_grid(x).device.type == "cuda"


@pytest.mark.parametrize("traced", [False, True])
def test_forward_and_backward_on_the_meta_device(sampler_name, request, traced):
    if traced:
        request.getfixturevalue("tracing_branch")
    module = DySample(16, 2, "pl", 4, dyscope=True).to("meta")
    x = torch.empty(2, 16, 5, 7, device="meta", requires_grad=True)
    out = module(x, size=(9, 14))
    out.sum().backward()
    assert out.device.type == "meta" and x.grad.shape == x.shape
    assert all(p.grad is not None and p.grad.device.type == "meta"
               for p in module.parameters())


def test_torch_export_on_fake_cuda(sampler_name, fake_cuda):
    module = cuda_module().eval()
    x = torch.empty(1, 16, 6, 8, device="cuda")
    dims = {2: torch.export.Dim("h", min=2, max=256), 3: torch.export.Dim("w", min=2, max=256)}
    program = torch.export.export(module, (x,), dynamic_shapes=({**dims},))
    (output,) = [n for n in program.graph.nodes if n.op == "output"]
    assert output.args[0][0].meta["val"].device.type == "cuda"
    # every tensor the program builds from the sizes lives on the device: none from the host
    devices = {n.meta["val"].device.type for n in program.graph.nodes
               if isinstance(n.meta.get("val"), torch.Tensor)}
    assert devices == {"cuda"}


def test_dynamo_onnx_export_on_fake_cuda(fake_cuda):
    """The dynamo exporter translates a fake CUDA module (its graph optimisation, which folds
    constants, needs real values: optimize=False). The TorchScript exporter traces, which
    fake tensors do not allow: its branch is the tracing branch above."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[deploy]')")
    module = cuda_module().eval()
    with sampler("gridsample"):
        program = torch.onnx.export(module, (torch.empty(1, 16, 6, 8, device="cuda"),),
                                    dynamo=True, optimize=False, verbose=False)
    assert "GridSample" in [node.op_type for node in program.model.graph]


# ---- no host-to-device copy, no host sync per forward ----


@pytest.mark.parametrize("size", [None, (9, 13)])
def test_forward_makes_no_host_to_device_copy(sampler_name, fake_cuda, size):
    module = cuda_module(dyscope=True)
    x = torch.empty(2, 16, 5, 7, device="cuda")
    for _ in range(2):  # the base grid's cache miss, then its hit
        with DeviceCopies() as recorded:
            module(x, size=size)
        assert recorded.copies == [] and recorded.syncs == []


def test_device_copies_sees_a_host_tensor_sent_to_the_device(fake_cuda):
    """The check above would see the copy it looks for."""
    with DeviceCopies() as recorded:
        torch.tensor([5.0, 7.0], device="cuda")
        torch.ones(3).to("cuda")
    assert len(recorded.copies) == 2


def test_fpn_forward_on_fake_cuda_makes_no_host_to_device_copy(fake_cuda):
    with torch.device("cuda"):
        backbone = build_backbone(load_config(FASTER_RCNN)).eval()
    x = torch.empty(1, 3, 64, 96, device="cuda")
    with DeviceCopies() as recorded:
        features = backbone(x)
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
        "p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}
    assert all(v.device.type == "cuda" for v in features.values())
    assert recorded.copies == [] and recorded.syncs == []


def test_base_grid_values_are_pythons_two_over_n_rounded():
    for n in (3, 7, 25, 41, 100, 1333):
        for dtype in (torch.float32, torch.float64):
            step = dysample_module._two_over((n,), torch.device("cpu"), dtype)
            assert step.item() == torch.tensor(2.0 / n, dtype=dtype).item()


# ---- the FPN backbone and a whole model ----


def test_fpn_backbone_on_fake_cuda_in_the_tracing_branch(sampler_name, fake_cuda, tracing_branch):
    with torch.device("cuda"):
        backbone = build_backbone(load_config(FASTER_RCNN)).eval()
    features = backbone(torch.empty(1, 3, 64, 96, device="cuda"))
    assert all(v.device.type == "cuda" for v in features.values())


def test_whole_model_on_fake_cuda_runs_until_detectron2s_data_dependent_ops(sampler_name,
                                                                           fake_cuda):
    """A Faster R-CNN on fake CUDA tensors: normalisation, the DySample-FPN and the RPN head
    run; Detectron2's padding (ImageList.from_tensors reads the image sizes back as numbers)
    and its proposal selection need values, which fake tensors do not have: the model stops
    there, not at a device mismatch."""
    cfg = load_config(FASTER_RCNN)
    with torch.device("cuda"):  # build_model without its .to(device), which fakes refuse
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).eval()
    image = torch.empty(3, 64, 96, device="cuda")
    features = model.backbone(((image - model.pixel_mean) / model.pixel_std)[None])
    logits, deltas = model.proposal_generator.rpn_head(
        [features[f] for f in model.proposal_generator.in_features])
    assert all(t.device.type == "cuda" for t in logits + deltas)
    with pytest.raises(DataDependentOutputException):
        model([{"image": image, "height": 64, "width": 96}])


# ---- the deterministic sampler choice on fake CUDA tensors ----


def test_deterministic_training_on_fake_cuda_runs_the_gather_sampler(fake_cuda, monkeypatch):
    calls = []
    for name in ("sample_gather",):
        original = getattr(dysample_module, name)
        monkeypatch.setattr(dysample_module, name, lambda *a, o=original: calls.append(1) or o(*a))
    grid_sample = dysample_module.F.grid_sample
    monkeypatch.setattr(dysample_module.F, "grid_sample",
                        lambda *a, **k: calls.append(2) or grid_sample(*a, **k))
    module = cuda_module()
    x = torch.empty(1, 16, 5, 7, device="cuda", requires_grad=True)
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        module(x)  # autograd records: grid_sample's CUDA backward would raise
        with torch.no_grad():  # inference: grid_sample's forward is deterministic
            module(x)
    finally:
        torch.use_deterministic_algorithms(enabled)
    module(x)
    assert calls == [1, 2, 2]
