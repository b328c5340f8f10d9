"""
DySample and DySample-FPN on CUDA (marked ``cuda``, skipped without CUDA): every sampler
against the CPU float64 reference, half precision, add_to and other output sizes, one
training step of the R50 DySample-FPN detectors, train_net.py's --eval-only against its own
final evaluation, and deterministic training. The deterministic sampler choice's logic is
also tested on CPU (unmarked: CPU behaviour must not change).

    pytest -m cuda tests/test_cuda.py      # the CUDA set, a couple of minutes on one GPU
"""
import os
import types

# cuBLAS needs a fixed workspace under torch.use_deterministic_algorithms(True); read when
# CUDA starts, so set before any test touches it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import train_net  # noqa: E402
from dysample_d2 import DySample  # noqa: E402
from dysample_d2.layers import SAMPLERS, backend, native, sampler  # noqa: E402
from dysample_d2.layers import dysample as dysample_module  # noqa: E402
from dysample_d2.layers.sampling import DySampleFunction  # noqa: E402

from helpers import load_config, synthetic_batch  # noqa: E402
from sampler_helpers import exact_reference, outputs_and_grads, randomize, zero_offsets  # noqa: E402
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


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) inside the test, the previous mode after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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
@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("scale", [2, 3])
def test_every_sampler_on_cuda_equals_the_float64_reference(cuda_sampler, style, dyscope,
                                                            groups, scale):
    channels = 4 * scale**2
    module = randomize(DySample(channels, scale, style, groups, dyscope), std=0.3).double()
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)  # odd sizes
    grad = torch.randn(2, channels, 7 * scale, 5 * scale, dtype=torch.float64)
    ref_out, ref_grads = outputs_and_grads(exact_reference(module), x, grad)
    out, grads = outputs_and_grads(module.cuda(), x.cuda(), grad.cuda())
    assert out.is_cuda and out.dtype == torch.float64
    assert max_error(out, ref_out) < 1e-9
    names = ["x"] + [n for n, _ in module.named_parameters()]
    for name, g, r in zip(names, on_device(grads), ref_grads):
        assert max_error(g, r) < 1e-9, name


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


@on_cuda
def test_each_sampler_runs_its_own_ops_on_cuda(monkeypatch):
    """On CUDA "auto" and "gridsample" call F.grid_sample, "gather" sample_gather; the
    CPU kernel's Function never runs."""
    calls = []

    def counted(owner, name):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(name) or original(*a, **k))

    counted(DySampleFunction, "apply")
    counted(dysample_module.F, "grid_sample")
    counted(dysample_module, "sample_gather")
    module = DySample(8, 2, groups=2).cuda()
    x = torch.randn(1, 8, 4, 4, device="cuda", requires_grad=True)
    expected = {"auto": "grid_sample", "gridsample": "grid_sample", "gather": "sample_gather"}
    for name, op in expected.items():
        with sampler(name):
            calls.clear()
            module(x).sum().backward()
            assert calls == [op], name


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


# ---- add_to and other output sizes ----


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_to_on_cuda_is_the_sum_in_place_bit_for_bit(cuda_sampler, dtype):
    """Forward bit for bit; gradients bit for bit under deterministic algorithms ("auto"
    then runs the gather sampler), except grid_sample's, whose CUDA backward accumulates
    with atomics in no fixed order and has no deterministic mode: within rounding."""
    exact = cuda_sampler != "gridsample"
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(exact)
    try:
        _check_add_to_on_cuda(dtype, exact)
    finally:
        torch.use_deterministic_algorithms(enabled)


def _check_add_to_on_cuda(dtype, exact):
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3).to("cuda", dtype)
    x = torch.randn(2, 16, 9, 11, device="cuda").to(dtype).requires_grad_()
    base = torch.randn(2, 16, 18, 22, device="cuda").to(dtype).requires_grad_()
    grad = torch.randn(2, 16, 18, 22, device="cuda").to(dtype)
    inputs = [x, base] + list(module.parameters())
    expected = base * 1 + module(x)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    add_to = base * 1
    out = module(x, add_to=add_to)
    assert out is add_to and torch.equal(out, expected)
    for g, e in zip(torch.autograd.grad(out, inputs, grad), expected_grads):
        if exact:
            assert torch.equal(g, e)
        else:
            tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
            assert max_error(g, e) <= tol * max(1.0, e.abs().max().item())


@on_cuda
@pytest.mark.parametrize("size", [(14, 18), (13, 18), (14, 17), (13, 17)])
@pytest.mark.parametrize("style, dyscope", [("lp", False), ("pl", True)])
def test_any_output_size_on_cuda_equals_cpu_float64(cuda_sampler, size, style, dyscope):
    """s*(H-1) < Ho <= s*H: CUDA equals the CPU result (gradients too), as size= and as add_to."""
    module = randomize(DySample(16, 2, style, 4, dyscope), std=0.3).double()
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    grad = torch.randn(2, 16, *size, dtype=torch.float64)
    with sampler("gridsample"):
        ref_out, ref_grads = outputs_and_grads(module, x, grad, size=size)
    module.cuda()
    out, grads = outputs_and_grads(module, x.cuda(), grad.cuda(), size=size)
    assert out.shape == (2, 16, *size)
    assert max_error(out, ref_out) < 1e-9
    for g, r in zip(on_device(grads), ref_grads):
        assert max_error(g, r) < 1e-9
    base = torch.randn(2, 16, *size, dtype=torch.float64, device="cuda")
    summed = module(x.cuda(), add_to=base.clone())
    assert max_error(summed, base.cpu() + ref_out) < 1e-9
    with pytest.raises(ValueError, match="does not fit input height 7"):
        module(x.cuda(), size=(12, size[1]))
    # zero offsets: exactly bilinear interpolation to that size
    zero_offsets(module)
    expected = F.interpolate(x.cuda(), size=size, mode="bilinear", align_corners=False)
    assert max_error(module(x.cuda(), size=size), expected) < 1e-12


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


# ---- the deterministic sampler choice, on any machine ----

CUDA_INPUT = types.SimpleNamespace(device=torch.device("cuda"))  # only its device is read


def test_sampler_choice_for_a_cuda_input(deterministic, monkeypatch):
    messages = []
    monkeypatch.setattr(backend, "_deterministic_choice_logged", False)
    monkeypatch.setattr(backend.logger, "info", lambda message, *a: messages.append(message))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    assert len(messages) == 1 and "runs the gather sampler" in messages[0]  # logged once
    with torch.no_grad():  # inference: grid_sample's forward is deterministic
        assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    with torch.inference_mode():
        assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    for explicit in ("gridsample", "gather"):  # an explicit choice is kept
        with sampler(explicit):
            assert backend.sampler_for(CUDA_INPUT) == explicit
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert backend.sampler_for(CUDA_INPUT) == "gather"
    torch.use_deterministic_algorithms(False)
    assert backend.sampler_for(CUDA_INPUT) == "gridsample"
    assert len(messages) == 1


def test_cpu_behaviour_is_unchanged_under_determinism(deterministic, monkeypatch):
    """A CPU input keeps "auto", the compiled kernel (deterministic: no atomics), with the same
    bits as without determinism."""
    assert native.load() is not None, native.status()  # scripts/install.sh builds it
    x = torch.randn(2, 16, 7, 9)
    assert backend.sampler_for(x) == "kernel"
    module = randomize(DySample(16, 2, "lp", 4, True), std=0.3)
    grad = torch.randn(2, 16, 14, 18)
    calls = []
    original = DySampleFunction.apply
    monkeypatch.setattr(DySampleFunction, "apply", lambda *a: calls.append(1) or original(*a))
    out, grads = outputs_and_grads(module, x, grad)
    assert calls == [1]
    torch.use_deterministic_algorithms(False)
    ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


def test_gather_sampler_backward_runs_under_determinism_on_cpu(deterministic):
    """The gather sampler's ops (index_select and its index_add_ backward) are allowed in
    deterministic mode and give the same bits as without it."""
    module = randomize(DySample(16, 2, "pl", 4, True), std=0.3)
    x = torch.randn(2, 16, 7, 9)
    grad = torch.randn(2, 16, 14, 18)
    with sampler("gather"):
        out, grads = outputs_and_grads(module, x, grad)
        torch.use_deterministic_algorithms(False)
        ref_out, ref_grads = outputs_and_grads(module, x, grad)
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
