"""The benchmark reports: the JSON dict every report starts from (`new_report`) and the Markdown
each kind is read as (`benchmark_markdown`, `heads_markdown`, `precision_markdown`,
`roi_align_markdown`; `timing.write_report` writes both).

Times are milliseconds (inference, `timing.time_call` statistics) or seconds per training
iteration; memory in MB. Every ratio in a report is computed from that report's own numbers: one
run on one machine, so the ratios, not the absolute times, are what compares across machines.
"""
import datetime
import os
from typing import Dict

import torch

from .timing import cpu_description
from .training import WARMUP_ITERS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # config paths are shown relative to it


def device_description(device: str) -> str:
    """The GPU's name, or the CPU and torch's thread count (both change CPU times)."""
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else \
        f"{cpu_description()} (torch threads {torch.get_num_threads()})"


def new_report(device: str, config_file: str, **fields) -> Dict:
    """The fields every report has (date, device, its description, config), then `fields`. A
    config inside the repository is recorded relative to it (reports are committed: no path of
    the machine that wrote them)."""
    return {"date": datetime.date.today().isoformat(), "device": device,
            "device_name": device_description(device), "config": shown_path(config_file), **fields}


def shown_path(path: str) -> str:
    """A file inside the repository as a path relative to it, others as given."""
    absolute = os.path.abspath(path)
    return os.path.relpath(absolute, REPO) if absolute.startswith(REPO + os.sep) else path


def _training_table(training: Dict[str, Dict[str, float]]):
    return ["| method | s / iteration | peak memory (MB) |", "|---|---|---|"] + \
        [f"| {method} | {r['seconds_per_iter']:.2f} | {r['peak_memory_mb']:.0f} |" for method, r in training.items()]


def benchmark_markdown(report: Dict) -> str:
    """The default benchmark: inference latency per (width, scale) with slimmable / frozen, backbone
    latency share against FLOPs share (width 1.0 = 1), training cost per method, and the target
    ratios (slimmable / stock at width 1.0, mutualnet / usnet and mutualnet / single iteration)."""
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
    lines += ["", "Training (same batch; cohort of 2 + NUM_RANDOM_WIDTHS members):", ""] + _training_table(report["training"])
    t = report["training"]
    i1 = next(r for r in report["inference"] if r["width"] == 1.0 and r["resolution_scale"] == 1.0)
    lines += ["", "Targets (ratios measured in this run):", "",
              f"- slimmable at width 1.0 / stock Detectron2: {i1['slimmable']['median_ms'] / i1['stock_detectron2']['median_ms']:.3f} (target <= 1.05)",
              "- slimmable / frozen per configuration: see the table (target <= 1.10)",
              f"- mutualnet / usnet iteration: {t['mutualnet']['seconds_per_iter'] / t['usnet']['seconds_per_iter']:.2f} (target <= 0.8)",
              f"- mutualnet / single iteration: {t['mutualnet']['seconds_per_iter'] / t['single']['seconds_per_iter']:.2f} (target <= 2.2)"]
    return "\n".join(lines) + "\n"


def heads_markdown(report: Dict) -> str:
    """Backbone-only against slimmable heads: GFLOPs, detections and latency at widths 1.0 and
    0.25, training cost, and the width 0.25 / 1.0 ratios against their targets (GFLOPs <= 0.20,
    latency <= 0.30 with slimmable heads; MutualNet / single iteration <= 2.2)."""
    lines = [f"# Slimmable heads benchmark {report['date']} on {report['device_name']}", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`, random weights, score threshold 0 (fixed "
             "detection count), one image, scale 1.0; latency: median ms over repeats.", "",
             "| heads | width | GFLOPs (model) | GFLOPs (backbone) | detections | latency ms: median (IQR) | min |",
             "|---|---|---|---|---|---|---|"]
    for r in report["inference"]:
        lines.append(f"| {'slimmable' if r['slimmable_heads'] else 'full (paper)'} | {r['width']:g} | {r['gflops']:.2f} | "
                     f"{r['gflops_backbone']:.2f} | {r['detections']} | {r['latency']['median_ms']:.1f} ({r['latency']['iqr_ms']:.1f}) | "
                     f"{r['latency']['min_ms']:.1f} |")
    lines += ["", "Training (same batch; MutualNet: cohort of 2 + NUM_RANDOM_WIDTHS members):", ""] + \
        _training_table(report["training"])
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


def precision_markdown(report: Dict) -> str:
    """Training cost of each method in float32 and under AMP (named by the precision AMP runs on
    the report's device), with AMP / float32 per method."""
    from ..engine.precision import step_precision

    amp_name = step_precision(True, report["device"]).name
    lines = [f"# Training precision benchmark ({report['date']}, {report['device_name']})", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`; {report['train_iters']} timed iterations after "
             f"{WARMUP_ITERS} warm-up ones, each method and precision in a fresh process. AMP here = {amp_name}; native "
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


def roi_align_markdown(report: Dict) -> str:
    """Training cost of each method with each MUTUALNET.CPU_ROI_ALIGN, every round's s/iteration
    and gather / torchvision of the fastest rounds (the least disturbed by other processes)."""
    lines = [f"# RoI pooling benchmark ({report['date']}, {report['device_name']})", "",
             f"Config `{os.path.relpath(report['config'], REPO)}`; {report['train_iters']} timed training iterations "
             f"after {WARMUP_ITERS} warm-up ones, each method and MUTUALNET.CPU_ROI_ALIGN in a fresh process, the two "
             "alternated; per round and the fastest round.", "",
             "| method | torchvision s/iter | gather s/iter | gather / torchvision (fastest rounds) |", "|---|---|---|---|"]
    for method, row in report["training"].items():
        times = {impl: [r["seconds_per_iter"] for r in rounds] for impl, rounds in row.items()}
        cells = [" / ".join(f"{t:.2f}" for t in times[impl]) for impl in ("torchvision", "gather")]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {min(times['gather']) / min(times['torchvision']):.2f} |")
    return "\n".join(lines) + "\n"
