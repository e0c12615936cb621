"""Running exported configurations (deploy/export.py).

`ExportedPredictor` runs one like Detectron2's DefaultPredictor: a BGR image in, Instances in the
image's coordinates out. The graph runs in ONNX Runtime (the `onnxruntime` package, an optional
dependency) or as TorchScript; around it, the same steps as the PyTorch model's: the test resize
before, and Detectron2's `detector_postprocess` after (boxes scaled to the image, masks pasted by
`modeling/mask_paste.py`).

`profile_exported` times a folder of exports into a latency table (the format of
runtime/latency.py, AP and GFLOPs from the slimmable model's width sweep), and
`ExportedAdaptivePredictor` moves along its front with AdaptivePredictor's `BudgetPolicy`: each
frame runs the export the policy chose (every session is loaded up front, so a switch costs
nothing), and its frames are AdaptivePredictor's `Frame` records, which the stream benchmark
reads alike.
"""
import datetime
import glob
import itertools
import json
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..benchmark.timing import cpu_description, time_call
from ..evaluation.query_table import metric_of, pareto_front
from ..modeling.mask_paste import BoxPastedMasks
from .adaptive import BudgetPolicy, Frame, Stopwatch
from .latency import configuration_of, describe

BACKENDS = ("onnxruntime", "torchscript")


class ExportedPredictor:
    """One exported configuration. description: the <name>.json export_width wrote; backend:
    "onnxruntime" (the .onnx file) or "torchscript" (the .ts file); threads: intra-op threads
    (ONNX Runtime; default torch's current count)."""

    def __init__(self, description: str, backend: str = "onnxruntime", threads: int = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: choose from {list(BACKENDS)}")
        with open(description) as f:
            self.description = json.load(f)
        file_key = "onnx" if backend == "onnxruntime" else "torchscript"
        if file_key not in self.description["files"]:
            raise ValueError(f"{description} has no {file_key} export (exported: {sorted(self.description['files'])}); "
                             f"export it with tools/export_width.py --formats {file_key}")
        path = os.path.join(os.path.dirname(description), self.description["files"][file_key])
        self.backend = backend
        self.threads = threads or torch.get_num_threads()
        self.width, self.resolution_scale = self.description["width"], self.description["resolution_scale"]
        self.resize = T.ResizeShortestEdge(self.description["min_size_test"], self.description["max_size_test"])
        if backend == "onnxruntime":
            try:
                import onnxruntime
            except ImportError:
                raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            self.module = torch.jit.load(path, map_location="cpu").eval()

    def _run(self, image: torch.Tensor):
        if self.backend == "onnxruntime":
            return [torch.from_numpy(o) for o in self.session.run(None, {"image": image.numpy()})]
        with torch.no_grad():
            torch.set_num_threads(self.threads)
            return list(self.module(image))

    def __call__(self, original_image: np.ndarray) -> Dict:
        image = original_image[:, :, ::-1] if self.description["input_format"] == "RGB" else original_image
        resized = self.resize.get_transform(image).apply_image(image)
        outputs = dict(zip(self.description["outputs"],
                           self._run(torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)))))
        instances = Instances(resized.shape[:2], pred_boxes=Boxes(outputs["boxes"]), scores=outputs["scores"],
                              pred_classes=outputs["classes"])
        if "masks" in outputs:
            instances.pred_masks = BoxPastedMasks(outputs["masks"][:, 0])
        return {"instances": detector_postprocess(instances, *original_image.shape[:2])}


ExportKey = Tuple[float, float]  # (width, resolution scale) of an export


def load_exports(folder: str, backend: str = "onnxruntime", threads: int = None) -> Dict[ExportKey, ExportedPredictor]:
    """Every export in `folder` (its <name>.json files), by (width, resolution scale)."""
    paths = sorted(glob.glob(os.path.join(folder, "*.json")))
    predictors = {}
    for path in paths:
        with open(path) as f:
            if "files" not in json.load(f):
                continue  # another JSON (e.g. the exports' latency table)
        predictor = ExportedPredictor(path, backend, threads)
        predictors[(float(predictor.width), float(predictor.resolution_scale))] = predictor
    if not predictors:
        raise ValueError(f"no exports in {folder!r}: write them with tools/export_width.py --output {folder}")
    return predictors


def profile_exported(predictors: Dict[ExportKey, ExportedPredictor], sweep: Sequence[Dict], images: Sequence[np.ndarray],
                     *, warmup: int = 3, repeats_per_image: int = 1, metric=("bbox", "AP"),
                     timer: Callable = time_call) -> Dict:
    """The latency table of the exports: each sweep record of an exported (width, scale) (at the
    config's proposal count: the count exports run at) with the median time of its predictor on
    `images`, and the front by milliseconds."""
    records = []
    for record in sweep:
        width, scale, _ = configuration_of(record)
        predictor = predictors.get((width, scale))
        if predictor is None or (record is not _at_config_proposals(sweep, width, scale)):
            continue
        inputs = itertools.cycle(images)
        stats = timer(lambda: predictor(next(inputs)), "cpu", warmup, len(images) * repeats_per_image)
        records.append({**record, "threads": predictor.threads, "latency_ms": stats["median_ms"],
                        "latency_iqr_ms": stats["iqr_ms"], "latency_min_ms": stats["min_ms"],
                        "latency_max_ms": stats["max_ms"], "latency_calls": stats["repeats"]})
    missing = sorted(set(predictors) - {configuration_of(r)[:2] for r in records})
    if missing:
        raise ValueError(f"the sweep has no record for the export at {describe(missing[0])}: sweep that width and scale "
                         "(MUTUALNET.TEST.WIDTHS, RESOLUTION_SCALES) with the weights the exports come from")
    threads = max(r["threads"] for r in records)
    front = pareto_front(records, metric, cost="latency_ms")
    backends = sorted({p.backend for p in predictors.values()})
    return {"device": "cpu", "device_name": cpu_description(), "torch_threads": threads,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "setting": f"exported ({', '.join(backends)})",
            "num_images": len(images), "warmup": warmup, "repeats_per_image": repeats_per_image,
            "metric": list(metric), "configurations": records, "front": front, "fronts_by_threads": {str(threads): front}}


def _at_config_proposals(sweep: Sequence[Dict], width: float, scale: float) -> Dict:
    """The sweep's record of (width, scale) with the most proposals: the config's count, which an
    export keeps (a sweep without the knob has one record per (width, scale))."""
    same = [r for r in sweep if configuration_of(r)[:2] == (width, scale)]
    return max(same, key=lambda r: r.get("proposals") or 0)


class ExportedAdaptivePredictor:
    """AdaptivePredictor for exported configurations: `predictor(image_bgr)` -> the outputs of the
    export its policy chose for a latency budget in milliseconds (see the module docstring).

    latency_table: from `profile_exported`, on this machine, with these exports.
    policy: defaults to `BudgetPolicy(table["front"], budget_ms)`; any object with `current`,
        `front` and `observe(ms)` (e.g. adaptive.FixedPolicy).
    clock: seconds as a float; injectable so tests can simulate time.
    """

    def __init__(self, predictors: Dict[ExportKey, ExportedPredictor], latency_table: Dict, budget_ms: float, *,
                 policy=None, clock: Callable[[], float] = time.perf_counter):
        self.predictors, self.table, self.budget_ms = predictors, latency_table, float(budget_ms)
        self.metric = tuple(latency_table["metric"])
        self.policy = policy or BudgetPolicy(latency_table["front"], budget_ms, metric=self.metric)
        missing = [configuration_of(r) for r in self.policy.front if configuration_of(r)[:2] not in predictors]
        if missing:
            raise ValueError(f"the latency table's front has {describe(missing[0])}, which is not among the exports "
                             f"({sorted(predictors)}): profile these exports (tools/adaptive_stream_benchmark.py --exports)")
        self.stopwatch = Stopwatch("cpu", clock)
        self.running = None
        self.frames: List[Frame] = []

    @property
    def last(self) -> Frame:
        return self.frames[-1]

    def __call__(self, original_image: np.ndarray) -> Dict:
        self.stopwatch.start()
        record = self.policy.current
        width, scale, _ = configuration_of(record)
        predictor = self.predictors[(width, scale)]
        switched = self.running is not None and self.running != (width, scale)
        self.running = (width, scale)
        outputs = predictor(original_image)
        latency_ms = self.stopwatch.elapsed_ms()
        self.frames.append(Frame(len(self.frames), width, scale, predictor.threads, latency_ms, 0.0, switched,
                                 latency_ms <= self.budget_ms, metric_of(record, self.metric)))
        self.policy.observe(latency_ms)
        return outputs
