"""The latency table: every (width, resolution scale) of a width sweep timed on this device, at
each torch thread count asked for.

GFLOPs predict time poorly on small CPU models (the RoI heads cost the same at every width, and
narrow convolutions run far from peak), so a runtime budget in milliseconds needs times measured
where the model runs. For each configuration of a sweep (`width_sweep.json`), `profile_latency`
sets the width and loads its banked BN statistics (no calibration: a missing entry is an error),
feeds validation images resized by the test-time resize x the configuration's scale, and times
one image per call with `mutualnet_det.benchmark.timing.time_call` (warm-up, then median and IQR of the
calls; synchronised on CUDA). The table keeps the sweep's AP and GFLOPs beside the milliseconds,
and the Pareto front by milliseconds, which `AdaptivePredictor` moves along.

On a CPU the torch intra-op thread count is a runtime knob like width and scale: with all cores
in use, another process busy on one of them slows every parallel region to the pace of the thread
that shares its core, and fewer threads run faster. So the table can be profiled at several
thread counts (`threads`): each configuration is timed at each count, and there is one front per
count, which `AdaptivePredictor` switches between as other processes take cores.

latency_table.json:
    {"device", "device_name", "torch_threads" (the largest thread count profiled), "load_average_at_start",
     "date", "setting" (which parts are slimmable), "weights", "sweep", "num_images", "warmup",
     "repeats_per_image", "metric",
     "switch": time_call statistics of one configuration switch (ms), at torch_threads,
     "configurations": one per (width, scale, thread count): sweep records + threads (torch
                       intra-op threads while timed), latency_ms (median), latency_iqr_ms,
                       latency_min_ms, latency_max_ms, latency_calls,
     "front": the configurations at torch_threads on the (latency_ms, metric) Pareto front, fastest first,
     "fronts_by_threads": {"<thread count>": the front at that count, fastest first} for each count profiled}
A table written before thread counts were profiled has no "threads" in its records and no
"fronts_by_threads": its records count as timed at its torch_threads (`threads_of`,
`fronts_by_threads`).
"""
import contextlib
import csv
import datetime
import itertools
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..benchmark.timing import cpu_description, time_call
from ..bn_calibration import bn_layers, use_configuration
from ..data.rescale import scaled_test_input
from ..evaluation.query_table import metric_of, pareto_front
from ..flops import backbone_gflops
from ..modeling.proposals import set_proposals
from ..width import slimmable_layers, validate_width, width_range_of

TABLE_KEYS = ("device", "setting", "configurations", "front", "metric")
LATENCY_KEYS = ("latency_ms", "latency_iqr_ms", "latency_min_ms", "latency_max_ms", "latency_calls")
# the sweep's backbone GFLOPs must match the model's to this relative tolerance (another model's
# sweep differs by far more: a width or depth changes them by tens of percent)
GFLOPS_TOLERANCE = 0.02

# (width, resolution scale, proposals per image); proposals None: the config's (records of sweeps
# made before the proposal count was a knob have none)
Configuration = Tuple[float, float, Optional[int]]


def configuration_of(record: Dict) -> Configuration:
    proposals = record.get("proposals")
    return float(record["width"]), float(record["resolution_scale"]), None if proposals is None else int(proposals)


def apply_configuration(model: nn.Module, configuration: Configuration) -> None:
    """Set the width, its banked BN statistics (no calibration: a missing entry is an error) and
    the proposal count of a configuration."""
    use_configuration(model, configuration[0], configuration[1])
    set_proposals(model, configuration[2] if len(configuration) > 2 else None)


def threads_of(record: Dict, table: Dict) -> int:
    """The torch thread count a table record was timed at (for a table written before thread
    counts were profiled: the table's torch_threads; for a hand-made one without either: torch's
    current count)."""
    return int(record.get("threads", table.get("torch_threads", torch.get_num_threads())))


def fronts_by_threads(table: Dict) -> Dict[int, List[Dict]]:
    """{thread count: the table's front at that count}, fewest threads first; one entry for a table
    profiled at one thread count (or written before thread counts were profiled)."""
    if "fronts_by_threads" not in table:
        return {threads_of(table["front"][0], table): table["front"]}
    return {int(threads): table["fronts_by_threads"][threads] for threads in sorted(table["fronts_by_threads"], key=int)}


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to `count` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def describe(configuration: Configuration) -> str:
    proposals = configuration[2] if len(configuration) > 2 else None
    return f"width {configuration[0]:g}, scale {configuration[1]:g}" + (f", {proposals} proposals" if proposals else "")


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
    missing = [c for c in configurations if bank is None or tuple(c[:2]) not in bank]
    if missing:
        raise ValueError(f"no banked BN statistics for {describe(missing[0])}"
                         + (f" (and {len(missing) - 1} more configurations)" if len(missing) > 1 else "")
                         + f" in this checkpoint (banked: {banked}); the latency table or sweep does not "
                         "belong to these weights, or they were saved before BN calibration")


def load_trained(config_file: str, opts: Sequence = (), weights: str = None):
    """(cfg, model) of a trained config, ready to time or run: the config file with the KEY,
    VALUE `opts`, validated and frozen; MODEL.WEIGHTS = `weights`, else the config's, else
    <OUTPUT_DIR>/model_final.pth (where training left it); the model built, its weights and BN
    stats bank loaded (refusing a checkpoint that does not fit), in eval mode.
    ValueError when the config file does not exist; CheckpointError on bad weights."""
    from ..checkpoint import load_weights
    from ..config import load_config
    from ..engine.trainer import MutualNetTrainer

    if not os.path.isfile(config_file):
        raise ValueError(f"config file {config_file!r} does not exist")
    cfg = load_config(config_file, opts)  # unknown keys, bad values, unregistered datasets: named here
    cfg.MODEL.WEIGHTS = weights or cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.freeze()
    model = MutualNetTrainer.build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, cfg)
    return cfg, model.eval()


def default_sweep_path(cfg) -> str:
    """Where `train_net.py --eval-only` writes the width sweep of cfg.DATASETS.TEST[0]."""
    return os.path.join(cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0], "width_sweep.json")


def default_latency_table_path(cfg) -> str:
    """Where tools/profile_latency.py writes the latency table by default: beside the sweep."""
    return os.path.join(os.path.dirname(default_sweep_path(cfg)), "latency_table.json")


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
        width, scale, _ = configuration_of(record)
        use_configuration(model, width, scale)
        measured = float(np.mean([backbone_gflops(model, model.preprocess_image([scaled_test_input(image, cfg, scale)]).tensor)
                                  for image in images[:count]]))
        if abs(measured - record["gflops_backbone"]) > GFLOPS_TOLERANCE * record["gflops_backbone"]:
            raise ValueError(f"the sweep does not match this model: at {describe((width, scale))} it records "
                             f"{record['gflops_backbone']:.3f} backbone GFLOPs, the model measures {measured:.3f} "
                             "(another config or input size?)")


def measure_switch(model: nn.Module, configurations: Sequence[Configuration], warmup: int = 2,
                   repeats: int = 20, timer: Callable = time_call) -> Dict[str, float]:
    """time_call statistics (ms) of one switch: set the width, load the banked BN statistics and
    set the proposal count, cycling through `configurations` so every call changes configuration.
    The norms' re-fold into the convolutions (MUTUALNET.TEST.FOLD_NORMS) happens in the next model
    call, not here."""
    cycle = itertools.cycle(configurations if len(configurations) > 1 else list(configurations) * 2)
    return timer(lambda: apply_configuration(model, next(cycle)), model_device(model), warmup, repeats)


def _timed(cfg, model: nn.Module, record: Dict, images: Sequence[np.ndarray], warmup: int, repeats: int,
           timer: Callable) -> Dict:
    """A sweep record + its latency (ms) at torch's current thread count."""
    configuration = configuration_of(record)
    apply_configuration(model, configuration)
    scale = configuration[1]
    inputs = itertools.cycle([scaled_test_input(image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image, cfg, scale)
                              for image in images])
    stats = timer(lambda: model([next(inputs)]), model_device(model), warmup, repeats)
    return {**record, "threads": torch.get_num_threads(), "latency_ms": stats["median_ms"],
            "latency_iqr_ms": stats["iqr_ms"], "latency_min_ms": stats["min_ms"], "latency_max_ms": stats["max_ms"],
            "latency_calls": stats["repeats"]}


@torch.no_grad()
def profile_latency(cfg, model: nn.Module, sweep: Sequence[Dict], images: Sequence[np.ndarray], *,
                    threads: Sequence[int] = None, warmup: int = 3, repeats_per_image: int = 1,
                    metric=("bbox", "AP"), timer: Callable = time_call, progress: bool = True) -> Dict:
    """Time every configuration of `sweep` on this device; returns the latency table (see module doc).

    images: validation images (HWC, BGR as DefaultPredictor takes them) at their original size;
    each timed call runs one of them, cycling, `repeats_per_image` times each after `warmup` calls.
    threads: torch intra-op thread counts to time every configuration at (default: the current
        count); torch's count is restored afterwards.
    timer: `time_call`'s signature (function, device, warmup, repeats) -> statistics in ms.
    """
    if not sweep:
        raise ValueError("the sweep is empty: no configuration to time")
    if not images:
        raise ValueError("no images to time the model on")
    thread_counts = sorted(set(threads)) if threads else [torch.get_num_threads()]
    if thread_counts[0] < 1:
        raise ValueError(f"torch thread counts must be >= 1, got {list(threads)}")
    configurations = list(dict.fromkeys(configuration_of(r) for r in sweep))
    check_banked(model, configurations)
    model.eval()
    device = model_device(model)
    if len(thread_counts) > 1 and device.type != "cpu":
        raise ValueError(f"torch thread counts {thread_counts} asked for a model on {device.type}: the CPU thread "
                         "count does not set its speed there; profile without --threads")
    load_average_at_start = os.getloadavg()  # 1, 5, 15 min: other work on the device while timing
    records = []
    for count in thread_counts:
        with torch_threads(count):
            records += [_timed(cfg, model, record, images, warmup, len(images) * repeats_per_image, timer)
                        for record in tqdm(sweep, desc=f"timing configurations at {count} thread(s)",
                                           disable=not progress)]
    with torch_threads(thread_counts[-1]):
        switch = measure_switch(model, configurations, timer=timer)
    fronts = {str(count): pareto_front([r for r in records if r["threads"] == count], metric, cost="latency_ms")
              for count in thread_counts}
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description(),
        "torch_threads": thread_counts[-1],
        "load_average_at_start": load_average_at_start,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "setting": slimmable_setting(model),
        "num_images": len(images), "warmup": warmup, "repeats_per_image": repeats_per_image,
        "metric": list(metric),
        "switch": switch,
        "configurations": records,
        "front": fronts[str(thread_counts[-1])],
        "fronts_by_threads": fronts,
    }


CSV_COLUMNS = ("width", "resolution_scale", "proposals", "threads", "latency_ms", "latency_iqr_ms", "gflops", "gflops_backbone")


def _on_a_front(table: Dict) -> Callable[[Dict], bool]:
    """Whether a record of table["configurations"] is on the front of its thread count."""
    on_front = {configuration_of(r) + (threads,) for threads, front in fronts_by_threads(table).items() for r in front}
    return lambda record: configuration_of(record) + (threads_of(record, table),) in on_front


def write_latency_table(table: Dict, folder: str) -> str:
    """Write latency_table.json and latency_table.csv (one row per configuration and thread count,
    `on_front` 0/1: on the front of its thread count)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "latency_table.json")
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
    metric = tuple(table["metric"])
    on_front = _on_a_front(table)
    with open(os.path.join(folder, "latency_table.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(CSV_COLUMNS) + [f"{metric[0]}_{metric[1]}", "segm_AP", "on_front"])
        for r in table["configurations"]:
            row = {**r, "threads": threads_of(r, table)}
            writer.writerow([row.get(c) for c in CSV_COLUMNS] + [metric_of(r, metric), r.get("segm", {}).get("AP"),
                                                             int(on_front(r))])
    return path


def _table_problem(table: Dict) -> str:
    """What makes a dict with the table keys not a latency table ("" when nothing)."""
    if not table["front"]:
        return "empty front"
    fronts = table.get("fronts_by_threads")  # absent in a table written before thread counts were profiled
    if fronts is not None and (not isinstance(fronts, dict) or not fronts
                               or not all(str(k).isdigit() and int(k) >= 1 for k in fronts)):
        return f"fronts_by_threads must map thread counts >= 1 to fronts, got {fronts!r:.80}"
    fronts = fronts or {}
    records = table["configurations"] + table["front"] + [r for front in fronts.values() for r in front]
    incomplete = [r for r in records if "latency_ms" not in r]
    if incomplete:
        return f"{describe(configuration_of(incomplete[0]))} has no latency_ms"
    for threads, front in fronts.items():
        if not front:
            return f"the front at {threads} threads is empty"
        elsewhere = [r for r in front if threads_of(r, table) != int(threads)]
        if elsewhere:
            return (f"the front at {threads} threads holds {describe(configuration_of(elsewhere[0]))} "
                    f"timed at {threads_of(elsewhere[0], table)} threads")
    largest = max(fronts, key=int, default=None)
    if largest is not None and [configuration_of(r) for r in fronts[largest]] != [configuration_of(r) for r in table["front"]]:
        return f"its front is not fronts_by_threads[{largest!r}] (the front at the largest thread count)"
    return ""


def load_latency_table(path: str) -> Dict:
    """Read a latency_table.json written by tools/profile_latency.py (also one written before
    thread counts were profiled); ValueError when it is not one."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read latency table {path!r}: {err} (write one with tools/profile_latency.py)") from None
    missing = [k for k in TABLE_KEYS if not isinstance(table, dict) or k not in table]
    if missing:
        raise ValueError(f"{path!r} is not a latency table: missing {missing} (write one with tools/profile_latency.py)")
    problem = _table_problem(table)
    if problem:
        raise ValueError(f"{path!r} is not a latency table: {problem}")
    return table


def format_latency_table(table: Dict) -> str:
    """One row per configuration and thread count, by thread count then ms; `*` on the front of
    its thread count."""
    from tabulate import tabulate

    metric = tuple(table["metric"])
    on_front = _on_a_front(table)
    rows = [[r["width"], r["resolution_scale"], threads_of(r, table), r["latency_ms"], r["latency_iqr_ms"], r["gflops"],
             metric_of(r, metric), "*" if on_front(r) else ""]
            for r in sorted(table["configurations"], key=lambda r: (threads_of(r, table), r["latency_ms"]))]
    return tabulate(rows, headers=["width", "scale", "threads", "ms (median)", "IQR ms", "GFLOPs",
                                   f"{metric[0]} {metric[1]}", "front"], floatfmt=".2f")
