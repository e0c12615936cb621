"""BN calibration reproduces statistics computed directly; the bank round-trips checkpoints."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.data import DatasetCatalog
from helpers import tiny_cfg

from mutualnet_det.bn_calibration import BNStatsBank, calibrate_bn, use_configuration
from mutualnet_det.data.rescale import rescale_batch
from mutualnet_det.modeling.slimmable_ops import SlimmableBatchNorm2d, SlimmableConv2d


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SlimmableConv2d(3, 16, kernel_size=3, padding=1, bias=False, norm=SlimmableBatchNorm2d(16))
        self.width_range = (0.25, 1.0)
        self.bn_stats_bank = BNStatsBank()

    def forward(self, batched_inputs):
        return self.conv(torch.stack([x["image"].float() for x in batched_inputs]))


def batches(seed=0, count=3):
    generator = torch.Generator().manual_seed(seed)
    return [[{"image": torch.rand(3, 20, 20, generator=generator) * 50 + 10 * i} for i in range(2)] for _ in range(count)]


def direct_stats(model, data, width):
    """Mean of per-batch means and of per-batch unbiased variances of the BN input."""
    channels = model.conv.out_rule.at(width)
    means, variances = [], []
    for batch in data:
        x = torch.stack([item["image"] for item in batch])
        y = F.conv2d(x, model.conv.weight[:channels], padding=1)
        means.append(y.mean(dim=(0, 2, 3)))
        variances.append(y.var(dim=(0, 2, 3), unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("width,scale", [(1.0, 1.0), (0.5, 0.6), (0.25, 1.0)])
def test_calibration_reproduces_direct_statistics(width, scale):
    torch.manual_seed(0)
    model = ConvBN()
    data = [rescale_batch(batch, scale) for batch in batches()]  # inputs at the configuration's size
    model.conv.norm.running_mean.fill_(7.0)  # stale statistics must be replaced, not averaged in
    assert calibrate_bn(model, iter(data), width, scale, num_batches=3)
    mean, var = direct_stats(model, data, width)
    channels = len(mean)
    assert torch.allclose(model.conv.norm.running_mean[:channels], mean, atol=1e-4)
    assert torch.allclose(model.conv.norm.running_var[:channels], var, rtol=1e-4)
    assert model.conv.norm.momentum == 0.1 and model.training  # restored
    assert (width, scale) in model.bn_stats_bank


def test_calibration_after_training_forgets_the_training_statistics():
    """A model that has trained (running statistics moved by 20 batches, num_batches_tracked 20):
    calibrating width 0.5 must start from reset statistics, so the cumulative average weighs the
    calibration batches only (without the reset, the first batch would get weight 1/21 against
    the training statistics)."""
    torch.manual_seed(0)
    model = ConvBN()
    model.train()
    for batch in batches(seed=1, count=20):
        model(batch)
    norm = model.conv.norm
    assert int(norm.num_batches_tracked) == 20 and norm.running_mean.abs().min() > 0.1
    data = batches(seed=2)
    assert calibrate_bn(model, iter(data), 0.5, 1.0, num_batches=3)
    mean, var = direct_stats(model, data, 0.5)
    assert len(mean) == 8
    entry = model.bn_stats_bank.bank["w0p5000_s1p0000"]
    for stats in ((norm.running_mean[:8], norm.running_var[:8]),
                  (entry["conv.norm.running_mean"][:8], entry["conv.norm.running_var"][:8])):
        assert torch.allclose(stats[0], mean, atol=1e-4)
        assert torch.allclose(stats[1], var, rtol=1e-4)


def test_bank_applies_each_configuration_and_survives_a_checkpoint():
    torch.manual_seed(0)
    model = ConvBN()
    data = batches()
    calibrate_bn(model, iter(data), 0.5, 1.0, 3)
    stats_half = model.conv.norm.running_mean.clone()
    calibrate_bn(model, iter(data), 1.0, 0.6, 3)
    assert not torch.equal(model.conv.norm.running_mean, stats_half)

    restored = ConvBN()
    restored.load_state_dict(model.state_dict())  # strict: bank entries are the bank's own
    assert restored.bn_stats_bank.configurations() == [(0.5, 1.0), (1.0, 0.6)]
    assert use_configuration(restored, 0.5, 1.0) == "bank"
    assert torch.equal(restored.conv.norm.running_mean, stats_half)
    with pytest.raises(ValueError, match="No calibrated BN statistics for width 0.25"):
        use_configuration(restored, 0.25, 1.0)
    assert use_configuration(restored, 0.25, 1.0, lambda scale: iter(data), num_batches=2) == "calibrated"


@pytest.fixture(scope="module")
def syncbn_ranks(tmp_path_factory):
    """What each of two gloo processes of tests/syncbn_worker.py recorded (one run per module)."""
    folder = tmp_path_factory.mktemp("syncbn")
    worker = os.path.join(os.path.dirname(__file__), "syncbn_worker.py")
    run = subprocess.run([sys.executable, worker, str(folder)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_syncbn_calibration_in_two_processes_gives_global_cumulative_statistics(syncbn_ranks):
    """Two gloo processes with different batch sizes and distributions: the banked statistics are
    the average over batches of the global (all-rank, pooled) batch mean and unbiased variance,
    at full width and on a channel slice, on both ranks."""
    ranks = syncbn_ranks
    assert ranks[0]["world_size"] == 2
    for width in (1.0, 0.5):
        means, variances = [], []
        for batch_index in range(len(ranks[0][width]["bn_inputs"])):
            pooled = torch.cat([ranks[r][width]["bn_inputs"][batch_index] for r in range(2)])
            means.append(pooled.mean(dim=(0, 2, 3)))
            variances.append(pooled.var(dim=(0, 2, 3), unbiased=True))
        mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
        assert len(mean) == (16 if width == 1.0 else 8)
        for rank in ranks:
            assert torch.allclose(rank[width]["mean"], mean, rtol=1e-4, atol=1e-4), width
            assert torch.allclose(rank[width]["var"], var, rtol=1e-4), width
    # plain BN: both ranks bank the same statistics, the mean over ranks of each rank's own
    # (the average over its batches of the batch mean and unbiased variance)
    own = [(torch.stack([b.mean(dim=(0, 2, 3)) for b in rank[1.0]["bn_inputs"]]).mean(0),
            torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in rank[1.0]["bn_inputs"]]).mean(0)) for rank in ranks]
    assert torch.equal(ranks[0]["plain"]["mean"], ranks[1]["plain"]["mean"])
    assert torch.equal(ranks[0]["plain"]["var"], ranks[1]["plain"]["var"])
    assert torch.allclose(ranks[0]["plain"]["mean"], (own[0][0] + own[1][0]) / 2, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ranks[0]["plain"]["var"], (own[0][1] + own[1][1]) / 2, rtol=1e-4)
    # a bfloat16 input under autocast: float32 statistics of the (bfloat16-valued) pooled input
    pooled = torch.cat([rank["amp"]["bn_input"] for rank in ranks])
    for rank in ranks:
        assert rank["amp"]["output_dtype"] == torch.bfloat16
        assert torch.allclose(rank["amp"]["mean"], pooled.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
        assert torch.allclose(rank["amp"]["var"], pooled.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_syncbn_training_step_in_two_processes_equals_batch_norm_of_the_pooled_batch(syncbn_ranks, dtype):
    """SyncBN on a channel slice (8 of 16) over two ranks with 2 and 3 images against torch's
    batch norm of the two batches concatenated in one process: outputs, input gradients (of the
    sum of both ranks' losses), weight and bias gradients (the ranks' shares sum to the pooled
    one) and running statistics. No value is read on the host, and autograd keeps no float32 copy
    of a bfloat16 input for backward."""
    steps = [rank["step"][dtype] for rank in syncbn_ranks]
    x = torch.cat([step["x"].float() for step in steps]).requires_grad_()
    upstream = torch.cat([step["upstream"].float() for step in steps])
    weight = steps[0]["weight"][:8].clone().requires_grad_()
    bias = steps[0]["bias"][:8].clone().requires_grad_()
    running_mean, running_var = torch.zeros(8), torch.ones(8)
    output = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=1e-5)
    (output * upstream).sum().backward()
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)  # bfloat16: 8 significant bits
    outputs = torch.split(output.detach(), [2, 3])
    grads = torch.split(x.grad, [2, 3])
    for step, expected_output, expected_grad in zip(steps, outputs, grads):
        assert step["output"].dtype == step["grad_x"].dtype == dtype
        assert torch.allclose(step["output"].float(), expected_output, rtol=rtol, atol=atol)
        assert torch.allclose(step["grad_x"].float(), expected_grad, rtol=rtol, atol=atol)
        assert torch.allclose(step["running_mean"][:8], running_mean, rtol=1e-4, atol=1e-4)
        assert torch.allclose(step["running_var"][:8], running_var, rtol=1e-3 if dtype == torch.float32 else 2e-2)
        assert torch.equal(step["running_mean"][8:], torch.zeros(8))  # channels not run: untouched
        assert step["grad_weight"][8:].abs().sum() == 0
        assert step["host_reads"] == 0
    grad_weight = steps[0]["grad_weight"][:8] + steps[1]["grad_weight"][:8]
    grad_bias = steps[0]["grad_bias"][:8] + steps[1]["grad_bias"][:8]
    assert torch.allclose(grad_weight, weight.grad, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 0.1)
    assert torch.allclose(grad_bias, bias.grad, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 0.1)
    if dtype == torch.bfloat16:
        for step in steps:
            input_size = step["x"].numel()
            kept = [(saved_dtype, size) for saved_dtype, size in step["saved"] if size == input_size]
            assert (torch.bfloat16, input_size) in kept and (torch.float32, input_size) not in kept, kept


def test_calibration_images_have_the_evaluated_sizes():
    """Calibration inputs for scale s are the test-time resize times s, as the sweep evaluates,
    not the training resize times s."""
    from detectron2.data import build_detection_test_loader

    from mutualnet_det.bn_calibration import build_calibration_loader
    from mutualnet_det.data.rescale import scaled_test_cfg

    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TRAIN": (64,), "INPUT.MAX_SIZE_TRAIN": 64,
                      "INPUT.MIN_SIZE_TEST": 96, "INPUT.MAX_SIZE_TEST": 96})
    for scale in (1.0, 0.6):
        calibration = next(iter(build_calibration_loader(cfg, scale)))
        evaluated = next(iter(build_detection_test_loader(scaled_test_cfg(cfg, scale), cfg.DATASETS.TEST[0])))
        sizes = {tuple(item["image"].shape[-2:]) for item in calibration}
        assert sizes == {tuple(evaluated[0]["image"].shape[-2:])} == {(round(96 * scale),) * 2}
        assert all(len(item["instances"]) > 0 for item in calibration)  # ground truth for train mode


def test_a_sweep_loads_the_training_records_once_and_reads_only_what_it_needs(monkeypatch):
    """A 2-scale x 2-width calibration: the training records are loaded once, only
    len(TEST.WIDTHS) x NUM_BATCHES x IMS_PER_BATCH images are ever read, and a scale's loader is
    gone once the next scale starts."""
    import gc
    import weakref

    from detectron2.data import DatasetMapper

    import mutualnet_det.bn_calibration as calibration
    from mutualnet_det.bn_calibration import calibrate_bn, calibration_batches
    from mutualnet_det.engine.trainer import MutualNetTrainer

    cfg = tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (1.0, 0.5), "MUTUALNET.TEST.RESOLUTION_SCALES": (1.0, 0.5),
                      "MUTUALNET.BN_CALIB.NUM_BATCHES": 2})
    loads, read = [], []
    real_load, real_map = calibration.get_detection_dataset_dicts, DatasetMapper.__call__
    monkeypatch.setattr(calibration, "get_detection_dataset_dicts", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(DatasetMapper, "__call__", lambda self, record: read.append(record["file_name"]) or real_map(self, record))
    model = MutualNetTrainer.build_model(cfg)
    batches = calibration_batches(cfg)
    first_loader = None
    for width, scale in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)):  # scale by scale, as the hook does
        if first_loader is None:
            first_loader = weakref.ref(batches(scale))
        assert calibrate_bn(model, batches(scale), width, scale, 2)
        if scale == 0.5:
            gc.collect()
            assert first_loader() is None  # scale 1.0's loader (and its workers) are gone
    assert len(loads) == 1
    needed = 2 * 2 * cfg.SOLVER.IMS_PER_BATCH
    assert len(set(read)) <= needed < len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))
    assert sorted(model.bn_stats_bank.configurations()) == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]


def test_bank_keys_entries_and_state_dict_by_hand():
    """Keys name width and scale with 4 decimals; entries are CPU copies detached from the layers;
    the state dict has one entry per (configuration, BN layer, statistic) under the bank's prefix,
    and loading replaces whatever the bank held."""
    from mutualnet_det.bn_calibration import bn_layers, configuration_key

    assert configuration_key(0.25, 0.6) == "w0p2500_s0p6000"
    assert configuration_key(1, 0.857142857) == "w1p0000_s0p8571"
    model = ConvBN()
    norm = model.conv.norm
    with torch.no_grad():
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(2.0)
    bank = model.bn_stats_bank
    bank.store(model, 0.5, 0.6)
    bank.store(model, 0.25, 1.0)
    assert bank.configurations() == [(0.25, 1.0), (0.5, 0.6)] and (0.5, 0.6) in bank and (0.5, 1.0) not in bank
    entry = bank.bank["w0p5000_s0p6000"]
    assert set(entry) == {"conv.norm.running_mean", "conv.norm.running_var"}
    norm.running_mean.fill_(7.0)  # the stored copy does not follow the layer
    assert torch.equal(entry["conv.norm.running_mean"], torch.full((16,), 3.0)) and not entry["conv.norm.running_mean"].requires_grad
    state = model.state_dict()
    assert torch.equal(state["bn_stats_bank.w0p5000_s0p6000.conv.norm.running_var"], torch.full((16,), 2.0))
    assert sorted(k for k in state if k.startswith("bn_stats_bank.")) == [
        f"bn_stats_bank.{key}.conv.norm.{stat}" for key in ("w0p2500_s1p0000", "w0p5000_s0p6000")
        for stat in ("running_mean", "running_var")]
    other = ConvBN()
    other.bn_stats_bank.store(other, 1.0, 1.0)  # replaced by the load
    other.load_state_dict(state)
    assert other.bn_stats_bank.configurations() == [(0.25, 1.0), (0.5, 0.6)]
    assert other.bn_stats_bank.apply(other, 0.5, 0.6) and torch.equal(other.conv.norm.running_mean, torch.full((16,), 3.0))
    assert not other.bn_stats_bank.apply(other, 1.0, 1.0)
    bank.clear()
    assert bank.configurations() == [] and list(bn_layers(model)) == ["conv.norm"]


def test_only_layers_with_running_statistics_are_calibrated():
    from detectron2.layers import FrozenBatchNorm2d

    from mutualnet_det.bn_calibration import bn_layers

    model = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False), FrozenBatchNorm2d(4),
                          nn.GroupNorm(2, 4), nn.SyncBatchNorm(4))
    assert list(bn_layers(model)) == ["0", "4"]


class ConvGN(ConvBN):
    def __init__(self):
        super().__init__()
        self.conv.norm = nn.GroupNorm(4, 16)


def test_without_bn_nothing_to_calibrate_and_the_width_is_set():
    model = ConvGN()
    assert calibrate_bn(model, iter([]), 0.5, 1.0, num_batches=2) is False
    assert model.conv.width == 0.5 and model.bn_stats_bank.configurations() == []
    assert use_configuration(model, 0.25, 1.0) == "none-needed" and model.conv.width == 0.25


def test_calibration_of_a_model_in_eval_returns_it_in_eval_with_its_momentum_and_reports_what_is_missing():
    model = ConvBN().eval()
    model.conv.norm.momentum = 0.3
    assert calibrate_bn(model, iter(batches()), 0.5, 1.0, num_batches=2)
    assert not model.training and model.conv.norm.momentum == 0.3 and model.conv.width == 0.5
    assert int(model.conv.norm.num_batches_tracked) == 2  # reset, then two batches counted
    with pytest.raises(ValueError, match=r"^No calibrated BN statistics for width 1.0, resolution scale 0.6 in "
                                         r"this checkpoint \(banked: \[\(0.5, 1.0\)\]\), and no training data was "
                                         r"given to calibrate them \(DATASETS.TRAIN\)$"):
        use_configuration(model, 1.0, 0.6)
    requested = []
    assert use_configuration(model, 1.0, 0.6, lambda scale: requested.append(scale) or iter(batches()), num_batches=1) == "calibrated"
    assert requested == [0.6] and (1.0, 0.6) in model.bn_stats_bank and model.conv.width == 1.0
    bare = ConvBN()
    del bare.bn_stats_bank
    with pytest.raises(ValueError, match=r"\(banked: \[\]\)"):
        use_configuration(bare, 1.0, 1.0)


def test_plain_bn_statistics_are_averaged_over_processes_and_sync_bn_left_alone(monkeypatch):
    """With two processes each plain-BN statistic becomes the mean of the ranks' (the all-reduce
    here adds a second rank holding 1.0 everywhere); SyncBN statistics are global already."""
    import mutualnet_det.bn_calibration as calibration
    from mutualnet_det.modeling.slimmable_ops import SlimmableSyncBatchNorm

    layers = {"sync": SlimmableSyncBatchNorm(4), "plain": nn.BatchNorm2d(4), "torch_sync": nn.SyncBatchNorm(4)}
    for layer in layers.values():
        layer.running_mean.fill_(3.0)
        layer.running_var.fill_(5.0)
    reduced = []

    def all_reduce(tensor):
        reduced.append(tensor)
        tensor.add_(1.0)

    monkeypatch.setattr(calibration.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    calibration._average_over_processes(layers)
    assert torch.equal(layers["plain"].running_mean, torch.full((4,), 2.0))  # (3 + 1) / 2
    assert torch.equal(layers["plain"].running_var, torch.full((4,), 3.0))  # (5 + 1) / 2
    for name in ("sync", "torch_sync"):
        assert torch.equal(layers[name].running_mean, torch.full((4,), 3.0))
        assert torch.equal(layers[name].running_var, torch.full((4,), 5.0))
    assert len(reduced) == 2
    monkeypatch.setattr(calibration.comm, "get_world_size", lambda: 1)
    calibration._average_over_processes(layers)  # one process: nothing to average
    assert len(reduced) == 2 and torch.equal(layers["plain"].running_mean, torch.full((4,), 2.0))


def test_calibration_with_two_processes_banks_the_mean_over_ranks(monkeypatch):
    import mutualnet_det.bn_calibration as calibration

    model = ConvBN()
    data = batches()
    monkeypatch.setattr(calibration.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor.add_(1.0))  # the other rank: 1.0
    assert calibrate_bn(model, iter(data), 1.0, 1.0, num_batches=3)
    mean, var = direct_stats(model, data, 1.0)
    entry = model.bn_stats_bank.bank["w1p0000_s1p0000"]
    assert torch.allclose(entry["conv.norm.running_mean"], (mean + 1) / 2, atol=1e-4)
    assert torch.allclose(entry["conv.norm.running_var"], (var + 1) / 2, rtol=1e-4)


def test_use_configuration_defaults_scale_one_and_ten_batches_and_logs_the_calibration(caplog):
    import logging

    model = ConvBN()
    model.bn_stats_bank.store(model, 0.5, 1.0)
    assert use_configuration(model, 0.5) == "bank"  # resolution scale 1.0 by default
    taken = []

    def counted(scale):
        for batch in itertools.cycle(batches()):
            taken.append(scale)
            yield batch

    import itertools

    with caplog.at_level(logging.INFO, logger="mutualnet_det.bn_calibration"):
        assert use_configuration(model, 0.25, 0.6, counted) == "calibrated"
    assert len(taken) == 10  # ten calibration batches by default
    assert "BN stats bank has no entry for width 0.25, scale 0.6: calibrating on 10 training batches" in caplog.text


def test_calibration_records_are_a_fixed_draw_without_repeats_of_the_filtered_training_set(monkeypatch):
    """len(TEST.WIDTHS) x NUM_BATCHES x images per process distinct records, the same for the same
    SEED and another for another SEED (SEED < 0 counts as 0); at least one image per batch; the
    config's FILTER_EMPTY_ANNOTATIONS reaches the loading."""
    import mutualnet_det.bn_calibration as calibration
    from mutualnet_det.bn_calibration import calibration_records

    cfg = tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (1.0, 0.5), "MUTUALNET.BN_CALIB.NUM_BATCHES": 50, "SEED": 0})
    total = len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))
    records = calibration_records(cfg)
    names = [r["file_name"] for r in records]
    assert len(names) == len(set(names)) == 2 * 50 * 2 < total
    assert [r["file_name"] for r in calibration_records(cfg)] == names
    assert [r["file_name"] for r in calibration_records(tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (1.0, 0.5),
                                                                    "MUTUALNET.BN_CALIB.NUM_BATCHES": 50, "SEED": -1}))] == names
    other_seed = tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (1.0, 0.5), "MUTUALNET.BN_CALIB.NUM_BATCHES": 50, "SEED": 1})
    assert [r["file_name"] for r in calibration_records(other_seed)] != names
    one_image = tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (1.0,), "MUTUALNET.BN_CALIB.NUM_BATCHES": 3, "SOLVER.IMS_PER_BATCH": 1})
    assert len(calibration_records(one_image)) == 3
    asked = []
    real_load = calibration.get_detection_dataset_dicts
    monkeypatch.setattr(calibration, "get_detection_dataset_dicts",
                        lambda names, **kwargs: asked.append(kwargs) or real_load(names, **kwargs))
    calibration_records(tiny_cfg(**{"DATALOADER.FILTER_EMPTY_ANNOTATIONS": False}))
    assert asked == [{"filter_empty": False}]


@pytest.mark.parametrize("short,long,side_1,side_06", [(96, 80, 80, 48), (64, 80, 64, 38)])
def test_calibration_images_follow_both_test_sizes_and_only_the_drawn_records(monkeypatch, short, long, side_1, side_06):
    """Square images: MIN_SIZE_TEST 96 with MAX_SIZE_TEST 80: the long side limit wins (80 x 80,
    48 x 48 at scale 0.6, as evaluated); 64 with 80: the short side (64, and 38 = 64 x 0.6 rounded);
    a loader built without records reads only the drawn ones."""
    from detectron2.data import DatasetMapper

    from mutualnet_det.bn_calibration import build_calibration_loader, calibration_records

    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TEST": short, "INPUT.MAX_SIZE_TEST": long})
    drawn = {r["file_name"] for r in calibration_records(cfg)}
    read = []
    real_map = DatasetMapper.__call__
    monkeypatch.setattr(DatasetMapper, "__call__", lambda self, record: read.append(record["file_name"]) or real_map(self, record))
    for scale, side in ((1.0, side_1), (0.6, side_06)):
        loader = iter(build_calibration_loader(cfg, scale))
        for _ in range(3):
            assert {tuple(item["image"].shape[-2:]) for item in next(loader)} == {(side, side)}
    assert set(read) <= drawn
