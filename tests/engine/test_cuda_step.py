"""The sandwich step on CUDA: float16 AMP, skipped steps, torchvision's ROIAlign, memory, host syncs
and rescaling on the GPU. Marked `cuda` (`pytest -m cuda` runs only these) and skipped, with the
reason, where CUDA is absent. One test of host reads runs on every machine: on CPU no op waits,
but a value read on the host (`.item()`, `float(t)`) is visible to a dispatch mode, and on CUDA
each such read waits for the GPU.
"""
import collections
import warnings

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import HostReads, tiny_cfg, toy_batch
from tests.engine.test_sandwich_step import COHORT, RecordingSGD
from torch.utils._python_dispatch import TorchDispatchMode

from mutualnet_det.data.rescale import rescale_batch
from mutualnet_det.engine.cohort import CohortMember
from mutualnet_det.engine.precision import step_precision
from mutualnet_det.engine.sandwich_trainer import SandwichTrainer

needs_cuda = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by tools/gpu_check.sh)")]


def cuda_test(function):
    for mark in needs_cuda:
        function = mark(function)
    return function


def depth_cfg(depth, **overrides):
    """The tiny config with an R-`depth` backbone (R-50: bottleneck blocks, 256 channels after res2)."""
    return tiny_cfg(**{"MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth < 50 else 256,
                       **overrides})


def sandwich(model, optimizer, cohort=COHORT, precision=None, batch=None):
    return SandwichTrainer(model, [batch or toy_batch()] * 4, optimizer, cohort_of=lambda i: cohort,
                           precision=precision)


def run_steps(trainer, first_iteration, count, during=None):
    """`count` steps from `first_iteration`, the last one inside the context `during` (if any)."""
    with EventStorage(first_iteration):
        for offset in range(count):
            trainer.iter = first_iteration + offset
            with (during if during is not None and offset == count - 1 else _nothing()):
                trainer.run_step()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class OpCounts(TorchDispatchMode):
    """How often each operator ran (e.g. "torchvision.roi_align.default")."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_a_step_reads_as_many_values_on_the_host_at_depth_50_as_at_depth_18():
    """Host reads come from Detectron2's box logic (matching, sampling, metrics), none per layer:
    R-50 has 53 convolutions and BNs where R-18 has 20, and its step reads no more values."""
    counts = {}
    for depth in (18, 50):
        torch.manual_seed(0)
        model = build_model(depth_cfg(depth)).train()
        trainer = sandwich(model, RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0))
        reads = HostReads()
        run_steps(trainer, 0, 2, during=reads)  # the second step: nothing first-time left
        counts[depth] = reads.count
    assert counts[18] > 0 and counts[50] == counts[18], counts


@cuda_test
def test_cuda_step_synchronises_as_often_at_depth_50_as_at_depth_18():
    """Every synchronising CUDA call (torch.cuda.set_sync_debug_mode), not only value reads."""
    counts = {}
    for depth in (18, 50):
        torch.manual_seed(0)
        model = build_model(depth_cfg(depth, **{"MODEL.DEVICE": "cuda"})).train()
        trainer = sandwich(model, RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0))
        run_steps(trainer, 0, 1)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_steps(trainer, 1, 1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[depth] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[50] == counts[18], counts


@cuda_test
def test_a_float16_step_with_an_inf_gradient_is_skipped_and_leaves_the_weights():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.DEVICE": "cuda"})).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = RecordingSGD(params, lr=0.1)
    precision = step_precision(True, "cuda")
    assert precision.name == "float16" and precision.grad_scaler is not None
    precision.grad_scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 8)  # 2^16 may overflow a random model's first step
    trainer = sandwich(model, optimizer, precision=precision)
    run_steps(trainer, 0, 1)
    assert optimizer.steps == 1  # a finite step is taken
    before = [p.detach().clone() for p in params]
    scale = precision.grad_scaler.get_scale()
    handle = params[0].register_hook(lambda grad: grad * float("inf"))
    try:
        run_steps(trainer, 1, 1)
    finally:
        handle.remove()
    assert optimizer.steps == 1
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert precision.grad_scaler.get_scale() < scale


@cuda_test
def test_the_cuda_step_pools_with_torchvisions_roi_align(monkeypatch):
    """The gather (a CPU speed-up) stays off on CUDA: training pools with torchvision's kernel,
    forward and backward, for the boxes and the masks of every member."""
    import mutualnet_det.modeling.roi_align as module

    gathers = []
    gather_function = module.roi_align_by_gather
    monkeypatch.setattr(module, "roi_align_by_gather", lambda *a: gathers.append(1) or gather_function(*a))
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.DEVICE": "cuda"})).train()
    trainer = sandwich(model, RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0))
    ops = OpCounts()
    run_steps(trainer, 0, 1, during=ops)
    assert gathers == []
    assert ops.counts["torchvision.roi_align.default"] >= 2 * len(COHORT), ops.counts
    assert ops.counts["torchvision._roi_align_backward.default"] >= 2 * len(COHORT), ops.counts


@cuda_test
@pytest.mark.parametrize("distill", [False, True])
def test_peak_memory_of_four_members_is_close_to_one_members(distill):
    """Each member's graph is freed by its backward, and the teacher keeps only what it teaches:
    four members at the same width and scale peak at <= 1.15x one member."""
    from mutualnet_det.engine.distillation import InplaceDistillation

    peaks = {}
    for members in (1, 4):
        torch.manual_seed(0)
        model = build_model(depth_cfg(50, **{"MODEL.DEVICE": "cuda"})).train()
        optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        trainer = SandwichTrainer(model, [toy_batch(num_images=4, size=256)] * 4, optimizer,
                                  cohort_of=lambda i, n=members: [CohortMember(1.0, 1.0)] * n,
                                  distillation=InplaceDistillation("soft_labels", 1.0) if distill else None)
        run_steps(trainer, 0, 1)  # allocator warm-up, gradients allocated
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run_steps(trainer, 1, 1)
        peaks[members] = torch.cuda.max_memory_allocated()
        del trainer, optimizer, model
        torch.cuda.empty_cache()
    assert peaks[4] <= 1.15 * peaks[1], {k: v / 2**20 for k, v in peaks.items()}


@cuda_test
def test_rescaling_on_the_gpu_equals_rescaling_on_the_cpu():
    batch = toy_batch(num_images=2, size=96, seed=4)
    for scale in (0.8, 0.571):
        on_cpu = rescale_batch(batch, scale)
        on_gpu = rescale_batch(batch, scale, device="cuda")
        for cpu_input, gpu_input in zip(on_cpu, on_gpu):
            assert gpu_input["image"].device.type == "cuda"
            torch.testing.assert_close(gpu_input["image"].cpu().float(), cpu_input["image"].float(), atol=1.0, rtol=0)
            cpu_instances, gpu_instances = cpu_input["instances"], gpu_input["instances"]
            torch.testing.assert_close(gpu_instances.gt_boxes.tensor.cpu(), cpu_instances.gt_boxes.tensor)
            # area-downscaled masks: a pixel at exactly half coverage may round either way
            differing = (gpu_instances.gt_masks.tensor.cpu() != cpu_instances.gt_masks.tensor).float().mean()
            assert differing <= 0.005, float(differing)
            assert collections.Counter(gpu_instances.gt_classes.tolist()) == collections.Counter(
                cpu_instances.gt_classes.tolist())
