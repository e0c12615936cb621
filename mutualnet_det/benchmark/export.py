"""Deployment latency: stock Detectron2, the slimmable model, its frozen width, and that width
exported to TorchScript and run in ONNX Runtime, on the same validation images, in one run.

Every runtime is timed the same way: from a BGR image of original size to Instances in its
coordinates (test resize, model, postprocess and mask pasting included), one image per call,
at one thread count for all (torch's, and as many ONNX Runtime intra-op threads). "stock
Detectron2" is Detectron2's GeneralizedRCNN with the stock ResNet-FPN, its own RoI pooling and
mask pasting, holding the slimmable model's width-1.0 weights: the model a Detectron2 user would
deploy.
"""
import itertools
import os
import tempfile
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from ..bn_calibration import use_configuration
from ..data.rescale import scaled_test_input
from ..deploy.export import export_name, export_width
from ..deploy.freeze import freeze_width
from ..modeling.roi_align import swap_roi_align
from ..runtime.exported import ExportedPredictor
from ..runtime.latency import torch_threads
from .inference import stock_model, width_one_weights
from .timing import time_call

RUNTIMES = ("stock Detectron2", "slimmable", "frozen PyTorch", "TorchScript", "ONNX Runtime")


def _pytorch_predictor(cfg, model, scale: float) -> Callable[[np.ndarray], object]:
    def predict(image):
        inputs = scaled_test_input(image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image, cfg, scale)
        with torch.no_grad():
            return model([inputs])
    return predict


def export_latency_benchmark(cfg, model, images: Sequence[np.ndarray], widths: Sequence[float] = (1.0, 0.25),
                             repeats_per_image: int = 3, timer: Callable = time_call, threads: int = None) -> List[Dict]:
    """One row per (runtime, width): the runtime's time_call statistics over `images` (each
    `repeats_per_image` times) and its median as a fraction of stock Detectron2's at width 1.0.
    `model` is the trained slimmable model (eval mode, BN bank holding every width at scale 1.0).
    threads: for every runtime (default torch's current count, which is restored afterwards)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads}: need at least one thread")
    threads = threads or torch.get_num_threads()
    rows = []

    def timed(runtime, width, predict):
        inputs = itertools.cycle(images)
        stats = timer(lambda: predict(next(inputs)), "cpu", 2, len(images) * repeats_per_image)
        rows.append({"runtime": runtime, "width": width, "threads": threads, **stats})

    with torch_threads(threads), tempfile.TemporaryDirectory() as folder:
        stock = stock_model(cfg, "cpu")
        swap_roi_align(stock, gather=False)  # Detectron2's own pooling: the stock deployment
        use_configuration(model, 1.0, 1.0)
        stock.load_state_dict(width_one_weights(model))
        timed("stock Detectron2", 1.0, _pytorch_predictor(cfg, stock, 1.0))
        for width in widths:
            use_configuration(model, width, 1.0)
            frozen = freeze_width(model, width, 1.0).eval()
            export_width(cfg, model, width, 1.0, folder, images[0])
            description = os.path.join(folder, f"{export_name(width, 1.0)}.json")
            use_configuration(model, width, 1.0)
            timed("slimmable", width, _pytorch_predictor(cfg, model, 1.0))
            timed("frozen PyTorch", width, _pytorch_predictor(cfg, frozen, 1.0))
            timed("TorchScript", width, ExportedPredictor(description, "torchscript", threads))
            timed("ONNX Runtime", width, ExportedPredictor(description, "onnxruntime", threads))
    stock_ms = rows[0]["median_ms"]
    for row in rows:
        row["of_stock"] = row["median_ms"] / stock_ms
    return rows


def export_latency_markdown(report: Dict) -> str:
    rows = report["export_latency"]
    widths = sorted({r["width"] for r in rows}, reverse=True)
    lines = [f"# Deployment latency ({report['date']}, {report['device_name']})", "",
             f"Config `{report['config']}`, weights `{report.get('weights')}`, {report['num_images']} validation "
             f"images x {report['repeats_per_image']}, every runtime at {rows[0]['threads']} thread(s) (torch's and "
             "ONNX Runtime's intra-op); median ms from a BGR image to Instances in its coordinates "
             "(resize, model, postprocess, mask pasting), and the fraction of stock Detectron2's at width 1.0.", "",
             "| runtime | " + " | ".join(f"width {w:g}" for w in widths) + " |", "|---|" + "---|" * len(widths)]
    for runtime in RUNTIMES:
        cells = []
        for width in widths:
            row = next((r for r in rows if r["runtime"] == runtime and r["width"] == width), None)
            cells.append(f"{row['median_ms']:.1f} ({row['of_stock']:.2f})" if row else "-")
        lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
