"""The adaptive stream benchmark: the fixed baseline and default budget read from the latency
table, the two streams on a tiny model with a stand-in background load (when it starts), and the
report's Markdown on a hand-made report."""
import pytest
import torch
from helpers import tiny_cfg

from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.runtime.stream import (default_budget_ms, fixed_baseline, full_configuration, stream_benchmark,
                                          stream_markdown)


def record(width, scale, threads, ms, ap):
    return {"width": width, "resolution_scale": scale, "threads": threads, "latency_ms": ms, "gflops": 1.0,
            "bbox": {"AP": ap}}


def two_thread_table():
    """Full configuration: 75 ms at 1 thread, 50 ms at 2 (the largest count profiled)."""
    fronts = {"1": [record(0.25, 0.5, 1, 24.0, 12.0), record(1.0, 1.0, 1, 75.0, 30.0)],
              "2": [record(0.25, 0.5, 2, 20.0, 12.0), record(1.0, 1.0, 2, 50.0, 30.0)]}
    return {"device": "cpu", "device_name": "test CPU", "setting": "backbone-only", "metric": ["bbox", "AP"],
            "torch_threads": 2, "configurations": fronts["1"] + fronts["2"], "front": fronts["2"],
            "fronts_by_threads": fronts}


def test_fixed_baseline_and_default_budget_come_from_the_largest_thread_count():
    table = two_thread_table()
    assert full_configuration(table, 1)["latency_ms"] == 75.0
    assert fixed_baseline(table)["latency_ms"] == 50.0
    assert default_budget_ms(table) == 60.0  # 1.2 x 50 ms
    table["configurations"] = [r for r in table["configurations"] if r["threads"] == 1 or r["width"] < 1.0]
    assert full_configuration(table, 2) is None
    with pytest.raises(ValueError, match=r"the latency table 'lt.json' has no width 1.0 / scale 1.0 configuration at 2 threads"):
        fixed_baseline(table, "lt.json")


class StandInLoad:
    """Records how many model calls had run when the stream started it, and that it was stopped."""

    def __init__(self, calls, log):
        self.calls, self.log = calls, log

    def start(self):
        self.log.append(("start", len(self.calls)))

    def stop(self):
        self.log.append(("stop", len(self.calls)))


def test_two_streams_with_the_load_from_halfway_and_the_fixed_one_at_full_configuration():
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 4})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    for configuration in ((0.25, 0.5), (1.0, 1.0)):
        model.bn_stats_bank.store(model, *configuration)
    calls, log = [], []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    table = {"device": "cpu", "device_name": "test CPU", "setting": "backbone-only", "metric": ["bbox", "AP"],
             "configurations": [record(0.25, 0.5, 1, 20.0, 12.0), record(1.0, 1.0, 1, 60.0, 30.0)]}
    table["front"] = table["configurations"]
    threads = torch.get_num_threads()
    try:
        report = stream_benchmark(cfg, model, table, "lt.json", frames=5, load_threads=3, load_size=7,
                                  make_load=lambda *args: log.append(("made", len(calls), args)) or StandInLoad(calls, log))
    finally:
        torch.set_num_threads(threads)
    assert report["budget_ms"] == 72.0 and report["load_from_frame"] == 2  # 1.2 x 60 ms; 5 // 2
    assert (report["load_threads"], report["load_size"], report["table_threads"]) == (3, 7, [1])
    # per stream: the load made before its first frame, started before its third, stopped after its fifth
    assert [event[0] for event in log] == ["made", "start", "stop"] * 2
    for made, start, stop in (log[:3], log[3:]):
        assert made[2] == (3, 7) and (start[1] - made[1], stop[1] - made[1]) == (2, 5)
    assert list(report["summaries"]) == list(report["per_frame"]) == ["adaptive", "fixed_w1.0_s1.0"]
    fixed = report["per_frame"]["fixed_w1.0_s1.0"]
    assert [(f["index"], f["width"], f["resolution_scale"]) for f in fixed] == [(i, 1.0, 1.0) for i in range(5)]
    assert report["summaries"]["fixed_w1.0_s1.0"]["before_load"]["frames"] == 2
    assert report["table"].endswith("lt.json") and len(report["load_average_at_start"]["adaptive"]) == 3


def test_stream_markdown_rows_and_target_line():
    def summary(within, before, with_load, mean_metric, switches, threads_used, configurations):
        return {"all": {"within_budget": within, "mean_metric": mean_metric},
                "before_load": {"within_budget": before, "mean_metric": 30.0},
                "with_load": {"within_budget": with_load, "mean_metric": mean_metric - 1, "median_ms": 48.26},
                "switches": switches, "threads_used": threads_used, "configurations_used": configurations,
                "median_switch_ms": 0.456 if switches else None, "frames_with_load_before_first_within": 2}

    report = {"date": "2000-01-01", "device_name": "test CPU", "setting": "backbone-only", "frames": 8,
              "table_threads": [1, 2], "budget_ms": 60.0, "load_from_frame": 4, "load_size": 512, "load_threads": 1,
              "metric": ["bbox", "AP"], "load_average_at_start": {"adaptive": [1.0, 0.5, 0.25], "fixed_w1.0_s1.0": [2, 1, 0]},
              "summaries": {"adaptive": summary(7 / 8, 1.0, 3 / 4, 25.0, 2, {1: 3, 2: 5}, {"w1_s1_t2": 5, "w0.25_s0.5_t1": 3}),
                            "fixed_w1.0_s1.0": summary(3 / 8, 3 / 4, 0.0, 30.0, 0, {2: 8}, {"w1_s1": 8})}}
    text = stream_markdown(report)
    assert "profiled at torch thread count(s) 1, 2; budget 60.0 ms per frame; from frame 4 another process " \
           "multiplies 512x512 matrices on 1 thread(s). AP: the bbox.AP" in text
    assert "adaptive 1.00 / 0.50 / 0.25, fixed_w1.0_s1.0 2.00 / 1.00 / 0.00." in text
    # 7 / 8 = 87.5%, 3 / 4 = 75.0%
    assert "| adaptive | 87.5% | 100.0% | 75.0% | 25.00 | 30.00 | 24.00 | 48.3 | 2 | 1: 3, 2: 5 |" in text
    assert "| fixed_w1.0_s1.0 | 37.5% | 75.0% | 0.0% | 30.00 | 30.00 | 29.00 | 48.3 | 0 | 2: 8 |" in text
    assert "Configurations used by the adaptive predictor: w1_s1_t2: 5, w0.25_s0.5_t1: 3; median switch 0.46 ms; " \
           "frames with the load before its first frame within the budget: 2." in text
    assert text.endswith("keeps < 50%: 87.5% vs 37.5%.\n")
