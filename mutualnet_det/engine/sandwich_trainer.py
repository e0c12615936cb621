"""`SandwichTrainer`: Detectron2's SimpleTrainer whose step trains a cohort of sub-networks."""
import contextlib
import time
from typing import Callable, List

import numpy as np
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from ..data.rescale import rescale_batch, scale_factors
from ..width import set_width
from .cohort import CohortMember
from .distillation import capture_forward, distillation_loss


def unwrap(model):
    """The model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


class SandwichTrainer(SimpleTrainer):
    """One iteration = one batch, every cohort member's loss backpropagated, one optimizer step.

    cohort_of(iteration) returns the members (widest first); with `distill_weight` > 0 the other
    members also match the widest member's box class distributions (see engine/distillation.py).
    """

    def __init__(self, model, data_loader, optimizer, cohort_of: Callable[[int], List[CohortMember]],
                 distill_weight: float = 0.0):
        super().__init__(model, data_loader, optimizer)
        self.cohort_of = cohort_of
        self.distill_weight = distill_weight

    def run_step(self):
        assert self.model.training, "[SandwichTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        cohort = self.cohort_of(self.iter)
        model = unwrap(self.model)

        # Gradients of all members accumulate; the optimizer steps once (after the loop).
        self.optimizer.zero_grad()
        distill = self.distill_weight > 0
        member_losses, teacher = [], None
        for index, member in enumerate(cohort):
            inputs = rescale_batch(data, member.resolution_scale)
            set_width(model, member.width)
            last = index == len(cohort) - 1
            # Data-parallel: all-reduce gradients once, in the last member's backward.
            with self.model.no_sync() if not last and hasattr(self.model, "no_sync") else contextlib.nullcontext():
                with capture_forward(model) if distill else contextlib.nullcontext() as captured:
                    loss_dict = self.model(inputs)
                if distill and index == 0:
                    teacher = captured  # the widest member teaches the others
                elif distill:
                    loss_dict["loss_distill"] = self.distill_weight * distillation_loss(
                        model, teacher, captured.features, scale_factors(data, inputs))
                sum(loss_dict.values()).backward()
            member_losses.append((member, loss_dict))
        set_width(model, cohort[0].width)

        self.after_backward()
        self._write_cohort_metrics(member_losses, data_time)
        self.optimizer.step()

    def _write_cohort_metrics(self, member_losses, data_time):
        """Detectron2's usual metrics for the widest member, plus each member's total loss,
        width and resolution scale (member 0 is the widest, the last the narrowest)."""
        widest_member, widest_losses = member_losses[0]
        self._write_metrics({k: v for k, v in widest_losses.items() if k != "loss_distill"}, data_time)
        if (self.iter + 1) % self.gather_metric_period:
            return
        storage = get_event_storage()
        totals = []
        for index, (member, loss_dict) in enumerate(member_losses):
            total = float(sum(v.detach() for v in loss_dict.values()))
            totals.append(total)
            storage.put_scalar(f"cohort/member{index}_total_loss", total)
            storage.put_scalar(f"cohort/member{index}_width", member.width, smoothing_hint=False)
            storage.put_scalar(f"cohort/member{index}_resolution_scale", member.resolution_scale, smoothing_hint=False)
            if "loss_distill" in loss_dict:
                storage.put_scalar(f"cohort/member{index}_loss_distill", float(loss_dict["loss_distill"]))
        if not np.isfinite(sum(totals)):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={self.iter}: "
                                     f"{[(m.label, t) for (m, _), t in zip(member_losses, totals)]}")
        storage.put_scalar("cohort/total_loss", sum(totals))
