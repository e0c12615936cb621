"""The deployment latency benchmark's rows: every runtime at every width (stock Detectron2 at
width 1.0 only), each timed through a predictor that returns detections, ratios to stock by hand."""
import pytest
import torch

pytest.importorskip("onnxruntime")

from mutualnet_det.benchmark import export as export_module  # noqa: E402
from mutualnet_det.benchmark.export import RUNTIMES, export_latency_benchmark, export_latency_markdown  # noqa: E402
from mutualnet_det.runtime.latency import validation_images  # noqa: E402

from deploy.test_freeze import trained_like  # noqa: E402


def test_rows_per_runtime_and_width_with_ratios_to_stock(monkeypatch):
    cfg, model = trained_like(18)
    images = validation_images(cfg, 2)
    outputs, fake_ms = [], iter(range(10, 200, 10))

    def timer(function, device, warmup, repeats):  # runs the predictor once, simulates its time
        outputs.append(function())
        value = float(next(fake_ms))
        return {"median_ms": value, "min_ms": value, "max_ms": value, "iqr_ms": 0.0, "repeats": repeats}

    threads_before = torch.get_num_threads()
    wanted = 2 if threads_before == 1 else 1  # not the current count: the test sees it set and restored
    seen_threads, session_threads = [], []

    class RecordingPredictor(export_module.ExportedPredictor):  # the ONNX Runtime session's own setting
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.backend == "onnxruntime":
                session_threads.append(int(self.session.get_session_options().intra_op_num_threads))

    monkeypatch.setattr(export_module, "ExportedPredictor", RecordingPredictor)

    def timer(function, device, warmup, repeats, simulated=timer):  # also records the thread count each ran at
        seen_threads.append(torch.get_num_threads())
        return simulated(function, device, warmup, repeats)

    rows = export_latency_benchmark(cfg, model, images, widths=(1.0, 0.25), timer=timer, threads=wanted)
    assert seen_threads == [wanted] * len(rows) and {r["threads"] for r in rows} == {wanted}
    assert session_threads == [wanted, wanted]  # one ONNX Runtime session per width
    assert torch.get_num_threads() == threads_before  # restored after the run
    assert [(r["runtime"], r["width"]) for r in rows] == [("stock Detectron2", 1.0)] + \
        [(runtime, width) for width in (1.0, 0.25) for runtime in RUNTIMES[1:]]
    assert [r["of_stock"] for r in rows] == pytest.approx([r["median_ms"] / 10.0 for r in rows])
    detections = [len(o[0]["instances"] if isinstance(o, list) else o["instances"]) for o in outputs]
    assert all(count > 0 for count in detections)  # every runtime ran the model and found something
    assert detections[1:5] == [detections[1]] * 4  # width 1.0: the four runtimes agree on the count
    text = export_latency_markdown({"date": "d", "device_name": "cpu", "config": "c", "weights": "w", "num_images": 2,
                                    "repeats_per_image": 3, "export_latency": rows})
    assert f"every runtime at {wanted} thread(s)" in text
    assert "| stock Detectron2 | 10.0 (1.00) | - |" in text and "| ONNX Runtime | 50.0 (5.00) | 90.0 (9.00) |" in text


def test_rejects_no_threads():
    with pytest.raises(ValueError, match="threads=0"):
        export_latency_benchmark(None, None, [], threads=0)


def test_the_thread_count_is_restored_when_a_runtime_fails():
    cfg, model = trained_like(18)
    images = validation_images(cfg, 1)
    threads_before = torch.get_num_threads()

    def failing_timer(function, device, warmup, repeats):
        assert torch.get_num_threads() != threads_before
        raise RuntimeError("runtime failed")

    with pytest.raises(RuntimeError, match="runtime failed"):
        export_latency_benchmark(cfg, model, images, timer=failing_timer, threads=2 if threads_before == 1 else 1)
    assert torch.get_num_threads() == threads_before
