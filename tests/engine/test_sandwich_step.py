"""The sandwich step against a manual computation, and the distillation term."""
import contextlib

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import tiny_cfg, toy_batch

from mutualnet_det import set_width
from mutualnet_det.data.rescale import rescale_batch, scale_factors
from mutualnet_det.engine.cohort import CohortMember
from mutualnet_det.engine.distillation import InplaceDistillation, capture_forward, distillation_loss
from mutualnet_det.engine.sandwich_trainer import SandwichTrainer, clip_summed_gradient
from mutualnet_det.width import get_width

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
    # the total gradient norm is logged before the step
    assert abs(storage.latest()["grad_norm"][0] - torch.linalg.vector_norm(torch.stack([g.norm() for g in manual]))) < 1e-4
    # each member's width and resolution scale are logged, the widest first
    latest = storage.latest()
    assert [latest[f"cohort/member{i}_width"][0] for i in range(3)] == [1.0, 0.6, 0.25]
    assert [latest[f"cohort/member{i}_resolution_scale"][0] for i in range(3)] == [1.0, 0.8, 0.6]


class CountingDDP(torch.nn.Module):
    """A stand-in for DistributedDataParallel: `.module`, a forward that delegates, and a `no_sync`
    context that records the model's width on entry; `syncing` says whether gradients would be
    all-reduced now (outside no_sync)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.no_sync_widths, self.syncing = [], True

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_widths.append(get_width(self.module))
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def test_gradients_are_all_reduced_once_in_the_last_members_backward():
    """Under data parallelism each member but the last runs forward and backward inside
    no_sync, so DDP all-reduces the accumulated gradients once, in the last member's backward."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    wrapper = CountingDDP(model)
    stem_weight = model.backbone.bottom_up.stem.conv1.weight  # every member's backward reaches it
    backward_syncing = []
    stem_weight.register_hook(lambda grad: backward_syncing.append(wrapper.syncing))
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(wrapper, [toy_batch()] * 2, optimizer, cohort_of=lambda iteration: COHORT)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    assert wrapper.no_sync_widths == [1.0, 0.6]
    assert backward_syncing == [False, False, True]
    assert optimizer.steps == 1


def test_a_step_forgets_statistics_banked_for_the_previous_weights():
    """A periodic evaluation during training banks calibrated BN statistics; after the next
    weight update they are stale, so the next evaluation (or the final checkpoint) must not use them."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    model.bn_stats_bank.store(model, 1.0, 1.0)
    assert (1.0, 1.0) in model.bn_stats_bank
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda iteration: COHORT[:1])
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    assert model.bn_stats_bank.configurations() == []


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
    trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda i: COHORT,
                              distillation=InplaceDistillation("add", 1.0))
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    latest = storage.latest()
    assert "cohort/member0_loss_distill" not in latest
    assert latest["cohort/member1_loss_distill"][0] > 0 and latest["cohort/member2_loss_distill"][0] > 0


def soft_label_step(model, batch, cohort):
    """One SandwichTrainer step in "soft_labels" mode; returns the gradients it stepped with."""
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(model, [batch] * 2, optimizer, cohort_of=lambda i: cohort,
                              distillation=InplaceDistillation("soft_labels", 1.0))
    torch.manual_seed(123)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    return optimizer.grads


def test_soft_labels_member_learns_its_class_from_the_teacher_only():
    """Manual reference: widest member's full ground-truth loss + the narrow member's losses
    without its ground-truth classification loss + KL(teacher || member)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch, cohort = toy_batch(), [CohortMember(1.0, 1.0), CohortMember(0.5, 0.8)]
    torch.manual_seed(123)
    with EventStorage():
        with capture_forward(model) as teacher:
            teacher_total = sum(model(batch).values())
        manual = [g if g is not None else torch.zeros_like(p)
                  for g, p in zip(torch.autograd.grad(teacher_total, params, allow_unused=True), params)]
        set_width(model, 0.5)
        inputs = rescale_batch(batch, 0.8)
        with capture_forward(model) as student:
            student_losses = model(inputs)
        kl = distillation_loss(model, teacher, student.features, scale_factors(batch, inputs))
        student_total = sum(v for k, v in student_losses.items() if k != "loss_cls") + kl
        for total, grad in zip(manual, torch.autograd.grad(student_total, params, allow_unused=True)):
            if grad is not None:
                total += grad
        cls_weight = model.roi_heads.box_predictor.cls_score.weight
        ground_truth_cls_grad = torch.autograd.grad(student_losses["loss_cls"], cls_weight)[0]
    set_width(model, 1.0)
    grads = soft_label_step(model, batch, cohort)
    for expected, actual in zip(manual, grads):
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-6)
    # and the member's ground-truth class loss would have changed the classifier's gradient
    assert ground_truth_cls_grad.abs().max() > 1e-4


def test_soft_labels_gradient_is_zero_for_a_member_identical_to_the_widest():
    """Two identical members: the classifier's gradient is the widest member's alone (the other
    member's KL to an identical teacher has zero gradient, and its label loss is dropped)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = toy_batch()
    cls_weight = model.roi_heads.box_predictor.cls_score.weight
    torch.manual_seed(123)
    with EventStorage():
        widest_cls_grad = torch.autograd.grad(model(batch)["loss_cls"], cls_weight)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = soft_label_step(model, batch, [CohortMember(1.0, 1.0), CohortMember(1.0, 1.0)])
    step_cls_grad = grads[next(i for i, p in enumerate(params) if p is cls_weight)]
    assert widest_cls_grad.abs().max() > 1e-4
    assert torch.allclose(step_cls_grad, widest_cls_grad, rtol=1e-4, atol=1e-7)


def test_summed_gradient_clipped_at_per_member_norm_times_cohort_size():
    first, second = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    first.grad, second.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # total norm 13 by hand
    assert clip_summed_gradient([first, second], 0.0, 3) == 13.0  # off: nothing changes
    assert torch.equal(second.grad, torch.tensor([12.0]))
    assert clip_summed_gradient([first, second], 5.0, 3) == 13.0  # 5 x 3 = 15 > 13: unchanged
    assert torch.equal(first.grad, torch.tensor([3.0, 4.0]))
    assert abs(clip_summed_gradient([first, second], 2.0, 3) - 13.0) < 1e-6  # 2 x 3 = 6 < 13: scaled
    assert torch.allclose(first.grad, torch.tensor([3.0, 4.0]) * 6 / 13, rtol=1e-5)
    assert torch.allclose(second.grad, torch.tensor([12.0]) * 6 / 13, rtol=1e-5)


def test_step_clips_and_logs_how_often():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda i: COHORT,
                              clip_grad_norm_per_member=1e-3)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    grad_norm = storage.latest()["grad_norm"][0]
    assert grad_norm > 3e-3 and storage.latest()["grad_clipped"][0] == 1.0
    stepped = torch.linalg.vector_norm(torch.stack([g.norm() for g in optimizer.grads if g is not None]))
    assert abs(stepped - 1e-3 * len(COHORT)) < 1e-6  # the optimizer stepped with the clipped gradient


def test_a_step_that_fails_half_way_hands_back_the_buffers_from_before_it():
    """The members' forwards update the BN running statistics before the optimizer step. When a
    step fails in its last member, restore_last_good_state puts back every buffer as it was before
    that step (the bank of calibrated statistics aside) and names the last completed iteration;
    after a completed step there is nothing to undo."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = SandwichTrainer(model, [toy_batch()] * 3, optimizer, cohort_of=lambda iteration: COHORT)

    def buffers():
        return {name: buffer.clone() for name, buffer in model.named_buffers() if not name.startswith("bn_stats_bank.")}

    assert trainer.restore_last_good_state() == -1  # no step yet: nothing to hand back
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
        after_first_step = buffers()
        assert trainer.restore_last_good_state() == 0
        assert all(torch.equal(after_first_step[name], value) for name, value in buffers().items())

        real_forward, calls = trainer._forward, []

        def forward_failing_in_the_last_member(inputs):
            calls.append(len(calls))
            if len(calls) == len(COHORT):
                raise FloatingPointError("a member's loss became NaN")
            return real_forward(inputs)

        trainer._forward = forward_failing_in_the_last_member
        trainer.iter = 1
        try:
            trainer.run_step()
        except FloatingPointError:
            pass
        changed = [name for name, value in buffers().items() if not torch.equal(after_first_step[name], value)]
        assert any("running_mean" in name for name in changed)  # two members ran: statistics moved
        model.bn_stats_bank.store(model, 0.5, 1.0)  # a bank entry made meanwhile is not a buffer to restore
        assert trainer.restore_last_good_state() == 0
        assert all(torch.equal(after_first_step[name], value) for name, value in buffers().items())
        assert (0.5, 1.0) in model.bn_stats_bank


class StubDetector(torch.nn.Module):
    """A slimmable 'detector' whose losses are known by hand: at width w and an input of side s,
    loss_a = w x weight and loss_b = s / 100 (plus loss_distill = 0.5 for members other than the
    widest when `distill` is on); it also records the width, the input side and one draw of
    torch.rand per forward."""

    def __init__(self, nan_at_width=None):
        super().__init__()
        from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d

        self.conv = SlimmableConv2d(3, 8, kernel_size=1)
        self.weight = torch.nn.Parameter(torch.tensor(2.0))
        self.width_range = (0.25, 1.0)
        self.device = torch.device("cpu")
        self.calls, self.nan_at_width, self.image_devices = [], nan_at_width, []

    def forward(self, batched_inputs):
        width, side = get_width(self), int(batched_inputs[0]["image"].shape[-1])
        self.image_devices.append(batched_inputs[0]["image"].device.type)
        self.calls.append((width, side, float(torch.rand(1))))
        loss_a = width * self.weight * (float("nan") if width == self.nan_at_width else 1.0)
        return {"loss_a": loss_a, "loss_b": torch.tensor(side / 100.0)}


STUB_BATCH = [{"image": torch.zeros(3, 50, 50, dtype=torch.uint8), "height": 50, "width": 50}]


def stub_trainer(model, seed=None, cohort=COHORT, **kwargs):
    optimizer = RecordingSGD([model.weight], lr=0.0)
    return SandwichTrainer(model, [STUB_BATCH] * 4, optimizer, cohort_of=lambda iteration: cohort, seed=seed, **kwargs)


def test_member_losses_and_totals_are_logged_by_hand_and_the_widest_width_comes_back():
    model = StubDetector()
    trainer = stub_trainer(model)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    # members (1.0, 1.0), (0.6, 0.8), (0.25, 0.6) on 50 px: sides 50, 40, 30
    assert [(w, s) for w, s, _ in model.calls] == [(1.0, 50), (0.6, 40), (0.25, 30)]
    latest = storage.latest()
    totals = [2.0 + 0.5, 1.2 + 0.4, 0.5 + 0.3]
    for index, total in enumerate(totals):
        assert abs(latest[f"cohort/member{index}_total_loss"][0] - total) < 1e-6
    assert abs(latest["cohort/total_loss"][0] - sum(totals)) < 1e-6
    assert abs(latest["total_loss"][0] - 2.5) < 1e-6 and abs(latest["loss_a"][0] - 2.0) < 1e-6  # the widest's, as Detectron2 logs
    assert abs(latest["grad_norm"][0] - (1.0 + 0.6 + 0.25)) < 1e-6 and latest["grad_clipped"][0] == 0.0
    assert 0 <= latest["data_time"][0] < 1.0  # the time spent waiting for the batch (a list here: none)
    assert get_width(model) == 1.0


def test_members_images_are_rescaled_on_the_models_device():
    """"meta" stands in for a GPU: the down-scaled members' images are made on the model's device
    (the widest member's batch is used as it comes)."""
    model = StubDetector()
    model.device = torch.device("meta")
    trainer = stub_trainer(model)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    assert model.image_devices == ["cpu", "meta", "meta"]


def test_cohort_metrics_only_every_gather_period_and_a_nan_member_stops_naming_it():
    import pytest

    model = StubDetector()
    trainer = stub_trainer(model)
    trainer.gather_metric_period = 3
    with EventStorage(0) as storage:
        for iteration in range(3):  # iterations 0 and 1: grad_norm only; 2 (the third): the cohort too
            trainer.iter = storage.iter = iteration
            trainer.run_step()
            assert ("cohort/total_loss" in storage.latest()) == (iteration == 2) and "grad_norm" in storage.latest()
        hints = storage.smoothing_hints()
        assert hints["cohort/member1_width"] is False and hints["cohort/member1_resolution_scale"] is False
    nan_model = StubDetector(nan_at_width=0.25)
    trainer = stub_trainer(nan_model)
    with EventStorage(0), pytest.raises(FloatingPointError, match=r"^Loss became infinite or NaN at iteration=0: "
                                                                  r"\[\('w1.000_s1.00', 2.5\), \('w0.600_s0.80', 1.600\d*\), "
                                                                  r"\('w0.250_s0.60', nan\)\]$"):
        trainer.iter = 0
        trainer.run_step()


def test_the_steps_draws_are_seeded_by_the_iteration_and_the_seed_is_checkpointed():
    """With a seed, a step's random draws depend only on (seed, rank, iteration): two trainers
    draw the same at the same iteration, another iteration or seed draws otherwise; the seed goes
    into the checkpointed state and a resumed trainer takes it back from there."""
    def draws(seed, iteration):
        model = StubDetector()
        trainer = stub_trainer(model, seed=seed)
        torch.manual_seed(1000 + iteration)  # whatever the global state was
        with EventStorage(iteration):
            trainer.iter = iteration
            trainer.run_step()
        return [r for _, _, r in model.calls], trainer

    first, trainer = draws(7, 3)
    assert draws(7, 3)[0] == first and draws(7, 4)[0] != first and draws(8, 3)[0] != first
    state = trainer.state_dict()
    assert state["seed"] == 7 and "seed" not in stub_trainer(StubDetector()).state_dict()
    resumed = stub_trainer(StubDetector(), seed=123)
    resumed.load_state_dict(state)
    assert resumed.seed == 7
    unseeded = stub_trainer(StubDetector())
    unseeded.load_state_dict(state)
    assert unseeded.seed is None


def test_a_model_in_eval_mode_is_refused():
    import pytest

    model = StubDetector()
    trainer = stub_trainer(model)  # (Detectron2's trainer puts the model in training mode)
    model.eval()
    with EventStorage(0), pytest.raises(AssertionError, match=r"^\[SandwichTrainer\] model was changed to eval mode!$"):
        trainer.run_step()


def test_a_resumed_trainer_hands_the_checkpointed_seed_to_its_batch_sampler():
    """The batch order is drawn from the seed too: loading a state with another seed sets it on a
    resumable batch sampler (one with start_iter); a loader without one is left alone."""
    from types import SimpleNamespace

    class Loader:
        def __init__(self, sampler):
            self.batch_sampler = sampler

        def __iter__(self):
            return iter([STUB_BATCH] * 4)

    state = stub_trainer(StubDetector(), seed=7).state_dict()
    resumable = SimpleNamespace(start_iter=0, seed=123)
    trainer = SandwichTrainer(StubDetector(), Loader(resumable), RecordingSGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0),
                              cohort_of=lambda iteration: COHORT, seed=123)
    trainer.load_state_dict(state)
    assert trainer.seed == 7 and resumable.seed == 7
    plain = SimpleNamespace(seed=123)  # no start_iter: not ours to reseed
    trainer = SandwichTrainer(StubDetector(), Loader(plain), RecordingSGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0),
                              cohort_of=lambda iteration: COHORT, seed=123)
    trainer.load_state_dict(state)
    assert trainer.seed == 7 and plain.seed == 123


def test_clipping_is_logged_only_above_the_per_member_norm_times_the_cohort_size():
    """Stub gradients by hand: d(loss)/d(weight) is the sum of the members' widths. Cohort 1.0,
    0.5: norm 1.5, exactly 0.75 x 2 (not above: not clipped); cohort 1.0, 0.6, 0.25: norm 1.85,
    below 1.0 x 3 (not clipped) though above 1.0 / 3."""
    from mutualnet_det.engine.cohort import CohortMember

    for cohort, per_member, norm in (([CohortMember(1.0), CohortMember(0.5)], 0.75, 1.5), (COHORT, 1.0, 1.85)):
        trainer = stub_trainer(StubDetector(), cohort=cohort, clip_grad_norm_per_member=per_member)
        with EventStorage(0) as storage:
            trainer.iter = 0
            trainer.run_step()
        assert abs(storage.latest()["grad_norm"][0] - norm) < 1e-6 and storage.latest()["grad_clipped"][0] == 0.0


def test_every_member_is_taught_by_the_widest():
    """The teacher handed to each narrower member's distillation is what the widest member's
    forward captured (not the member just before it)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    optimizer = RecordingSGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    distillation = InplaceDistillation("add", 1.0)
    trainer = SandwichTrainer(model, [toy_batch()] * 2, optimizer, cohort_of=lambda i: COHORT, distillation=distillation)
    captured_by_member, teachers = [], []
    real_forward, real_member_losses = trainer._forward, distillation.member_losses

    def forward(inputs):
        loss_dict, captured = real_forward(inputs)
        captured_by_member.append(captured)
        return loss_dict, captured

    def member_losses(model, loss_dict, teacher, *args):
        teachers.append(teacher)
        return real_member_losses(model, loss_dict, teacher, *args)

    trainer._forward, distillation.member_losses = forward, member_losses
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    assert len(captured_by_member) == 3 and len(teachers) == 2
    assert all(teacher is captured_by_member[0] for teacher in teachers)


def test_no_gradient_no_norm():
    parameter = torch.zeros(2, requires_grad=True)  # no .grad yet
    assert clip_summed_gradient([], 1.0, 3) == 0.0 and clip_summed_gradient([parameter], 1.0, 3) == 0.0
