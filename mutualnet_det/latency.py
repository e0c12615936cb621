"""The latency table: every (width, resolution scale) of a width sweep timed on this device.

GFLOPs predict time poorly on small CPU models (the RoI heads cost the same at every width, and
narrow convolutions run far from peak), so a runtime budget in milliseconds needs times measured
where the model runs. For each configuration of a sweep (`width_sweep.json`), `profile_latency`
sets the width and loads its banked BN statistics (no calibration: a missing entry is an error),
feeds validation images resized by the test-time resize x the configuration's scale, and times
one image per call with `mutualnet_det.benchmark.time_call` (warm-up, then median and IQR of the
calls; synchronised on CUDA). The table keeps the sweep's AP and GFLOPs beside the milliseconds,
and the Pareto front by milliseconds, which `AdaptivePredictor` moves along.

latency_table.json:
    {"device", "device_name", "torch_threads", "load_average_at_start", "date", "setting" (which parts are slimmable),
     "weights", "sweep", "num_images", "warmup", "repeats_per_image", "metric",
     "switch": time_call statistics of one configuration switch (ms),
     "configurations": sweep records + latency_ms (median), latency_iqr_ms, latency_min_ms,
                       latency_max_ms, latency_calls,
     "front": the configurations on the (latency_ms, metric) Pareto front, fastest first}
"""
import csv
import datetime
import itertools
import json
import os
import platform
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .benchmark import time_call
from .bn_calibration import bn_layers, use_configuration
from .data.rescale import scaled_test_input
from .evaluation.query_table import metric_of, pareto_front
from .flops import backbone_gflops
from .width import slimmable_layers, validate_width, width_range_of

TABLE_KEYS = ("device", "setting", "configurations", "front", "metric")
LATENCY_KEYS = ("latency_ms", "latency_iqr_ms", "latency_min_ms", "latency_max_ms", "latency_calls")
# the sweep's backbone GFLOPs must match the model's to this relative tolerance (another model's
# sweep differs by far more: a width or depth changes them by tens of percent)
GFLOPS_TOLERANCE = 0.02

Configuration = Tuple[float, float]  # (width, resolution scale)


def configuration_of(record: Dict) -> Configuration:
    return float(record["width"]), float(record["resolution_scale"])


def describe(configuration: Configuration) -> str:
    return f"width {configuration[0]:g}, scale {configuration[1]:g}"


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def slimmable_setting(model: nn.Module) -> str:
    """Which parts of the model change with the width (what a latency table was measured with)."""
    slimmable = {id(layer) for layer in slimmable_layers(model)}
    outside = sorted({name.split(".")[0] for name, module in model.named_modules()
                      if id(module) in slimmable and not name.startswith("backbone.")})
    return "backbone-only" if not outside else "backbone+" + "+".join(outside)


def check_banked(model: nn.Module, configurations: Sequence[Configuration]) -> None:
    """Raise ValueError unless every configuration is in the model's width range and (for a model
    with BN) has statistics in its BN stats bank: run-time switches never calibrate."""
    width_range = width_range_of(model)
    for configuration in configurations:
        validate_width(configuration[0], width_range)
    if not bn_layers(model):
        return
    bank = getattr(model, "bn_stats_bank", None)
    banked = bank.configurations() if bank is not None else []
    missing = [c for c in configurations if bank is None or c not in bank]
    if missing:
        raise ValueError(f"no banked BN statistics for {describe(missing[0])}"
                         + (f" (and {len(missing) - 1} more configurations)" if len(missing) > 1 else "")
                         + f" in this checkpoint (banked: {banked}); the latency table or sweep does not "
                         "belong to these weights, or they were saved before BN calibration")


def validation_images(cfg, num_images: int = None) -> List[np.ndarray]:
    """The first `num_images` (default all) images of cfg.DATASETS.TEST[0], BGR, original size."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    dataset = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    return [read_image(d["file_name"], format="BGR") for d in dataset[:num_images]]


def check_sweep_matches_model(cfg, model: nn.Module, sweep: Sequence[Dict], images: Sequence[np.ndarray]) -> None:
    """Raise ValueError when the sweep's backbone GFLOPs at its widest and narrowest width (largest
    scale) differ from this model's, on the first MUTUALNET.TEST.FLOPS_NUM_IMAGES images (the ones
    the sweep counted): the sweep was made with another model."""
    count = max(1, min(len(images), cfg.MUTUALNET.TEST.FLOPS_NUM_IMAGES))
    largest_scale = max(r["resolution_scale"] for r in sweep)
    at_scale = [r for r in sweep if r["resolution_scale"] == largest_scale]
    for record in {id(r): r for r in (max(at_scale, key=lambda r: r["width"]),
                                      min(at_scale, key=lambda r: r["width"]))}.values():
        width, scale = configuration_of(record)
        use_configuration(model, width, scale)
        measured = float(np.mean([backbone_gflops(model, model.preprocess_image([scaled_test_input(image, cfg, scale)]).tensor)
                                  for image in images[:count]]))
        if abs(measured - record["gflops_backbone"]) > GFLOPS_TOLERANCE * record["gflops_backbone"]:
            raise ValueError(f"the sweep does not match this model: at {describe((width, scale))} it records "
                             f"{record['gflops_backbone']:.3f} backbone GFLOPs, the model measures {measured:.3f} "
                             "(another config or input size?)")


def measure_switch(model: nn.Module, configurations: Sequence[Configuration], warmup: int = 2,
                   repeats: int = 20, timer: Callable = time_call) -> Dict[str, float]:
    """time_call statistics (ms) of one switch: set the width and load the banked BN statistics,
    cycling through `configurations` so every call changes configuration."""
    cycle = itertools.cycle(configurations if len(configurations) > 1 else list(configurations) * 2)
    return timer(lambda: use_configuration(model, *next(cycle)), model_device(model), warmup, repeats)


@torch.no_grad()
def profile_latency(cfg, model: nn.Module, sweep: Sequence[Dict], images: Sequence[np.ndarray], *,
                    warmup: int = 3, repeats_per_image: int = 1, metric=("bbox", "AP"),
                    timer: Callable = time_call, progress: bool = True) -> Dict:
    """Time every configuration of `sweep` on this device; returns the latency table (see module doc).

    images: validation images (HWC, BGR as DefaultPredictor takes them) at their original size;
    each timed call runs one of them, cycling, `repeats_per_image` times each after `warmup` calls.
    timer: `time_call`'s signature (function, device, warmup, repeats) -> statistics in ms.
    """
    if not sweep:
        raise ValueError("the sweep is empty: no configuration to time")
    if not images:
        raise ValueError("no images to time the model on")
    configurations = list(dict.fromkeys(configuration_of(r) for r in sweep))
    check_banked(model, configurations)
    model.eval()
    device = model_device(model)
    records = []
    for record in tqdm(sweep, desc="timing configurations", disable=not progress):
        width, scale = configuration_of(record)
        use_configuration(model, width, scale)
        inputs = itertools.cycle([scaled_test_input(image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image, cfg, scale)
                                  for image in images])
        stats = timer(lambda: model([next(inputs)]), device, warmup, len(images) * repeats_per_image)
        records.append({**record, "latency_ms": stats["median_ms"], "latency_iqr_ms": stats["iqr_ms"],
                        "latency_min_ms": stats["min_ms"], "latency_max_ms": stats["max_ms"],
                        "latency_calls": stats["repeats"]})
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU x{os.cpu_count()}",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),  # 1, 5, 15 min: other work on the device while timing
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "setting": slimmable_setting(model),
        "num_images": len(images), "warmup": warmup, "repeats_per_image": repeats_per_image,
        "metric": list(metric),
        "switch": measure_switch(model, configurations, timer=timer),
        "configurations": records,
        "front": pareto_front(records, metric, cost="latency_ms"),
    }


CSV_COLUMNS = ("width", "resolution_scale", "latency_ms", "latency_iqr_ms", "gflops", "gflops_backbone")


def write_latency_table(table: Dict, folder: str) -> str:
    """Write latency_table.json and latency_table.csv (one row per configuration, `on_front` 0/1)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "latency_table.json")
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
    metric = tuple(table["metric"])
    front = {configuration_of(r) for r in table["front"]}
    with open(os.path.join(folder, "latency_table.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(CSV_COLUMNS) + [f"{metric[0]}_{metric[1]}", "segm_AP", "on_front"])
        for r in table["configurations"]:
            writer.writerow([r[c] for c in CSV_COLUMNS] + [metric_of(r, metric), r.get("segm", {}).get("AP"),
                                                           int(configuration_of(r) in front)])
    return path


def load_latency_table(path: str) -> Dict:
    """Read a latency_table.json written by tools/profile_latency.py; ValueError when it is not one."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read latency table {path!r}: {err} (write one with tools/profile_latency.py)") from None
    missing = [k for k in TABLE_KEYS if not isinstance(table, dict) or k not in table]
    if missing:
        raise ValueError(f"{path!r} is not a latency table: missing {missing} (write one with tools/profile_latency.py)")
    incomplete = [configuration_of(r) for r in table["configurations"] + table["front"] if "latency_ms" not in r]
    if not table["front"] or incomplete:
        raise ValueError(f"{path!r} is not a latency table: "
                         + (f"{describe(incomplete[0])} has no latency_ms" if incomplete else "empty front"))
    return table


def format_latency_table(table: Dict) -> str:
    from tabulate import tabulate

    metric = tuple(table["metric"])
    front = {configuration_of(r) for r in table["front"]}
    rows = [[r["width"], r["resolution_scale"], r["latency_ms"], r["latency_iqr_ms"], r["gflops"],
             metric_of(r, metric), "*" if configuration_of(r) in front else ""]
            for r in sorted(table["configurations"], key=lambda r: r["latency_ms"])]
    return tabulate(rows, headers=["width", "scale", "ms (median)", "IQR ms", "GFLOPs", f"{metric[0]} {metric[1]}", "front"],
                    floatfmt=".2f")
