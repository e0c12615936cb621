"""The latency targets of a latency table, by hand, and the plot's ideal line."""
import pytest

from mutualnet_det.benchmark.latency_targets import plot_front, targets_from_latency, targets_markdown
from mutualnet_det.evaluation.query_table import pareto_front


def record(width, scale, proposals, gflops, ms, ap, threads=1):
    return {"width": width, "resolution_scale": scale, "proposals": proposals, "gflops": gflops,
            "latency_ms": ms, "bbox": {"AP": ap}, "threads": threads}


def table():
    records = [
        record(1.0, 1.0, 100, 3.0, 200.0, 24.0), record(1.0, 1.0, 20, 2.9, 150.0, 23.0),
        record(0.25, 1.0, 100, 0.25, 60.0, 4.7), record(0.25, 1.0, 20, 0.2, 30.0, 4.5),
        record(0.25, 0.571, 20, 0.1, 24.0, 3.8), record(0.25, 0.571, 10, 0.09, 20.0, 3.6),  # 3.6 < 4.7 - 1
        record(1.0, 1.0, 100, 3.0, 400.0, 24.0, threads=2),  # another thread count: ignored
    ]
    return {"torch_threads": 1, "configurations": records,
            "front": pareto_front([r for r in records if r["threads"] == 1], ("bbox", "AP"), cost="latency_ms")}


def test_targets_by_hand():
    targets = targets_from_latency(table(), 100, detectron2_ms={1.0: 250.0, 0.25: 75.0})
    assert targets["width_1.0_ms"] == 200.0
    assert targets["width_ratio_by_proposals"] == [
        {"proposals": 100, "width_0.25_ms": 60.0, "width_1.0_ms": 200.0, "ratio": pytest.approx(0.3)},
        {"proposals": 20, "width_0.25_ms": 30.0, "width_1.0_ms": 150.0, "ratio": pytest.approx(0.2)},
    ]
    cheap = targets["cheap_within_ap"]
    assert cheap["box_ap_floor"] == pytest.approx(3.7)
    assert cheap["configuration"]["latency_ms"] == 24.0 and cheap["box_ap"] == 3.8  # not the 20 ms at AP 3.6
    assert cheap["fraction_of_width_1.0"] == pytest.approx(0.12)
    assert targets["against_detectron2_postprocessing"] == [
        {"width": 1.0, "ms": 200.0, "detectron2_ms": 250.0, "ratio": pytest.approx(0.8)},
        {"width": 0.25, "ms": 60.0, "detectron2_ms": 75.0, "ratio": pytest.approx(0.8)}]
    by_gflops = [r["gflops"] for r in targets["front"]]
    assert by_gflops == sorted(by_gflops) and by_gflops[-1] == 3.0
    assert targets["front"][0]["flops_ideal_ms"] == pytest.approx(200.0 * by_gflops[0] / 3.0)
    report = {"date": "2026-12-05", "device_name": "cpu", "num_images": 8, "repeats_per_image": 3,
              "weights": "w.pth", "sweep": "s.json", "targets": targets}
    text = targets_markdown(report)
    assert "| 100 | 60.0 | 200.0 | 0.30 |" in text and "= 0.12 of width 1.0" in text
    assert "| 0.25 | 60.0 | 75.0 | 0.80 |" in text


def test_a_missing_configuration_says_what_to_sweep():
    with pytest.raises(ValueError, match="no configuration width 1, scale 1, 50 proposals.*PROPOSALS"):
        targets_from_latency(table(), 50)


def test_detectron2_postprocessing_is_switched_for_the_block_only():
    from detectron2.modeling import build_model
    from detectron2.modeling.proposal_generator.rpn import RPN
    from helpers import tiny_cfg

    from mutualnet_det.benchmark.latency_targets import detectron2_postprocessing
    from mutualnet_det.modeling.proposal_selection import TopProposalsRPN

    model = build_model(tiny_cfg())
    with detectron2_postprocessing(model):
        assert type(model.proposal_generator) is RPN and not model.vectorized_mask_paste
    assert type(model.proposal_generator) is TopProposalsRPN and model.vectorized_mask_paste


def test_the_plot_is_written(tmp_path):
    path = tmp_path / "front.png"
    plot_front(targets_from_latency(table(), 100), table(), str(path))
    assert path.stat().st_size > 10_000


def round_of(scale_times):
    """table() with each configuration's latency multiplied as given (one round's timings)."""
    base = table()
    for r, factor in zip(base["configurations"], scale_times):
        r["latency_ms"] *= factor
        r.update(latency_iqr_ms=factor, latency_min_ms=0.9 * r["latency_ms"], latency_max_ms=1.2 * r["latency_ms"],
                 latency_calls=24)
    return {**base, "metric": ["bbox", "AP"]}


def test_rounds_are_merged_by_the_median_of_each_configuration_and_the_front_recomputed():
    from mutualnet_det.benchmark.latency_targets import merge_rounds, per_round_targets

    # round 2 is a slow spell for width 1.0 at 100 proposals; round 3 for the narrow ones
    rounds = [round_of([1.0] * 7), round_of([1.5, 1, 1, 1, 1, 1, 1]), round_of([1, 1, 1.2, 1.2, 2.0, 2.0, 1])]
    merged = merge_rounds(rounds)
    assert merged["rounds"] == 3
    by_key = {(r["width"], r["resolution_scale"], r["proposals"], r["threads"]): r for r in merged["configurations"]}
    assert by_key[(1.0, 1.0, 100, 1)]["latency_ms"] == 200.0  # median of 200, 300, 200
    assert by_key[(1.0, 1.0, 100, 1)]["latency_rounds_ms"] == [200.0, 300.0, 200.0]
    # the other statistics over all rounds: min of the mins, max of the maxes, median IQR, calls summed
    assert by_key[(1.0, 1.0, 100, 1)]["latency_min_ms"] == pytest.approx(180.0)
    assert by_key[(1.0, 1.0, 100, 1)]["latency_max_ms"] == pytest.approx(360.0)
    assert by_key[(0.25, 0.571, 20, 1)]["latency_iqr_ms"] == 1.0  # median of 1, 1, 2
    assert by_key[(0.25, 0.571, 20, 1)]["latency_calls"] == 72
    assert by_key[(0.25, 0.571, 20, 1)]["latency_ms"] == 24.0  # median of 24, 24, 48
    assert merged["front"] == pareto_front([r for r in merged["configurations"] if r["threads"] == 1],
                                           ("bbox", "AP"), cost="latency_ms")
    per_round = per_round_targets(rounds, 100)
    assert [r["width_ratio_default_proposals"] for r in per_round] == pytest.approx([0.3, 0.2, 0.36])
    # round 3: 0.25 / 0.571 / 20 at 48 ms is slower than 0.25 / 1.0 / 20 at 36 ms (AP 4.5): 36 / 200
    assert [r["cheap_fraction"] for r in per_round] == pytest.approx([0.12, 0.08, 0.18])
    assert per_round[2]["cheap_configuration"]["resolution_scale"] == 1.0
    targets = targets_from_latency(merged, 100)
    targets["rounds"] = per_round
    report = {"date": "2026-12-05", "device_name": "cpu", "num_images": 8, "repeats_per_image": 3, "weights": "w.pth",
              "sweep": "s.json", "targets": targets, "latency_table": {"calibrated_for_timing": [[0.375, 0.571]]}}
    text = targets_markdown(report)
    assert "timed in 3 rounds" in text and "| 2 | 0.200 | width 0.25, scale 0.571, 20 proposals | 0.080 |" in text
    assert "calibrated on the training set for this timing" in text and "width 0.375 scale 0.571" in text


def test_statistics_missing_from_the_bank_are_calibrated_for_the_timing_only():
    from detectron2.modeling import build_model
    from helpers import tiny_cfg

    from mutualnet_det.benchmark.latency_targets import bank_missing_statistics

    cfg = tiny_cfg(**{"MODEL.RESNETS.NORM": "BN", "MUTUALNET.BN_CALIB.NUM_BATCHES": 1})
    model = build_model(cfg).eval()
    model.bn_stats_bank.store(model, 1.0, 1.0)
    sweep = [{"width": 1.0, "resolution_scale": 1.0}, {"width": 0.5, "resolution_scale": 1.0},
             {"width": 0.5, "resolution_scale": 1.0}]
    assert bank_missing_statistics(cfg, model, sweep) == [[0.5, 1.0]]
    assert (0.5, 1.0) in model.bn_stats_bank and not model.training
    assert bank_missing_statistics(cfg, model, sweep) == []
