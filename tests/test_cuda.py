"""
DySample and DySample-FPN checks that only CUDA has (marked ``cuda``, skipped without CUDA):
every sampler in float32 with TF32 off against the float64 reference, half precision with
float32 grids, one training step of the R50 DySample-FPN detectors, train_net.py's
--eval-only against its own final evaluation, and deterministic training. The tests shared
with the CPU (the float64 reference, add_to, other output sizes, which ops each sampler runs)
take a ``device`` parameter (tests/sampler_helpers.py), "cuda" where CUDA is available.

    pytest -m cuda tests/test_cuda.py tests/test_sampling.py tests/test_any_size.py \
        tests/test_dysample.py             # the CUDA set, a couple of minutes on one GPU
"""
import os

# cuBLAS needs a fixed workspace under torch.use_deterministic_algorithms(True); read when
# CUDA starts, so set before any test touches it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import train_net  # noqa: E402
from dysample_d2 import DySample  # noqa: E402
from dysample_d2.layers import SAMPLERS, sampler  # noqa: E402
from dysample_d2.layers import dysample as dysample_module  # noqa: E402

from helpers import load_config, synthetic_batch  # noqa: E402
from sampler_helpers import (  # noqa: E402,F401  (deterministic: a fixture)
    deterministic, exact_reference, outputs_and_grads, randomize,
)
from test_train_net import CONFIGS, flat_metrics, run, tiny_opts  # noqa: E402

NO_CUDA = "CUDA is not available (torch.cuda.is_available() is False)"
FASTER_RCNN = "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"
MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml"
GRID_SAMPLE_BACKWARD_ERROR = "grid_sampler_2d_backward_cuda does not have a deterministic"


def on_cuda(test):
    """Marks a test `cuda` and skips it, saying why, where CUDA is not available."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)(test))


@pytest.fixture(params=SAMPLERS)
def cuda_sampler(request):
    """The test body runs once per sampler; on CUDA "auto" is the reference formulation."""
    with sampler(request.param):
        yield request.param


def _tf32_switches():
    """(owner, attribute, full-float32 value) of the cuDNN conv and cuBLAS matmul settings."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        return [(conv, "fp32_precision", "ieee"),
                (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False),
            (torch.backends.cuda.matmul, "allow_tf32", False)]


@pytest.fixture
def full_float32():
    """float32 convs and matmuls in full float32, not TF32 (the default for cuDNN convs)."""
    switches = _tf32_switches()
    previous = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, previous):
            setattr(owner, name, value)


def on_device(grads):
    return [g.cpu() for g in grads]


def max_error(a, b):
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


# ---- every sampler on CUDA against the authors' formulation, float64 on CPU ----


@on_cuda
@pytest.mark.parametrize("style, dyscope, scope_bias", [("lp", False, False), ("pl", True, True)])
def test_every_sampler_on_cuda_float32_is_close_to_the_reference(cuda_sampler, full_float32,
                                                                 style, dyscope, scope_bias):
    module = randomize(DySample(16, 2, style, 4, dyscope, scope_bias), std=0.1)
    x = torch.randn(2, 16, 9, 11)
    grad = torch.randn(2, 16, 18, 22)
    ref_out, ref_grads = outputs_and_grads(exact_reference(module), x.double(), grad.double())
    out, grads = outputs_and_grads(module.cuda(), x.cuda(), grad.cuda())
    assert out.dtype == torch.float32
    assert max_error(out, ref_out) < 1e-4
    for g, r in zip(on_device(grads), ref_grads):
        assert max_error(g, r) < 1e-4 * max(1.0, r.abs().max().item())


# ---- half precision: float32 grids ----


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_keeps_float32_grids(cuda_sampler, full_float32, dtype):
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05).cuda()
    x = torch.randn(2, 16, 6, 7, device="cuda", requires_grad=True)
    expected = module(x)
    with torch.autocast("cuda", dtype=dtype):
        assert module.sampling_grid(x).dtype == torch.float32
        out = module(x)
    assert out.dtype == torch.float32  # the input's dtype
    # only the 1x1 convs run in half precision; the sampling stays float32
    assert max_error(out, expected) < (0.05 if dtype == torch.bfloat16 else 0.01)
    out.square().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_modules_on_cuda_sample_in_float32(cuda_sampler, full_float32, dtype):
    module = randomize(DySample(16, 2, groups=4, dyscope=True), std=0.05).cuda()
    x = torch.randn(1, 16, 6, 7, device="cuda")
    grad = torch.randn(1, 16, 12, 14, device="cuda")
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    module.to(dtype)
    assert module.sampling_grid(x.to(dtype)).dtype == torch.float32
    out, grads = outputs_and_grads(module, x.to(dtype), grad.to(dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert max_error(out, ref_out) < tol
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g.float()).all()
        assert max_error(g, r) < tol * max(1.0, r.abs().max().item())


# ---- R50 DySample-FPN detectors: one training step on generated data ----


@on_cuda
@pytest.mark.parametrize("config", [FASTER_RCNN, MASK_RCNN])
def test_one_training_step_on_cuda(config):
    cfg = load_config(config, opts=["MODEL.DEVICE", "cuda"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert all(p.is_cuda for p in model.parameters())
    upsamplers = [m for m in model.backbone.modules() if isinstance(m, DySample)]
    assert len(upsamplers) == 3
    before = [m.offset.weight.detach().clone() for m in upsamplers]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage(0):
        losses = model(synthetic_batch(cfg))
    assert ("loss_mask" in losses) == (config == MASK_RCNN)
    total = sum(losses.values())
    assert total.is_cuda and torch.isfinite(total), losses
    optimizer.zero_grad()
    total.backward()
    for m in upsamplers:
        assert torch.isfinite(m.offset.weight.grad).all() and m.offset.weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(not torch.equal(m.offset.weight, b) for m, b in zip(upsamplers, before))


@on_cuda
@pytest.mark.parametrize("task", ["det", "mask"])
def test_train_net_on_cuda_eval_only_reproduces_training_metrics(coco_root, tmp_path, task):
    """train_net.py on CUDA: 4 iterations and the final evaluation, then --eval-only on the
    checkpoint gives the same metrics."""
    train_dir = tmp_path / "train"
    results = run("--config-file", CONFIGS[task], *tiny_opts(train_dir), "MODEL.DEVICE", "cuda")
    assert "DEVICE: cuda" in (train_dir / "config.yaml").read_text()
    checkpoint = torch.load(train_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 3
    evaluated = run(
        "--config-file", CONFIGS[task], "--eval-only", *tiny_opts(tmp_path / "eval"),
        "MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", train_dir / "model_final.pth",
    )
    assert flat_metrics(evaluated) == pytest.approx(
        flat_metrics(results), rel=1e-9, abs=1e-9, nan_ok=True
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@on_cuda
def test_two_process_nccl_training_and_evaluation(coco_root, tmp_path):
    """Two processes, one GPU each, over NCCL (Detectron2's launch), then a two-process
    --eval-only gathering both shares of the validation images."""
    config = CONFIGS["det"]
    argv = ["--config-file", config, "--num-gpus", "2", *tiny_opts(tmp_path, max_iter=2),
            "MODEL.DEVICE", "cuda"]
    args = default_argument_parser().parse_args(argv)
    launch(train_net.main, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
    checkpoint = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1
    eval_dir = tmp_path / "eval"
    argv = ["--config-file", config, "--num-gpus", "2", "--eval-only", *tiny_opts(eval_dir),
            "MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    args = default_argument_parser().parse_args(argv)
    launch(train_net.main, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
    import json

    with open(eval_dir / "inference" / "coco_instances_results.json") as f:
        detections = json.load(f)
    assert len({d["image_id"] for d in detections}) == 3


# ---- deterministic training ----


@on_cuda
def test_deterministic_training_on_cuda_gives_identical_gradients(deterministic, full_float32,
                                                                 monkeypatch):
    """Under torch.use_deterministic_algorithms(True), "auto" trains with the gather sampler:
    two runs give the same bits, and the result is grid_sample's within float32 rounding."""
    calls = []
    original = dysample_module.sample_gather
    monkeypatch.setattr(dysample_module, "sample_gather",
                        lambda *a: calls.append(1) or original(*a))
    module = randomize(DySample(64, 2, "lp", 4, True), std=0.3).cuda()
    x = torch.randn(2, 64, 24, 40, device="cuda")
    grad = torch.randn(2, 64, 48, 80, device="cuda")
    first, second = (outputs_and_grads(module, x, grad) for _ in range(2))
    assert len(calls) == 2
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)
    torch.use_deterministic_algorithms(False)
    with sampler("gridsample"):
        ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert max_error(first[0], ref_out) < 1e-4
    for a, r in zip(first[1], ref_grads):
        assert max_error(a, r) < 1e-3 * max(1.0, r.abs().max().item())


@on_cuda
def test_explicit_gridsample_under_determinism_raises_pytorchs_error(deterministic):
    module = DySample(8, 2, groups=2).cuda()
    x = torch.randn(1, 8, 4, 4, device="cuda", requires_grad=True)
    with sampler("gridsample"):
        out = module(x)  # the forward is deterministic; its backward has no such kernel
        with pytest.raises(RuntimeError, match=GRID_SAMPLE_BACKWARD_ERROR):
            out.sum().backward()


@on_cuda
def test_inference_under_determinism_keeps_grid_sample(deterministic, monkeypatch):
    calls = []
    original = dysample_module.F.grid_sample
    monkeypatch.setattr(dysample_module.F, "grid_sample",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    module = DySample(8, 2, groups=2).cuda()
    with torch.no_grad():
        module(torch.randn(1, 8, 4, 4, device="cuda"))
    assert calls == [1]


@on_cuda
def test_dysample_fpn_backbone_trains_deterministically_on_cuda(deterministic):
    """ResNet-50 + DySample-FPN (GroupNorm): two forward+backward passes, same gradients."""
    torch.manual_seed(0)
    backbone = build_backbone(load_config(FASTER_RCNN, opts=["MODEL.DEVICE", "cuda"])).cuda()
    x = torch.randn(2, 3, 96, 128, device="cuda")

    def gradients():
        backbone.zero_grad(set_to_none=True)
        sum(f.square().mean() for f in backbone(x).values()).backward()
        return [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    first, second = gradients(), gradients()
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert torch.equal(a, b)
