"""The benchmark reports' Markdown, on hand-made reports whose ratios are worked out by hand."""
import os

from mutualnet_det.benchmark.reports import (REPO, benchmark_markdown, new_report, precision_markdown,
                                             roi_align_markdown)


def timing(median_ms):
    return {"median_ms": median_ms, "min_ms": median_ms, "max_ms": median_ms, "iqr_ms": 0.0, "repeats": 1}


def cost(seconds_per_iter, peak_memory_mb=1000.0):
    return {"seconds_per_iter": seconds_per_iter, "peak_memory_mb": peak_memory_mb}


def test_benchmark_markdown_states_latency_shares_and_the_target_ratios():
    report = {"date": "2000-01-01", "device_name": "test CPU",
              "inference": [{"width": 1.0, "resolution_scale": 1.0, "gflops": 8.0, "slimmable": timing(103.0),
                             "frozen": timing(100.0), "stock_detectron2": timing(100.0)},
                            {"width": 0.25, "resolution_scale": 0.6, "gflops": 1.5, "slimmable": timing(33.0),
                             "frozen": timing(30.0)}],
              "backbone": [{"width": 1.0, "gflops": 8.0, "slimmable": timing(40.0), "frozen": timing(38.0)},
                           {"width": 0.25, "gflops": 2.0, "slimmable": timing(20.0), "frozen": timing(19.0)}],
              "training": {"single": cost(1.0, 1234.4), "usnet": cost(2.5), "mutualnet": cost(2.0)}}
    lines = benchmark_markdown(report).splitlines()
    assert lines[0] == "# Benchmark 2000-01-01 on test CPU"
    # slimmable / frozen: 103 / 100, 33 / 30; no stock time below width 1.0
    assert "| 1 | 1 | 8.00 | 103.0 | 100.0 | 100.0 | 1.03 |" in lines
    assert "| 0.25 | 0.6 | 1.50 | 33.0 | 30.0 |  | 1.10 |" in lines
    # FLOPs share 2 / 8, latency shares 20 / 40 and 19 / 38, latency / FLOPs share 0.5 / 0.25
    assert "| 0.25 | 0.250 | 0.500 | 0.500 | 2.00 |" in lines
    assert "| single | 1.00 | 1234 |" in lines
    assert "- slimmable at width 1.0 / stock Detectron2: 1.030 (target <= 1.05)" in lines
    assert "- mutualnet / usnet iteration: 0.80 (target <= 0.8)" in lines  # 2.0 / 2.5
    assert "- mutualnet / single iteration: 2.00 (target <= 2.2)" in lines


def test_precision_markdown_names_the_amp_precision_of_the_device_and_divides_per_method():
    report = {"date": "2000-01-01", "device_name": "test CPU", "device": "cpu", "train_iters": 12,
              "config": os.path.join(REPO, "configs", "x.yaml"), "cpu_capability": "AVX2", "cpu_fast_bfloat16": False,
              "training": {"single": {"float32": cost(2.0, 900.0), "amp": cost(1.5, 700.0)},
                           "mutualnet": {"float32": cost(4.0), "amp": cost(5.0)}}}
    text = precision_markdown(report)
    assert "Config `configs/x.yaml`; 12 timed iterations after 2 warm-up ones" in text  # relative to the repository
    assert "AMP here = bfloat16" in text and "(CPU capability AVX2)" in text  # on CPU, AMP runs bfloat16
    assert "| method | float32 s/iter | bfloat16 s/iter | bfloat16 / float32 | peak MB float32 | peak MB bfloat16 |" in text
    assert "| single | 2.00 | 1.50 | 0.75 | 900 | 700 |" in text  # 1.5 / 2.0
    assert "| mutualnet | 4.00 | 5.00 | 1.25 | 1000 | 1000 |" in text  # 5.0 / 4.0


def test_roi_align_markdown_lists_every_round_and_divides_the_fastest_rounds():
    report = {"date": "2000-01-01", "device_name": "test CPU", "train_iters": 6, "config": os.path.join(REPO, "c.yaml"),
              "training": {"usnet": {"gather": [cost(1.2), cost(1.5)], "torchvision": [cost(2.0), cost(1.6)]}}}
    text = roi_align_markdown(report)
    # torchvision first whatever the dict order; fastest gather / fastest torchvision = 1.2 / 1.6
    # (rounds of different order: the first rounds' ratio would be 0.60)
    assert "| usnet | 2.00 / 1.60 | 1.20 / 1.50 | 0.75 |" in text
    assert "Config `c.yaml`; 6 timed training iterations after 2 warm-up ones" in text


def test_new_report_starts_with_the_common_fields_in_order():
    report = new_report("cpu", "configs/x.yaml", train_iters=3, training={})
    assert list(report) == ["date", "device", "device_name", "config", "train_iters", "training"]
    assert report["device"] == "cpu" and report["config"] == "configs/x.yaml"
    assert "torch threads" in report["device_name"]  # CPU times depend on the thread count
    from mutualnet_det.benchmark.reports import REPO
    assert new_report("cpu", os.path.join(REPO, "configs", "x.yaml"))["config"] == os.path.join("configs", "x.yaml")
