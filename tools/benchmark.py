#!/usr/bin/env python
"""Benchmark: inference latency per (width, scale) of the slimmable model, its frozen export and
Detectron2's stock model; backbone latency against FLOPs; training seconds/iteration and peak
memory of single, usnet and mutualnet. Writes JSON and Markdown to benchmarks/results/.

    python tools/benchmark.py [--config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml]
        [--weights output/shapes_mutualnet/model_final.pth] [--train-iters 6]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import mutualnet_det  # noqa: F401
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from mutualnet_det import add_mutualnet_config, freeze_width
from mutualnet_det.benchmark import time_call
from mutualnet_det.bn_calibration import use_configuration
from mutualnet_det.checkpoint import load_weights
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.flops import backbone_gflops, model_gflops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (1.0, 0.75, 0.5, 0.25)
SCALES = (1.0, 0.6)


def load_cfg(path, opts=()):
    cfg = get_cfg()
    add_mutualnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def inference_benchmark(cfg, weights, device, repeats):
    model = MutualNetTrainer.build_model(cfg).to(device).eval()
    if weights and os.path.isfile(weights):
        load_weights(model, weights)
    train_batches = lambda: iter(MutualNetTrainer.build_train_loader(cfg))  # noqa: E731
    image = read_image(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"], format="BGR")
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE, stock_cfg.MODEL.BACKBONE.NAME = "GeneralizedRCNN", "build_resnet_fpn_backbone"
    stock = build_model(stock_cfg).to(device).eval()
    use_configuration(model, 1.0, 1.0, train_batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
    stock.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("bn_stats_bank.")})
    rows, backbone_rows = [], []
    for scale in SCALES:
        inputs = scaled_test_input(image, cfg, scale)
        tensor = model.preprocess_image([inputs]).tensor
        for width in WIDTHS:
            use_configuration(model, width, scale, train_batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
            frozen = freeze_width(model, width, scale).eval()
            with torch.no_grad():
                row = {"width": width, "resolution_scale": scale, "gflops": model_gflops(model, inputs),
                       "slimmable": time_call(lambda: model([inputs]), device, repeats=repeats),
                       "frozen": time_call(lambda: frozen([inputs]), device, repeats=repeats)}
                if width == 1.0:
                    row["stock_detectron2"] = time_call(lambda: stock([inputs]), device, repeats=repeats)
                rows.append(row)
                if scale == 1.0:
                    backbone_rows.append({"width": width, "gflops": backbone_gflops(model, tensor),
                                          "slimmable": time_call(lambda: model.backbone(tensor), device, repeats=repeats),
                                          "frozen": time_call(lambda: frozen.backbone(tensor), device, repeats=repeats)})
    return rows, backbone_rows


def training_benchmark(config_file, method, iters, device):
    """Seconds per iteration and peak memory of one method, in a fresh process (clean peak)."""
    code = f"""
import json, sys, time, torch
sys.argv = ['x']
import mutualnet_det
from detectron2.utils.events import EventStorage
from mutualnet_det.benchmark import peak_memory_mb, synchronize
from mutualnet_det.engine.trainer import MutualNetTrainer
sys.path.insert(0, {os.path.join(REPO, 'tools')!r})
from benchmark import load_cfg
cfg = load_cfg({config_file!r}, ['MUTUALNET.TRAIN.METHOD', {method!r}, 'MODEL.DEVICE', {device!r},
               'OUTPUT_DIR', '/tmp/mutualnet_benchmark_{method}', 'DATALOADER.NUM_WORKERS', 0])
trainer = MutualNetTrainer(cfg)
step = trainer._trainer
with EventStorage(0):
    for i in range(2):  # warm-up
        step.iter = i; step.run_step()
    synchronize({device!r}); start = time.perf_counter()
    for i in range(2, 2 + {iters}):
        step.iter = i; step.run_step()
    synchronize({device!r})
print(json.dumps({{"seconds_per_iter": (time.perf_counter() - start) / {iters}, "peak_memory_mb": peak_memory_mb({device!r})}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(report):
    lines = [f"# Benchmark {report['date']} on {report['device_name']}", "",
             "Inference latency (median ms over repeats; one image):", "",
             "| width | scale | GFLOPs | slimmable | frozen | stock Detectron2 | slimmable / frozen |", "|---|---|---|---|---|---|---|"]
    for r in report["inference"]:
        stock = r.get("stock_detectron2", {}).get("median_ms")
        lines.append(f"| {r['width']:g} | {r['resolution_scale']:g} | {r['gflops']:.2f} | {r['slimmable']['median_ms']:.1f} | "
                     f"{r['frozen']['median_ms']:.1f} | {'' if stock is None else f'{stock:.1f}'} | "
                     f"{r['slimmable']['median_ms'] / r['frozen']['median_ms']:.2f} |")
    lines += ["", "Backbone latency against FLOPs share (width 1.0 = 1):", "",
              "| width | FLOPs share | latency share (slimmable) | latency share (frozen) | latency / FLOPs share |", "|---|---|---|---|---|"]
    full = report["backbone"][0]
    for r in report["backbone"]:
        flops_share = r["gflops"] / full["gflops"]
        latency_share = r["slimmable"]["median_ms"] / full["slimmable"]["median_ms"]
        lines.append(f"| {r['width']:g} | {flops_share:.3f} | {latency_share:.3f} | "
                     f"{r['frozen']['median_ms'] / full['frozen']['median_ms']:.3f} | {latency_share / flops_share:.2f} |")
    lines += ["", "Training (same batch; cohort of 2 + NUM_RANDOM_WIDTHS members):", "",
              "| method | s / iteration | peak memory (MB) |", "|---|---|---|"]
    for method, r in report["training"].items():
        lines.append(f"| {method} | {r['seconds_per_iter']:.2f} | {r['peak_memory_mb']:.0f} |")
    t = report["training"]
    i1 = next(r for r in report["inference"] if r["width"] == 1.0 and r["resolution_scale"] == 1.0)
    lines += ["", "Targets (ratios measured in this run):", "",
              f"- slimmable at width 1.0 / stock Detectron2: {i1['slimmable']['median_ms'] / i1['stock_detectron2']['median_ms']:.3f} (target <= 1.05)",
              "- slimmable / frozen per configuration: see the table (target <= 1.10)",
              f"- mutualnet / usnet iteration: {t['mutualnet']['seconds_per_iter'] / t['usnet']['seconds_per_iter']:.2f} (target <= 0.8)",
              f"- mutualnet / single iteration: {t['mutualnet']['seconds_per_iter'] / t['single']['seconds_per_iter']:.2f} (target <= 2.2)"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "Shapes", "mutualnet_mask_rcnn_R_18_FPN.yaml"))
    parser.add_argument("--weights", default=os.path.join(REPO, "output", "shapes_mutualnet", "model_final.pth"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-iters", type=int, default=6)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args()
    cfg = load_cfg(args.config_file, ["MODEL.DEVICE", args.device])
    inference, backbone = inference_benchmark(cfg, args.weights, args.device, args.repeats)
    training = {m: training_benchmark(args.config_file, m, args.train_iters, args.device) for m in ("single", "usnet", "mutualnet")}
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} (torch threads {torch.get_num_threads()})"
    report = {"date": datetime.date.today().isoformat(), "device": args.device, "device_name": device_name,
              "config": args.config_file, "weights": args.weights if os.path.isfile(args.weights) else None,
              "inference": inference, "backbone": backbone, "training": training}
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.join(args.output, f"{args.device.split(':')[0]}_{report['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    print(f"written to {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
