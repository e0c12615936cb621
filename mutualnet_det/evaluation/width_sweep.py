"""Evaluate a slimmable model at every (width, resolution scale, proposal count) of MUTUALNET.TEST.

For each configuration: set the width and its calibrated BN statistics (calibrating first when
the checkpoint's bank lacks them) and the proposals kept per image, rescale the test inputs, run
Detectron2's COCOEvaluator, and measure GFLOPs and parameters used. Results go to
OUTPUT_DIR/inference/<dataset>/width_sweep.{json,csv} (the newest sweep; each sweep also keeps its own
width_sweep_<date>T<time>.{json,csv}).
"""
import csv
import datetime
import itertools
import json
import logging
import os
from typing import Callable, Dict, List

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.utils import comm
from tabulate import tabulate
from tqdm import tqdm

from ..bn_calibration import use_configuration
from ..config import training_recipe
from ..data.rescale import scaled_test_cfg
from ..flops import configuration_cost
from ..modeling.proposals import set_proposals

logger = logging.getLogger(__name__)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def sweep_configurations(cfg):
    """All (width, resolution scale) pairs, widest and largest first."""
    widths = sorted({float(w) for w in cfg.MUTUALNET.TEST.WIDTHS}, reverse=True)
    scales = sorted({float(s) for s in cfg.MUTUALNET.TEST.RESOLUTION_SCALES}, reverse=True)
    return list(itertools.product(widths, scales))


def sweep_proposals(cfg) -> List[int]:
    """The proposal counts swept (most first): MUTUALNET.TEST.PROPOSALS, else the config's own."""
    return sorted({int(c) for c in cfg.MUTUALNET.TEST.PROPOSALS} or {cfg.MODEL.RPN.POST_NMS_TOPK_TEST}, reverse=True)


def build_evaluator(cfg, dataset_name, output_folder=None):
    DatasetCatalog.get(dataset_name)  # generate the embedded dataset (and its json) if needed
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)


def evaluate_configuration(cfg, model, dataset_name, width, scale, calibration_batches: Callable = None,
                           proposals: int = None) -> Dict:
    """One sweep record: COCO metrics, GFLOPs and parameters of `model` at (width, scale) with
    `proposals` per image (None: the config's)."""
    stats_source = use_configuration(model, width, scale, calibration_batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
    proposals = set_proposals(model, proposals)
    scaled_cfg = scaled_test_cfg(cfg, scale)
    loader = build_detection_test_loader(scaled_cfg, dataset_name)
    flops_inputs = list(itertools.islice((batch[0] for batch in loader), cfg.MUTUALNET.TEST.FLOPS_NUM_IMAGES))
    record = {"width": width, "resolution_scale": scale, "proposals": proposals, "bn_stats": stats_source,
              **configuration_cost(model, flops_inputs),
              # how the evaluated weights were trained: their checkpoint's record, else this config's
              "trained_as": getattr(model, "training_recipe", None) or training_recipe(cfg)}
    progress = tqdm(loader, desc=f"{dataset_name} w={width:g} s={scale:g} p={proposals}", leave=False,
                    disable=not comm.is_main_process())
    results = inference_on_dataset(model, progress, build_evaluator(cfg, dataset_name))
    for task in ("bbox", "segm"):
        if task in results:
            record[task] = dict(results[task])
    return record


def _free_stem(folder: str, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ... if a file of that stem exists (two sweeps in one second)."""
    candidate, number = stem, 1
    while os.path.exists(os.path.join(folder, candidate + ".json")):
        number += 1
        candidate = f"{stem}_{number}"
    return candidate


def write_sweep(records: List[Dict], folder: str) -> str:
    """Write this sweep as width_sweep_<date>T<time>.{csv,json} into `folder`, and the same as
    width_sweep.{csv,json}, the newest sweep under the usual name; return that json's path. An
    earlier sweep keeps its own stamped files. Each json is written last and whole (renamed into
    place): its presence means a finished sweep."""
    os.makedirs(folder, exist_ok=True)
    columns = ["width", "resolution_scale", "proposals", "gflops", "gflops_backbone", "params", "bn_stats"]
    rows = [[r.get(c) for c in columns] + [r.get(t, {}).get(m) for t in ("bbox", "segm") for m in METRICS]
            for r in records]
    stamped = _free_stem(folder, "width_sweep_" + datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S"))
    for stem in (stamped, "width_sweep"):
        with open(os.path.join(folder, stem + ".csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns + [f"{t}_{m}" for t in ("bbox", "segm") for m in METRICS])
            writer.writerows(rows)
        json_path = os.path.join(folder, stem + ".json")
        with open(json_path + ".tmp", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(json_path + ".tmp", json_path)
    return json_path


def format_sweep(records: List[Dict]) -> str:
    headers = ["width", "scale", "proposals", "GFLOPs", "GFLOPs bb", "params (M)", "box AP", "APs", "APl", "mask AP",
               "APs", "APl"]
    rows = [[r["width"], r["resolution_scale"], r.get("proposals"), r["gflops"], r["gflops_backbone"], r["params"] / 1e6]
            + [r.get(t, {}).get(m, float("nan")) for t in ("bbox", "segm") for m in ("AP", "APs", "APl")]
            for r in records]
    return tabulate(rows, headers=headers, floatfmt=".2f")


def run_width_sweep(cfg, model, calibration_batches: Callable = None) -> Dict[str, List[Dict]]:
    """Sweep every MUTUALNET.TEST configuration on every DATASETS.TEST; returns records per dataset.

    calibration_batches: `resolution_scale -> iterator of calibration batches`
    (`bn_calibration.calibration_batches(cfg)`), used only for configurations missing from the
    model's BN stats bank.
    """
    all_records = {}
    configurations = [(w, s, p) for w, s in sweep_configurations(cfg) for p in sweep_proposals(cfg)]
    for dataset_name in cfg.DATASETS.TEST:
        records = []
        for width, scale, proposals in tqdm(configurations, desc=f"width sweep on {dataset_name}",
                                            disable=not comm.is_main_process()):
            records.append(evaluate_configuration(cfg, model, dataset_name, width, scale, calibration_batches,
                                                  proposals))
        set_proposals(model, None)  # the config's count again for whoever uses the model next
        if comm.is_main_process():
            path = write_sweep(records, os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))
            logger.info(f"Width sweep on {dataset_name} (written to {path}):\n" + format_sweep(records))
        all_records[dataset_name] = records
    return all_records
