"""Mixed precision in the sandwich step: bfloat16 autocast on CPU, float16 + GradScaler on CUDA."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import tiny_cfg, toy_batch
from tests.engine.test_sandwich_step import COHORT, RecordingSGD

from mutualnet_det import set_width
from mutualnet_det.bn_calibration import calibrate_bn
from mutualnet_det.data.rescale import rescale_batch
from mutualnet_det.engine.distillation import InplaceDistillation
from mutualnet_det.engine.precision import StepPrecision, step_precision
from mutualnet_det.engine.sandwich_trainer import SandwichTrainer
from mutualnet_det.engine.trainer import MutualNetTrainer

# bfloat16 keeps 8 significant bits; both sides below run the same bfloat16 ops in the same order,
# so they differ only by float32 accumulation order: rtol 1e-3 (and atol 1e-5 for near-zero grads).
BF16_RTOL, BF16_ATOL = 1e-3, 1e-5


def manual_member_gradient_sum(model, batch, params, device_type, dtype, scale=1.0):
    total = [torch.zeros_like(p) for p in params]
    with EventStorage():
        for member in COHORT:
            set_width(model, member.width)
            with torch.autocast(device_type, dtype=dtype):
                losses = sum(model(rescale_batch(batch, member.resolution_scale)).values())
            for accumulated, grad in zip(total, torch.autograd.grad(losses * scale, params, allow_unused=True)):
                if grad is not None:
                    accumulated += grad / scale
    return total


def amp_step(model, batch, precision, distillation=None):
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(model, [batch] * 2, optimizer, cohort_of=lambda i: COHORT,
                              distillation=distillation, precision=precision)
    torch.manual_seed(123)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    return optimizer, storage


def test_bfloat16_step_equals_the_manual_sum_of_member_gradients_under_autocast():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = toy_batch()
    torch.manual_seed(123)
    manual = manual_member_gradient_sum(model, batch, params, "cpu", torch.bfloat16)
    optimizer, _ = amp_step(model, batch, step_precision(True, "cpu"))
    assert optimizer.steps == 1
    for expected, actual in zip(manual, optimizer.grads):
        assert torch.allclose(actual, expected, rtol=BF16_RTOL, atol=BF16_ATOL)
    assert any(e.abs().sum() > 0 for e in manual)


def test_bfloat16_autocast_really_runs_in_bfloat16():
    """The same step in float32 gives measurably different gradients (so the test above is not
    comparing two float32 runs)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = toy_batch()
    bf16, _ = amp_step(model, batch, step_precision(True, "cpu"))
    fp32, _ = amp_step(model, batch, step_precision(False, "cpu"))
    differences = [(a - b).abs().max() for a, b in zip(bf16.grads, fp32.grads) if a is not None]
    assert max(differences) > 1e-4


@pytest.mark.parametrize("mode", ["soft_labels", "add"])
def test_distillation_under_bfloat16_autocast(mode):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    optimizer, storage = amp_step(model, toy_batch(), step_precision(True, "cpu"), InplaceDistillation(mode, 1.0))
    latest = storage.latest()
    assert latest["cohort/member1_loss_distill"][0] > 0 and torch.isfinite(torch.tensor(latest["grad_norm"][0]))
    assert all(g is None or torch.isfinite(g).all() for g in optimizer.grads)


def test_amp_training_banks_float32_statistics(tmp_path):
    cfg = tiny_cfg(**{"OUTPUT_DIR": str(tmp_path), "SOLVER.MAX_ITER": 2, "DATASETS.TEST": (),
                      "SOLVER.AMP.ENABLED": True, "MUTUALNET.TEST.WIDTHS": (1.0, 0.25),
                      "MUTUALNET.TEST.RESOLUTION_SCALES": (1.0,)})
    trainer = MutualNetTrainer(cfg)
    assert trainer._trainer.precision.name == "bfloat16" and trainer._trainer.precision.grad_scaler is None
    trainer.train()
    model = trainer.model
    assert model.bn_stats_bank.configurations() == [(0.25, 1.0), (1.0, 1.0)]
    # calibration disables autocast: called inside a bfloat16 autocast region (as from an AMP
    # training loop) it banks the statistics float32 calibration banks (with bfloat16 convolutions
    # they would differ by about bfloat16's resolution, 1e-3 relative)
    batches = [toy_batch(seed=seed) for seed in (1, 2)]
    banked = {}
    for autocast_on in (False, True):
        torch.manual_seed(5)  # the same RoI sampling in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_on):
            calibrate_bn(model, iter(batches), 0.25, 1.0, num_batches=2)
        banked[autocast_on] = dict(model.bn_stats_bank.bank["w0p2500_s1p0000"])
    assert banked[True].keys() == banked[False].keys()
    for name, float32_stats in banked[False].items():
        assert torch.allclose(banked[True][name], float32_stats, rtol=1e-5, atol=1e-6), name


def test_grad_scaler_skips_the_step_on_inf_and_unscales_once():
    """The float16 path's scaler logic (run here on CPU): gradients are unscaled before the step,
    an inf gradient skips the optimizer step and lowers the scale."""
    layer = torch.nn.Linear(2, 1)
    optimizer = RecordingSGD(layer.parameters(), lr=0.1)
    precision = StepPrecision("cpu", torch.bfloat16, use_grad_scaler=True)
    scale = precision.grad_scaler.get_scale()
    precision.backward(layer(torch.ones(1, 2)).sum())
    precision.unscale_(optimizer)
    assert torch.allclose(layer.weight.grad, torch.ones(1, 2))  # true gradient, not scale x gradient
    precision.step(optimizer)
    assert optimizer.steps == 1
    before = layer.weight.detach().clone()
    optimizer.zero_grad()
    precision.backward(layer(torch.tensor([[float("inf"), 1.0]])).sum())
    precision.unscale_(optimizer)
    precision.step(optimizer)
    assert optimizer.steps == 1 and torch.equal(layer.weight, before)  # skipped
    assert precision.grad_scaler.get_scale() < scale


def test_scaled_sandwich_step_clips_and_logs_the_true_gradient():
    """The CUDA float16 path's scaler, run on CPU in float32 (a GradScaler with a real scale, 2^10):
    the step unscales before the norm and the clipping, so grad_norm and the clipped gradients the
    optimizer steps with are the unscaled step's (scaling by a power of two is exact in float32).
    The scaler's state goes through the trainer's state_dict into a new trainer."""
    def step(precision):
        torch.manual_seed(0)
        model = build_model(tiny_cfg()).train()
        optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda i: COHORT,
                                  precision=precision, clip_grad_norm_per_member=1e-3)
        torch.manual_seed(123)
        with EventStorage(0) as storage:
            trainer.iter = 0
            trainer.run_step()
        return trainer, optimizer, storage.latest()

    scaled_precision = StepPrecision("cpu", use_grad_scaler=True)
    scaler_state = scaled_precision.grad_scaler.state_dict()
    scaled_precision.grad_scaler.load_state_dict(dict(scaler_state, scale=2.0 ** 10))
    _, plain, plain_metrics = step(StepPrecision("cpu"))
    trainer, scaled, scaled_metrics = step(scaled_precision)
    assert scaled.steps == plain.steps == 1
    assert plain_metrics["grad_norm"][0] > 3e-3 and scaled_metrics["grad_clipped"][0] == 1.0
    assert scaled_metrics["grad_norm"][0] == pytest.approx(plain_metrics["grad_norm"][0], rel=1e-5)
    for expected, actual in zip(plain.grads, scaled.grads):
        assert (expected is None) == (actual is None)
        if expected is not None:
            assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-9)
    # the scale survives the step (finite gradients, growth after 2000 steps) and a resume
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == 2.0 ** 10 and state["grad_scaler"]["_growth_tracker"] == 1
    resumed = SandwichTrainer(trainer.model, [toy_batch()], RecordingSGD(scaled.param_groups[0]["params"], lr=0.0),
                              cohort_of=lambda i: COHORT, precision=StepPrecision("cpu", use_grad_scaler=True))
    resumed.load_state_dict(state)
    assert resumed.precision.grad_scaler.state_dict() == state["grad_scaler"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 autocast with GradScaler needs CUDA")
def test_float16_step_on_cuda_equals_the_manual_sum_of_member_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.DEVICE": "cuda"})).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = toy_batch()
    precision = step_precision(True, "cuda")
    assert precision.name == "float16" and precision.grad_scaler is not None
    precision.grad_scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 8)  # 2^16 may overflow a random model's first step
    torch.manual_seed(123)
    manual = manual_member_gradient_sum(model, batch, params, "cuda", torch.float16,
                                        scale=precision.grad_scaler.get_scale())
    optimizer, _ = amp_step(model, batch, precision)
    assert optimizer.steps == 1  # the scaler did not skip it
    for expected, actual in zip(manual, optimizer.grads):
        assert torch.allclose(actual, expected, rtol=1e-2, atol=1e-4)
    assert any(e.abs().sum() > 0 for e in manual)


def test_amp_dtype_chooses_the_autocast_dtype_and_the_scaler():
    """MUTUALNET.TRAIN.AMP_DTYPE: "" is the device's usual AMP, bfloat16 runs without a scaler
    on CUDA too, float16 on the CPU and unknown names are refused."""
    from mutualnet_det.config import validate_mutualnet_config

    assert step_precision(False, "cuda", "bfloat16").name == "float32"
    cpu = step_precision(True, "cpu", "")
    assert (cpu.name, cpu.grad_scaler) == ("bfloat16", None)
    cuda_bf16 = step_precision(True, "cuda", "bfloat16")
    assert (cuda_bf16.device_type, cuda_bf16.name, cuda_bf16.grad_scaler) == ("cuda", "bfloat16", None)
    with pytest.raises(ValueError, match="float16 needs CUDA"):
        step_precision(True, "cpu", "float16")
    with pytest.raises(ValueError, match="AMP_DTYPE='half' is unknown"):
        validate_mutualnet_config(tiny_cfg(**{"MUTUALNET.TRAIN.AMP_DTYPE": "half"}))
