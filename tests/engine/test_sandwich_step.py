"""The sandwich step against a manual computation, and the distillation term."""
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import tiny_cfg, toy_batch

from mutualnet_det import set_width
from mutualnet_det.data.rescale import rescale_batch
from mutualnet_det.engine.cohort import CohortMember
from mutualnet_det.engine.distillation import capture_forward, distillation_loss
from mutualnet_det.engine.sandwich_trainer import SandwichTrainer

COHORT = [CohortMember(1.0, 1.0), CohortMember(0.6, 0.8), CohortMember(0.25, 0.6)]


class RecordingSGD(torch.optim.SGD):
    """SGD that records how often it stepped and the gradients it stepped with."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.steps, self.grads = 0, None

    def step(self, closure=None):
        self.steps += 1
        self.grads = [None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def test_one_step_with_the_sum_of_member_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = toy_batch()

    torch.manual_seed(123)  # proposal sampling is random: replay the same draws in both runs
    manual = [torch.zeros_like(p) for p in params]
    with EventStorage():  # the ROI heads log sampling statistics
        for member in COHORT:
            set_width(model, member.width)
            losses = sum(model(rescale_batch(batch, member.resolution_scale)).values())
            for total, grad in zip(manual, torch.autograd.grad(losses, params, allow_unused=True)):
                if grad is not None:
                    total += grad

    optimizer = RecordingSGD(params, lr=0.0)
    trainer = SandwichTrainer(model, [batch] * 3, optimizer, cohort_of=lambda iteration: COHORT)
    torch.manual_seed(123)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    assert optimizer.steps == 1
    for expected, actual in zip(manual, optimizer.grads):
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-6)
    assert any(e.abs().sum() > 0 for e in manual)
    # a narrow member touches only the first channels of the stem; the widest touches all
    assert storage.latest()["cohort/member2_width"][0] == 0.25
    assert storage.latest()["cohort/member1_resolution_scale"][0] == 0.8


def test_distillation_term_is_zero_for_a_member_equal_to_the_widest():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = toy_batch()
    with EventStorage():
        with capture_forward(model) as teacher:
            model(batch)
        with capture_forward(model) as same:
            model(batch)
        zero = distillation_loss(model, teacher, same.features, [(1.0, 1.0)] * len(batch))
        set_width(model, 0.25)
        narrow_batch = rescale_batch(batch, 0.5)
        with capture_forward(model) as narrow:
            model(narrow_batch)
        positive = distillation_loss(model, teacher, narrow.features, [(0.5, 0.5)] * len(batch))
    assert teacher.proposal_boxes is not None and len(teacher.class_logits) == sum(len(b) for b in teacher.proposal_boxes)
    assert abs(zero.item()) < 1e-6
    assert positive.item() > 1e-4


def test_distillation_adds_a_loss_to_non_widest_members():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda i: COHORT, distill_weight=1.0)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    latest = storage.latest()
    assert "cohort/member0_loss_distill" not in latest
    assert latest["cohort/member1_loss_distill"][0] > 0 and latest["cohort/member2_loss_distill"][0] > 0
