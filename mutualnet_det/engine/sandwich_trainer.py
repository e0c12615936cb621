"""`SandwichTrainer`: Detectron2's SimpleTrainer whose step trains a cohort of sub-networks."""
import contextlib
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..data.rescale import rescale_batch, scale_factors
from ..data.resumable_loader import iteration_seed
from ..width import set_width
from .cohort import CohortMember
from .distillation import InplaceDistillation, capture_forward
from .precision import StepPrecision


def unwrap(model):
    """The model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def clip_summed_gradient(parameters, max_norm_per_member: float, num_members: int) -> float:
    """Total L2 norm of the gradients (before clipping); with `max_norm_per_member` > 0 the
    gradients are scaled down to a total norm of at most max_norm_per_member x num_members."""
    parameters = [p for p in parameters if p.grad is not None]
    max_norm = max_norm_per_member * num_members if max_norm_per_member > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm)) if parameters else 0.0


class SandwichTrainer(SimpleTrainer):
    """One iteration = one batch, every cohort member's loss backpropagated, one optimizer step.

    cohort_of(iteration) returns the members (widest first). `distillation` (optional): the
    widest member teaches the others (engine/distillation.py). `precision`: float32, or autocast
    with Detectron2's AMP semantics (engine/precision.py). `clip_grad_norm_per_member` > 0: the
    summed gradient's norm is clipped at that value x the cohort size (alike for every method).
    `seed` (optional): the step's random draws (e.g. which proposals and RoIs are sampled) are
    seeded by (seed, rank, iteration), so a resumed run repeats them (the seed is checkpointed).
    """

    def __init__(self, model, data_loader, optimizer, cohort_of: Callable[[int], List[CohortMember]],
                 distillation: Optional[InplaceDistillation] = None, precision: Optional[StepPrecision] = None,
                 clip_grad_norm_per_member: float = 0.0, seed: Optional[int] = None):
        super().__init__(model, data_loader, optimizer)
        self.seed = seed
        self.cohort_of = cohort_of
        self.distillation = distillation
        self.precision = precision or StepPrecision(next(unwrap(model).parameters()).device.type)
        self.clip_grad_norm_per_member = clip_grad_norm_per_member

    def run_step(self):
        assert self.model.training, "[SandwichTrainer] model was changed to eval mode!"
        self._remember_buffers()
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.seed is not None:  # after the batch: a loader without workers seeds in this process
            torch.manual_seed(iteration_seed(self.seed, comm.get_rank(), self.iter))
        cohort = self.cohort_of(self.iter)
        model = unwrap(self.model)

        # Gradients of all members accumulate; the optimizer steps once (after the loop).
        self.optimizer.zero_grad()
        member_losses, teacher = [], None
        for index, member in enumerate(cohort):
            inputs = rescale_batch(data, member.resolution_scale, device=model.device)
            set_width(model, member.width)
            # Data-parallel: all-reduce gradients once, in the last member's backward.
            with self._gradient_sync(last=index == len(cohort) - 1):
                with self.precision.autocast():
                    loss_dict, captured = self._forward(inputs)
                    if self.distillation is not None and index > 0:
                        loss_dict = self.distillation.member_losses(model, loss_dict, teacher, captured,
                                                                    scale_factors(data, inputs))
                self.precision.backward(sum(loss_dict.values()))
            teacher = captured if index == 0 else teacher  # the widest member teaches the others
            member_losses.append((member, loss_dict))
        set_width(model, cohort[0].width)

        # Gradients at their true scale, once; their total norm (logged) before clipping.
        self.precision.unscale_(self.optimizer)
        grad_norm = clip_summed_gradient((p for group in self.optimizer.param_groups for p in group["params"]),
                                         self.clip_grad_norm_per_member, len(cohort))
        self.after_backward()
        self._write_cohort_metrics(member_losses, data_time, grad_norm, len(cohort))
        self.precision.step(self.optimizer)  # Detectron2's per-parameter clipping (if on) runs in here
        self.stepped_iter = self.iter  # the last good state, for a checkpoint if training fails later
        if hasattr(model, "bn_stats_bank"):  # e.g. from a periodic evaluation: stale for the new weights
            model.bn_stats_bank.clear()

    def _remember_buffers(self):
        """Copy the model's buffers (BN running statistics) before the step: the members'
        forwards update them, so a step that fails half-way can hand back the state before it."""
        self._buffers_before_step = {name: buffer.clone() for name, buffer in unwrap(self.model).named_buffers()
                                     if not name.startswith("bn_stats_bank.")}

    def restore_last_good_state(self) -> int:
        """Undo what a failed step changed (buffers; weights change only in the optimizer step,
        the step's last act) and return the last iteration whose step completed (-1: none)."""
        stepped = getattr(self, "stepped_iter", -1)
        if stepped != self.iter and getattr(self, "_buffers_before_step", None):
            buffers = dict(unwrap(self.model).named_buffers())
            with torch.no_grad():
                for name, value in self._buffers_before_step.items():
                    buffers[name].copy_(value)
        return stepped

    def _forward(self, inputs):
        """The member's loss dict, and what the distillation hooks captured (None without it)."""
        if self.distillation is None:
            return self.model(inputs), None
        with capture_forward(unwrap(self.model)) as captured:
            return self.model(inputs), captured

    def _gradient_sync(self, last: bool):
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _write_cohort_metrics(self, member_losses, data_time, grad_norm, num_members):
        """Detectron2's usual metrics for the widest member, plus the total gradient norm, whether
        it was clipped, and each member's total loss, width and resolution scale (member 0 is the
        widest)."""
        widest_member, widest_losses = member_losses[0]
        self._write_metrics({k: v for k, v in widest_losses.items() if k != "loss_distill"}, data_time)
        storage = get_event_storage()
        storage.put_scalar("grad_norm", grad_norm)  # every iteration, before any clipping
        clipped = 0 < self.clip_grad_norm_per_member * num_members < grad_norm
        storage.put_scalar("grad_clipped", float(clipped))  # its mean over a window = how often
        if (self.iter + 1) % self.gather_metric_period:
            return
        totals = []
        for index, (member, loss_dict) in enumerate(member_losses):
            total = float(sum(v.detach().float() for v in loss_dict.values()))
            totals.append(total)
            storage.put_scalar(f"cohort/member{index}_total_loss", total)
            storage.put_scalar(f"cohort/member{index}_width", member.width, smoothing_hint=False)
            storage.put_scalar(f"cohort/member{index}_resolution_scale", member.resolution_scale, smoothing_hint=False)
            if "loss_distill" in loss_dict:
                storage.put_scalar(f"cohort/member{index}_loss_distill", float(loss_dict["loss_distill"].detach()))
        if not np.isfinite(sum(totals)):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={self.iter}: "
                                     f"{[(m.label, t) for (m, _), t in zip(member_losses, totals)]}")
        storage.put_scalar("cohort/total_loss", sum(totals))

    def state_dict(self) -> Dict:
        state = {**super().state_dict(), **self.precision.state_dict()}
        if self.seed is not None:
            state["seed"] = self.seed
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        self.precision.load_state_dict(state_dict)
        if self.seed is not None and "seed" in state_dict:  # the run's seed, whatever SEED says now
            self.seed = state_dict["seed"]
            sampler = getattr(self.data_loader, "batch_sampler", None)
            if hasattr(sampler, "start_iter"):
                sampler.seed = self.seed
