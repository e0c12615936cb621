"""The latency table: budget queries in milliseconds, profiling (with a simulated timer), the
table's schema and files, and the errors on bad input."""
import csv
import json

import numpy as np
import pytest
import torch
from helpers import tiny_cfg

import mutualnet_det
from mutualnet_det.bn_calibration import bn_layers
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.evaluation.query_table import best_config, pareto_front
from mutualnet_det.flops import backbone_gflops
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.runtime.latency import (check_banked, check_sweep_matches_model, format_latency_table, fronts_by_threads,
                                   load_latency_table, profile_latency, threads_of, write_latency_table)
from mutualnet_det.width import get_width, set_width


def record(width, scale, gflops, latency_ms, ap):
    return {"width": width, "resolution_scale": scale, "gflops": gflops, "latency_ms": latency_ms, "bbox": {"AP": ap}}


# GFLOPs and milliseconds disagree, as on this CPU: width 0.5 at scale 0.6 is cheaper in GFLOPs but slower
HAND_TABLE = [record(1.0, 1.0, 7.6, 126.0, 40.0), record(1.0, 0.6, 4.0, 67.0, 33.0),
              record(0.5, 0.6, 3.5, 99.0, 30.0), record(0.25, 0.6, 3.0, 94.0, 20.0),
              record(0.75, 0.6, 4.2, 72.0, 31.0)]


def test_front_and_budget_queries_in_milliseconds():
    # by hand, fastest first: 67/33 kept, 72/31 no, 94/20 no, 99/30 no, 126/40 kept
    front = pareto_front(HAND_TABLE, cost="latency_ms")
    assert [(r["width"], r["resolution_scale"]) for r in front] == [(1.0, 0.6), (1.0, 1.0)]
    # by GFLOPs the same table's front differs: 3.0/20, 3.5/30, 4.0/33 kept, 4.2/31 dominated, 7.6/40
    assert [r["gflops"] for r in pareto_front(HAND_TABLE)] == [3.0, 3.5, 4.0, 7.6]
    assert mutualnet_det.best_config(HAND_TABLE, max_ms=100)["width"] == 1.0
    assert best_config(HAND_TABLE, max_ms=100)["resolution_scale"] == 0.6
    assert best_config(HAND_TABLE, max_ms=126.0)["latency_ms"] == 126.0  # the budget is inclusive
    assert best_config(HAND_TABLE, max_ms=96.0)["latency_ms"] == 67.0
    assert best_config(HAND_TABLE, max_gflops=3.6)["width"] == 0.5  # GFLOPs queries unchanged
    assert best_config(HAND_TABLE, 3.6)["width"] == 0.5  # ... also positionally
    assert best_config(HAND_TABLE, max_ms=1000, metric=("bbox", "AP"))["latency_ms"] == 126.0


def test_budget_query_errors():
    with pytest.raises(ValueError, match=r"budget 60 ms is below the cheapest configuration \(width 1.0, scale 0.6: 67.000 ms\)"):
        best_config(HAND_TABLE, max_ms=60)
    with pytest.raises(ValueError, match="exactly one budget"):
        best_config(HAND_TABLE, 5.0, max_ms=100)
    with pytest.raises(ValueError, match="exactly one budget"):
        best_config(HAND_TABLE)
    gflops_only = [{k: v for k, v in r.items() if k != "latency_ms"} for r in HAND_TABLE]
    with pytest.raises(ValueError, match="has no 'latency_ms'.*profile_latency"):
        best_config(gflops_only, max_ms=100)


CONFIGURATIONS = [(1.0, 1.0), (1.0, 0.5), (0.25, 1.0), (0.25, 0.5)]
# simulated milliseconds per (width, input side in pixels) and box AP per configuration
SIMULATED_MS = {(1.0, 64): 100.0, (1.0, 32): 40.0, (0.25, 64): 70.0, (0.25, 32): 35.0}
AP = {(1.0, 1.0): 30.0, (1.0, 0.5): 22.0, (0.25, 1.0): 20.0, (0.25, 0.5): 12.0}


@pytest.fixture(scope="module")
def banked_model():
    """A tiny random-weight model whose BN stats bank holds a recognisable entry per configuration."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    for number, (width, scale) in enumerate(CONFIGURATIONS):
        for layer in bn_layers(model).values():
            layer.running_mean.fill_(number)
        model.bn_stats_bank.store(model, width, scale)
    return cfg, model


@pytest.fixture(scope="module")
def sweep_and_images(banked_model):
    """Two validation-like images and sweep records whose backbone GFLOPs are what the width sweep
    writes (flops.backbone_gflops on the first image; whole-model GFLOPs made up)."""
    cfg, model = banked_model
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(2)]  # long side resized to 64
    records = []
    for width, scale in CONFIGURATIONS:
        set_width(model, width)
        tensor = model.preprocess_image([scaled_test_input(images[0], cfg, scale)]).tensor
        records.append({"width": width, "resolution_scale": scale, "bn_stats": "bank", "gflops": width * scale,
                        "gflops_backbone": backbone_gflops(model, tensor),
                        "bbox": {"AP": AP[(width, scale)]}, "segm": {"AP": AP[(width, scale)] - 1}})
    return records, images


def simulated_timer(model, calls, milliseconds):
    """A `time_call` stand-in: runs the function warmup + repeats times, records (warmup, repeats,
    what each forward pass saw: width, input side, BN bank entry, torch threads) in `calls`, and
    returns milliseconds(width, side, threads) for the configuration (0.5 ms for a switch)."""
    def timer(function, device, warmup, repeats):
        seen = []
        hook = model.register_forward_pre_hook(
            lambda module, args: seen.append((get_width(module), max(args[0][0]["image"].shape[-2:]),
                                              bn_layers(module)["backbone.bottom_up.stem.conv1.norm"].running_mean[0].item(),
                                              torch.get_num_threads())))
        try:
            for _ in range(warmup + repeats):
                function()
        finally:
            hook.remove()
        calls.append((warmup, repeats, seen, torch.get_num_threads()))
        if not seen:  # the switch measurement: no forward pass
            return {"median_ms": 0.5, "iqr_ms": 0.1, "min_ms": 0.4, "max_ms": 0.7, "repeats": repeats}
        assert len(set(seen)) == 1, seen  # one configuration per timing
        width, side, _, threads = seen[0]
        ms = milliseconds(width, side, threads)
        return {"median_ms": ms, "iqr_ms": ms / 10, "min_ms": ms - 1, "max_ms": ms + 2, "repeats": repeats}

    return timer


def test_profile_times_every_configuration_at_its_input_size_and_writes_the_table(banked_model, sweep_and_images, tmp_path):
    cfg, model = banked_model
    sweep, images = sweep_and_images
    calls = []
    simulated = simulated_timer(model, calls, lambda width, side, threads: SIMULATED_MS[(width, side)])
    table = profile_latency(cfg, model, sweep, images, warmup=2, repeats_per_image=3, timer=simulated, progress=False)
    model_calls = [c for c in calls if c[2]]
    assert [(c[0], c[1], len(c[2])) for c in model_calls] == [(2, 6, 8)] * 4  # warm-up + images x repeats
    # inputs at the test resize (64, long side capped at 64) x scale; banked statistics loaded (entry number)
    assert [c[2][0][:3] for c in model_calls] == [(1.0, 64, 0.0), (1.0, 32, 1.0), (0.25, 64, 2.0), (0.25, 32, 3.0)]
    # without `threads`: one thread count, the current one
    threads = torch.get_num_threads()
    assert {r["threads"] for r in table["configurations"]} == {threads} and table["torch_threads"] == threads
    assert table["fronts_by_threads"] == {str(threads): table["front"]}
    assert table["switch"]["median_ms"] == 0.5
    assert [(r["width"], r["resolution_scale"], r["latency_ms"]) for r in table["configurations"]] == \
        [(1.0, 1.0, 100.0), (1.0, 0.5, 40.0), (0.25, 1.0, 70.0), (0.25, 0.5, 35.0)]
    assert table["configurations"][0]["latency_iqr_ms"] == 10.0 and table["configurations"][0]["latency_calls"] == 6
    assert table["configurations"][1]["gflops"] == 0.5 and table["configurations"][1]["bbox"]["AP"] == 22.0
    # by hand, fastest first: 35/12 kept, 40/22 kept, 70/20 dominated, 100/30 kept
    assert [(r["width"], r["resolution_scale"]) for r in table["front"]] == [(0.25, 0.5), (1.0, 0.5), (1.0, 1.0)]
    assert table["setting"] == "backbone-only" and table["device"] == "cpu" and table["num_images"] == 2

    path = write_latency_table(table, str(tmp_path))
    assert load_latency_table(path) == json.loads(json.dumps(table))
    rows = list(csv.DictReader(open(tmp_path / "latency_table.csv")))
    assert [(float(r["width"]), float(r["resolution_scale"]), float(r["latency_ms"]), float(r["bbox_AP"]), r["on_front"])
            for r in rows] == [(1.0, 1.0, 100.0, 30.0, "1"), (1.0, 0.5, 40.0, 22.0, "1"),
                               (0.25, 1.0, 70.0, 20.0, "0"), (0.25, 0.5, 35.0, 12.0, "1")]
    assert best_config(load_latency_table(path)["configurations"], max_ms=69)["resolution_scale"] == 0.5


def test_profile_gives_an_rgb_model_rgb_channels(banked_model, sweep_and_images):
    """Images come in BGR (as DefaultPredictor takes them); a model with INPUT.FORMAT RGB is timed on
    R, G, B in that order: a BGR image with B=200, G=100, R=10 arrives as 10, 100, 200."""
    cfg, model = banked_model
    sweep, _ = sweep_and_images
    image_bgr = np.empty((48, 80, 3), dtype=np.uint8)
    image_bgr[:] = (200, 100, 10)
    seen = []

    def timer(function, device, warmup, repeats):
        for _ in range(warmup + repeats):
            function()
        return {"median_ms": 1.0, "iqr_ms": 0.1, "min_ms": 1.0, "max_ms": 1.0, "repeats": repeats}

    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]["image"].flatten(1).mean(1).tolist()))
    try:
        for input_format, expected in (("RGB", [10.0, 100.0, 200.0]), ("BGR", [200.0, 100.0, 10.0])):
            format_cfg = cfg.clone()
            format_cfg.INPUT.FORMAT = input_format
            seen.clear()
            profile_latency(format_cfg, model, sweep[:1], [image_bgr], warmup=0, timer=timer, progress=False)
            assert seen == [expected], input_format
    finally:
        hook.remove()


# simulated milliseconds at 1 torch thread: narrow is relatively cheaper, so the front differs from
# the one at 2 threads (SIMULATED_MS)
ONE_THREAD_MS = {(1.0, 64): 150.0, (1.0, 32): 90.0, (0.25, 64): 55.0, (0.25, 32): 30.0}


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_profile_at_two_thread_counts_keeps_a_front_per_count(banked_model, sweep_and_images, tmp_path,
                                                              restore_torch_threads):
    cfg, model = banked_model
    sweep, images = sweep_and_images
    calls = []
    ms_by_threads = {1: ONE_THREAD_MS, 2: SIMULATED_MS}
    simulated = simulated_timer(model, calls, lambda width, side, threads: ms_by_threads[threads][(width, side)])
    torch.set_num_threads(3)
    table = profile_latency(cfg, model, sweep, images, threads=[2, 1, 2], warmup=1, timer=simulated, progress=False)
    assert torch.get_num_threads() == 3  # restored
    # every configuration at 1 thread, then at 2; the switch timed at the largest count
    assert [(c[2][0][0], c[2][0][1], c[2][0][3]) if c[2] else ("switch", c[3]) for c in calls] == \
        [(1.0, 64, 1), (1.0, 32, 1), (0.25, 64, 1), (0.25, 32, 1), (1.0, 64, 2), (1.0, 32, 2), (0.25, 64, 2), (0.25, 32, 2),
         ("switch", 2)]
    assert [(r["width"], r["resolution_scale"], r["threads"], r["latency_ms"]) for r in table["configurations"]] == \
        [(1.0, 1.0, 1, 150.0), (1.0, 0.5, 1, 90.0), (0.25, 1.0, 1, 55.0), (0.25, 0.5, 1, 30.0),
         (1.0, 1.0, 2, 100.0), (1.0, 0.5, 2, 40.0), (0.25, 1.0, 2, 70.0), (0.25, 0.5, 2, 35.0)]
    # by hand, fastest first: at 1 thread 30/12, 55/20, 90/22, 150/30 all kept; at 2 threads 35/12,
    # 40/22, 100/30 kept (70/20 dominated by 40/22)
    fronts = {threads: [(r["width"], r["resolution_scale"], r["threads"]) for r in front]
              for threads, front in table["fronts_by_threads"].items()}
    assert fronts == {"1": [(0.25, 0.5, 1), (0.25, 1.0, 1), (1.0, 0.5, 1), (1.0, 1.0, 1)],
                      "2": [(0.25, 0.5, 2), (1.0, 0.5, 2), (1.0, 1.0, 2)]}
    assert table["torch_threads"] == 2 and table["front"] == table["fronts_by_threads"]["2"]
    assert best_config(table["front"], max_ms=69)["latency_ms"] == 40.0  # queries on the front as before

    path = write_latency_table(table, str(tmp_path))
    loaded = load_latency_table(path)
    assert loaded == json.loads(json.dumps(table))
    assert {threads: len(front) for threads, front in fronts_by_threads(loaded).items()} == {1: 4, 2: 3}
    rows = list(csv.DictReader(open(tmp_path / "latency_table.csv")))
    # on_front: on the front of its own thread count (width 0.25 / scale 1.0 is at 1 thread, not at 2)
    assert [(float(r["width"]), float(r["resolution_scale"]), int(r["threads"]), r["on_front"]) for r in rows] == \
        [(1.0, 1.0, 1, "1"), (1.0, 0.5, 1, "1"), (0.25, 1.0, 1, "1"), (0.25, 0.5, 1, "1"),
         (1.0, 1.0, 2, "1"), (1.0, 0.5, 2, "1"), (0.25, 1.0, 2, "0"), (0.25, 0.5, 2, "1")]
    text = format_latency_table(loaded).splitlines()
    assert text[0].split() == ["width", "scale", "threads", "ms", "(median)", "IQR", "ms", "GFLOPs", "bbox", "AP", "front"]
    # one row per configuration and thread count, by thread count then ms
    assert [(float(line.split()[2]), float(line.split()[3])) for line in text[2:]] == \
        [(1, 30), (1, 55), (1, 90), (1, 150), (2, 35), (2, 40), (2, 70), (2, 100)]
    assert [line.rstrip().endswith("*") for line in text[2:]] == [True] * 6 + [False, True]
    with pytest.raises(ValueError, match=r"torch thread counts must be >= 1, got \[0, 1\]"):
        profile_latency(cfg, model, sweep, images, threads=[0, 1], timer=simulated, progress=False)


def test_a_table_written_before_thread_counts_were_profiled_still_loads(tmp_path):
    front = [dict(r, latency_iqr_ms=1.0) for r in pareto_front(HAND_TABLE, cost="latency_ms")]
    old = {"device": "cpu", "torch_threads": 2, "setting": "backbone-only", "metric": ["bbox", "AP"],
           "configurations": [dict(r, latency_iqr_ms=1.0) for r in HAND_TABLE], "front": front}
    (tmp_path / "latency_table.json").write_text(json.dumps(old))
    table = load_latency_table(str(tmp_path / "latency_table.json"))
    # its records count as timed at its torch_threads
    assert fronts_by_threads(table) == {2: front}
    assert {threads_of(r, table) for r in table["configurations"]} == {2}
    write_latency_table(dict(table, configurations=[dict(r, gflops_backbone=1.0) for r in table["configurations"]]),
                        str(tmp_path / "rewritten"))
    rows = list(csv.DictReader(open(tmp_path / "rewritten" / "latency_table.csv")))
    assert {r["threads"] for r in rows} == {"2"} and sum(r["on_front"] == "1" for r in rows) == 2
    assert "*" in format_latency_table(table)


def test_sweep_of_another_model_or_unbanked_configuration_is_refused(banked_model, sweep_and_images):
    cfg, model = banked_model
    sweep, images = sweep_and_images
    check_sweep_matches_model(cfg, model, sweep, images)  # the sweep's own numbers pass
    other = [dict(r, gflops_backbone=r["gflops_backbone"] * 1.3) if r["width"] == 0.25 else r for r in sweep]
    with pytest.raises(ValueError, match="does not match this model: at width 0.25, scale 1"):
        check_sweep_matches_model(cfg, model, other, images)
    with pytest.raises(ValueError, match=r"no banked BN statistics for width 0.5, scale 1 in this checkpoint"):
        profile_latency(cfg, model, sweep + [dict(sweep[0], width=0.5)], images, progress=False)
    with pytest.raises(ValueError, match="outside this model's width range"):
        check_banked(model, [(0.1, 1.0)])


def test_bad_table_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read latency table.*missing.json"):
        load_latency_table(str(tmp_path / "missing.json"))
    sweep_file = tmp_path / "width_sweep.json"
    sweep_file.write_text(json.dumps([record(1.0, 1.0, 7.0, 1.0, 3.0)]))
    with pytest.raises(ValueError, match="is not a latency table: missing"):
        load_latency_table(str(sweep_file))
    front = [dict(r, threads=t) for r, t in zip(pareto_front(HAND_TABLE, cost="latency_ms"), (2, 2))]
    table = {"device": "cpu", "torch_threads": 2, "setting": "backbone-only", "metric": ["bbox", "AP"],
             "configurations": front, "front": front}
    for fronts, message in [({"0": front}, "must map thread counts >= 1 to fronts"),
                            ({"1": front, "2": front}, "the front at 1 threads holds width 1, scale 0.6 timed at 2 threads"),
                            ({"2": front[:1]}, r"its front is not fronts_by_threads\['2'\]"),
                            ({"1": [], "2": front}, "the front at 1 threads is empty")]:
        table_file = tmp_path / "latency_table.json"
        table_file.write_text(json.dumps(dict(table, fronts_by_threads=fronts)))
        with pytest.raises(ValueError, match=message):
            load_latency_table(str(table_file))
