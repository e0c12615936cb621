#!/usr/bin/env python
"""Benchmark: inference latency per (width, scale) of the slimmable model, its frozen export and
Detectron2's stock model; backbone latency against FLOPs; training seconds/iteration and peak
memory of single, usnet and mutualnet. Writes JSON and Markdown to benchmarks/results/.

    python tools/benchmark.py [--config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml]
        [--weights output/shapes_mutualnet/model_final.pth] [--train-iters 6]
    python tools/benchmark.py --slimmable-heads   # backbone-only vs slimmable heads (GFLOPs,
        latency at widths 1.0 and 0.25; s/iteration of single vs MutualNet): slimmable_heads_*.{json,md}
    python tools/benchmark.py --precision [--train-iters 2]  # s/iteration of single, usnet and
        mutualnet in float32 and with SOLVER.AMP.ENABLED (bfloat16 on CPU, float16 on CUDA): precision_*.{json,md}
    python tools/benchmark.py --roi-align [--train-iters 6]  # s/iteration of single, usnet and
        mutualnet with MUTUALNET.CPU_ROI_ALIGN torchvision and gather, alternated twice: roi_align_*.{json,md}
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

import mutualnet_det  # noqa: F401
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from mutualnet_det import add_mutualnet_config, freeze_width
from mutualnet_det.benchmark.timing import cpu_description, time_call, write_report
from mutualnet_det.bn_calibration import calibration_batches, use_configuration
from mutualnet_det.checkpoint import load_weights
from mutualnet_det.config import CPU_ROI_ALIGNS
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.engine.precision import cpu_has_fast_bfloat16, step_precision
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.flops import backbone_gflops, model_gflops
from mutualnet_det.modeling.roi_align import swap_roi_align
from mutualnet_det.width import set_width

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (1.0, 0.75, 0.5, 0.25)
SCALES = (1.0, 0.6)
METHODS = ("single", "usnet", "mutualnet")  # the order of every training table


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
    train_batches = calibration_batches(cfg)
    image = read_image(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"], format="BGR")
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE, stock_cfg.MODEL.BACKBONE.NAME = "GeneralizedRCNN", "build_resnet_fpn_backbone"
    stock = build_model(stock_cfg).to(device).eval()
    gather = cfg.MUTUALNET.CPU_ROI_ALIGN == "gather"
    swap_roi_align(stock, gather)  # the same poolers as ours: the ratios are the slimmable layers' cost
    use_configuration(model, 1.0, 1.0, train_batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
    stock.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("bn_stats_bank.")})
    rows, backbone_rows = [], []
    for scale in SCALES:
        inputs = scaled_test_input(image, cfg, scale)
        tensor = model.preprocess_image([inputs]).tensor
        for width in WIDTHS:
            use_configuration(model, width, scale, train_batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
            frozen = freeze_width(model, width, scale).eval()
            swap_roi_align(frozen, gather)
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


def training_benchmark(config_file, method, iters, device, opts=()):
    """Seconds per iteration and peak memory of one method, in a fresh process (clean peak);
    `opts`: further KEY, VALUE config overrides."""
    code = f"""
import json, sys, time, torch
sys.argv = ['x']
import mutualnet_det
from detectron2.utils.events import EventStorage
from mutualnet_det.benchmark.timing import peak_memory_mb, synchronize
from mutualnet_det.engine.trainer import MutualNetTrainer
sys.path.insert(0, {os.path.join(REPO, 'tools')!r})
from benchmark import load_cfg
cfg = load_cfg({config_file!r}, ['MUTUALNET.TRAIN.METHOD', {method!r}, 'MODEL.DEVICE', {device!r},
               'OUTPUT_DIR', '/tmp/mutualnet_benchmark_{method}', 'DATALOADER.NUM_WORKERS', 0, *{list(opts)!r}])
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


def heads_benchmark(config_file, device, repeats, train_iters):
    """Whole-model GFLOPs and latency at widths 1.0 and 0.25 (scale 1.0), backbone-only vs
    slimmable heads, and s/iteration of single vs MutualNet with slimmable heads (issue 14).

    Random weights with SCORE_THRESH_TEST 0: every configuration keeps TEST.DETECTIONS_PER_IMAGE
    detections, so the mask head's cost is the same worst case for every row (a trained model's
    detection count would change with the width)."""
    image = read_image(DatasetCatalog.get(load_cfg(config_file).DATASETS.TEST[0])[0]["file_name"], format="BGR")
    rows = []
    for slimmable_heads in (False, True):
        cfg = load_cfg(config_file, ["MODEL.DEVICE", device, "MUTUALNET.SLIMMABLE_HEADS", slimmable_heads,
                                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
        torch.manual_seed(0)
        model = MutualNetTrainer.build_model(cfg).to(device).eval()
        inputs = scaled_test_input(image, cfg, 1.0)
        tensor = model.preprocess_image([inputs]).tensor
        for width in (1.0, 0.25):
            set_width(model, width)
            with torch.no_grad():
                rows.append({"slimmable_heads": slimmable_heads, "width": width, "gflops": model_gflops(model, inputs),
                             "gflops_backbone": backbone_gflops(model, tensor),
                             "detections": len(model([inputs])[0]["instances"]),
                             "latency": time_call(lambda: model([inputs]), device, repeats=repeats)})
    heads = ["MUTUALNET.SLIMMABLE_HEADS", "True"]
    training = {"single": training_benchmark(config_file, "single", train_iters, device, heads),
                "mutualnet_slimmable_heads": training_benchmark(config_file, "mutualnet", train_iters, device, heads),
                "mutualnet_backbone_only": training_benchmark(config_file, "mutualnet", train_iters, device)}
    return rows, training


def heads_markdown(report):
    lines = [f"# Slimmable heads benchmark {report['date']} on {report['device_name']}", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`, random weights, score threshold 0 (fixed "
             "detection count), one image, scale 1.0; latency: median ms over repeats.", "",
             "| heads | width | GFLOPs (model) | GFLOPs (backbone) | detections | latency ms: median (IQR) | min |",
             "|---|---|---|---|---|---|---|"]
    for r in report["inference"]:
        lines.append(f"| {'slimmable' if r['slimmable_heads'] else 'full (paper)'} | {r['width']:g} | {r['gflops']:.2f} | "
                     f"{r['gflops_backbone']:.2f} | {r['detections']} | {r['latency']['median_ms']:.1f} ({r['latency']['iqr_ms']:.1f}) | "
                     f"{r['latency']['min_ms']:.1f} |")
    lines += ["", "Training (same batch; MutualNet: cohort of 2 + NUM_RANDOM_WIDTHS members):", "",
              "| method | s / iteration | peak memory (MB) |", "|---|---|---|"]
    for method, r in report["training"].items():
        lines.append(f"| {method} | {r['seconds_per_iter']:.2f} | {r['peak_memory_mb']:.0f} |")
    lines += ["", "Ratios measured in this run (width 0.25 / width 1.0, same heads setting):", ""]
    for slimmable_heads, label in ((False, "full heads (paper)"), (True, "slimmable heads")):
        full, narrow = (next(r for r in report["inference"] if r["slimmable_heads"] == slimmable_heads and r["width"] == w)
                        for w in (1.0, 0.25))
        flops, latency = narrow["gflops"] / full["gflops"], narrow["latency"]["median_ms"] / full["latency"]["median_ms"]
        target = f" (target <= 0.20: {'met' if flops <= 0.20 else 'not met'})" if slimmable_heads else ""
        latency_target = f" (target <= 0.30: {'met' if latency <= 0.30 else 'not met'})" if slimmable_heads else ""
        least = narrow["latency"]["min_ms"] / full["latency"]["min_ms"]  # less sensitive to other processes
        lines += [f"- {label}: GFLOPs {flops:.3f}{target}; latency {latency:.3f}{latency_target} (min: {least:.3f})"]
    t = report["training"]
    ratio = t["mutualnet_slimmable_heads"]["seconds_per_iter"] / t["single"]["seconds_per_iter"]
    lines += [f"- MutualNet with slimmable heads / single-width iteration: {ratio:.2f} (target <= 2.2: "
              f"{'met' if ratio <= 2.2 else 'not met'})",
              f"- MutualNet backbone-only / single-width iteration: "
              f"{t['mutualnet_backbone_only']['seconds_per_iter'] / t['single']['seconds_per_iter']:.2f}"]
    return "\n".join(lines) + "\n"


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


def precision_benchmark(config_file, iters, device):
    """Seconds per training iteration of each method in float32 and under AMP, each in a fresh process."""
    return {method: {precision: training_benchmark(config_file, method, iters, device,
                                                   ["SOLVER.AMP.ENABLED", precision != "float32"])
                     for precision in ("float32", "amp")}
            for method in METHODS}


def roi_align_benchmark(config_file, iters, device, rounds=2):
    """Seconds per training iteration of each method with each MUTUALNET.CPU_ROI_ALIGN, each in a
    fresh process, the two alternated `rounds` times (this machine is noisy): every round's time."""
    report = {method: {impl: [] for impl in CPU_ROI_ALIGNS} for method in METHODS}
    for method, rounds_of in report.items():
        for _ in range(rounds):
            for impl, times in rounds_of.items():
                times.append(training_benchmark(config_file, method, iters, device, ["MUTUALNET.CPU_ROI_ALIGN", impl]))
    return report


def roi_align_markdown(report):
    lines = [f"# RoI pooling benchmark ({report['date']}, {report['device_name']})", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`; {report['train_iters']} timed training iterations "
             "after 2 warm-up ones, each method and MUTUALNET.CPU_ROI_ALIGN in a fresh process, the two "
             "alternated; per round and the fastest round.", "",
             "| method | torchvision s/iter | gather s/iter | gather / torchvision (fastest rounds) |", "|---|---|---|---|"]
    for method, row in report["training"].items():
        times = {impl: [r["seconds_per_iter"] for r in rounds] for impl, rounds in row.items()}
        cells = [" / ".join(f"{t:.2f}" for t in times[impl]) for impl in ("torchvision", "gather")]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {min(times['gather']) / min(times['torchvision']):.2f} |")
    return "\n".join(lines) + "\n"


def precision_markdown(report):
    amp_name = step_precision(True, report["device"]).name
    lines = [f"# Training precision benchmark ({report['date']}, {report['device_name']})", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`; {report['train_iters']} timed iterations after 2 "
             f"warm-up ones, each method and precision in a fresh process. AMP here = {amp_name}; native "
             f"bfloat16 convolutions on this CPU: {report['cpu_fast_bfloat16']} (CPU capability "
             f"{report['cpu_capability']}).", "",
             f"| method | float32 s/iter | {amp_name} s/iter | {amp_name} / float32 | peak MB float32 | peak MB {amp_name} |",
             "|---|---|---|---|---|---|"]
    for method, row in report["training"].items():
        fp32, amp = row["float32"], row["amp"]
        lines.append(f"| {method} | {fp32['seconds_per_iter']:.2f} | {amp['seconds_per_iter']:.2f} | "
                     f"{amp['seconds_per_iter'] / fp32['seconds_per_iter']:.2f} | {fp32['peak_memory_mb']:.0f} | "
                     f"{amp['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def new_report(args, **fields):
    return {"date": datetime.date.today().isoformat(), "device": args.device,
            "device_name": device_description(args.device), "config": args.config_file, **fields}


def main_precision(args):
    report = new_report(args, train_iters=args.train_iters, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                        cpu_fast_bfloat16=cpu_has_fast_bfloat16(),
                        training=precision_benchmark(args.config_file, args.train_iters, args.device))
    write_report(report, args.output, "precision_", precision_markdown)


def main_roi_align(args):
    report = new_report(args, train_iters=args.train_iters,
                        training=roi_align_benchmark(args.config_file, args.train_iters, args.device))
    write_report(report, args.output, "roi_align_", roi_align_markdown)


def main_heads(args):
    inference, training = heads_benchmark(args.config_file, args.device, args.repeats, args.train_iters)
    write_report(new_report(args, inference=inference, training=training), args.output, "slimmable_heads_",
                 heads_markdown)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "Shapes", "mutualnet_mask_rcnn_R_18_FPN.yaml"))
    parser.add_argument("--weights", default=os.path.join(REPO, "output", "shapes_mutualnet", "model_final.pth"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-iters", type=int, default=6)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--slimmable-heads", action="store_true",
                        help="only the comparison of backbone-only and slimmable heads (MUTUALNET.SLIMMABLE_HEADS)")
    parser.add_argument("--precision", action="store_true",
                        help="only training s/iteration of each method in float32 and with SOLVER.AMP.ENABLED")
    parser.add_argument("--roi-align", action="store_true",
                        help="only training s/iteration of each method with each MUTUALNET.CPU_ROI_ALIGN")
    args = parser.parse_args()
    if args.slimmable_heads:
        return main_heads(args)
    if args.precision:
        return main_precision(args)
    if args.roi_align:
        return main_roi_align(args)
    cfg = load_cfg(args.config_file, ["MODEL.DEVICE", args.device])
    inference, backbone = inference_benchmark(cfg, args.weights, args.device, args.repeats)
    training = {m: training_benchmark(args.config_file, m, args.train_iters, args.device) for m in METHODS}
    report = new_report(args, weights=args.weights if os.path.isfile(args.weights) else None,
                        inference=inference, backbone=backbone, training=training)
    write_report(report, args.output, "", markdown)


def device_description(device):
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else \
        f"{cpu_description()} (torch threads {torch.get_num_threads()})"


if __name__ == "__main__":
    main()
