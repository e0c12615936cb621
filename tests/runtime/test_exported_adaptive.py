"""Adaptive switching among exported configurations: the exports' latency table (each export
timed through its predictor, AP from the sweep) and ExportedAdaptivePredictor under a budget,
with simulated predictors and time (a slower device from some frame on), and the exported
stream report."""
import numpy as np
import pytest

from mutualnet_det.runtime.exported import ExportedAdaptivePredictor, profile_exported
from mutualnet_det.runtime.stream import exported_stream_benchmark, stream_markdown

MS = {(1.0, 1.0): 40.0, (0.5, 1.0): 25.0, (0.25, 1.0): 10.0}
AP = {(1.0, 1.0): 30.0, (0.5, 1.0): 22.0, (0.25, 1.0): 12.0}


class Clock:
    def __init__(self):
        self.now, self.load = 0.0, 1.0

    def __call__(self):
        return self.now


class FakeExport:
    """An ExportedPredictor stand-in: costs its table time x the clock's load, returns its key."""

    def __init__(self, key, clock):
        self.key, self.clock, self.threads, self.backend = key, clock, 1, "onnxruntime"

    def __call__(self, image):
        self.clock.now += self.clock.load * MS[self.key] / 1000
        return {"key": self.key}


def sweep():
    records = [{"width": w, "resolution_scale": s, "proposals": 20, "gflops": w, "bbox": {"AP": AP[(w, s)]}}
               for (w, s) in MS]
    records.append({"width": 1.0, "resolution_scale": 1.0, "proposals": 5, "gflops": 0.9, "bbox": {"AP": 1.0}})
    return records


def exports(clock):
    return {key: FakeExport(key, clock) for key in MS}


def measured_timer(function, device, warmup, repeats):
    """time_call's statistics from the simulated clock (the fake predictors advance it)."""
    before = CLOCK.now
    for _ in range(repeats):
        function()
    value = (CLOCK.now - before) / repeats * 1000
    return {"median_ms": value, "iqr_ms": 0.0, "min_ms": value, "max_ms": value, "repeats": repeats}


CLOCK = Clock()


def test_the_exports_table_and_the_budget_policy_over_it():
    CLOCK.now, CLOCK.load = 0.0, 1.0
    predictors = exports(CLOCK)
    table = profile_exported(predictors, sweep(), [np.zeros((8, 8, 3), np.uint8)] * 2, timer=measured_timer)
    # one record per export, at the config's proposal count (the 5-proposal record is not an export's)
    assert [(r["width"], r["proposals"]) for r in table["configurations"]] == [(1.0, 20), (0.5, 20), (0.25, 20)]
    assert [r["latency_ms"] for r in table["configurations"]] == pytest.approx([40.0, 25.0, 10.0])
    assert [r["width"] for r in table["front"]] == [0.25, 0.5, 1.0] and table["setting"] == "exported (onnxruntime)"

    predictor = ExportedAdaptivePredictor(predictors, table, budget_ms=45.0, clock=CLOCK)
    image = np.zeros((8, 8, 3), np.uint8)
    for frame in range(12):
        CLOCK.load = 1.0 if frame < 4 else 1.5  # from frame 4 the device runs 1.5x slower
        assert predictor(image)["key"] == (predictor.last.width, predictor.last.resolution_scale)
    widths = [f.width for f in predictor.frames]
    # 40 ms fits; at 60 ms the median is over after 3 frames (window 5): then 0.5 (25 x 1.5 = 37.5 ms)
    assert widths == [1.0] * 7 + [0.5] * 5
    assert [f.within_budget for f in predictor.frames] == [True] * 4 + [False] * 3 + [True] * 5
    assert [f.switched for f in predictor.frames] == [False] * 7 + [True] + [False] * 4
    assert predictor.frames[7].metric_value == 22.0

    with pytest.raises(ValueError, match="not among the exports"):
        ExportedAdaptivePredictor({k: v for k, v in predictors.items() if k != (0.5, 1.0)}, table, 45.0)
    with pytest.raises(ValueError, match="no record for the export at width 1, scale 0.3"):
        profile_exported({**predictors, (1.0, 0.3): FakeExport((1.0, 1.0), CLOCK)}, sweep(), [image],
                         timer=measured_timer)


def test_the_exported_stream_report():
    CLOCK.now, CLOCK.load = 0.0, 1.0
    predictors = exports(CLOCK)
    table = profile_exported(predictors, sweep(), [np.zeros((8, 8, 3), np.uint8)], timer=measured_timer)

    class NoLoad:
        def start(self):
            CLOCK.load = 1.5

        def stop(self):
            CLOCK.load = 1.0

    import mutualnet_det.runtime.exported as exported_module

    original = exported_module.Stopwatch
    exported_module.Stopwatch = lambda device, clock=None: original(device, CLOCK)
    try:
        report = exported_stream_benchmark(predictors, table, [np.zeros((8, 8, 3), np.uint8)] * 3, frames=20,
                                           make_load=lambda threads, size: NoLoad())
    finally:
        exported_module.Stopwatch = original
    assert report["budget_ms"] == pytest.approx(48.0)  # 1.2 x the width 1.0 export's 40 ms
    fixed, adaptive = report["summaries"]["fixed_w1.0_s1.0"], report["summaries"]["adaptive"]
    assert fixed["with_load"]["within_budget"] == 0.0  # 60 ms under load
    assert adaptive["with_load"]["within_budget"] > 0.5
    assert "exported (onnxruntime)" in stream_markdown(report)
