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
