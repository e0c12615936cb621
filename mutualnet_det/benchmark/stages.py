"""Where inference time goes, stage by stage, at each width: the profile behind "narrow widths are
not as fast as their FLOPs promise".

A narrow width shrinks the backbone's FLOPs, not the work after it: RoI pooling of every
proposal, the box and mask heads (unless slimmable), NMS and pasting masks into the image cost the
same at every width. `profile_stages` times each stage of Detectron2's Mask R-CNN inference by
wrapping the callable that runs it (a module's `forward`, the box predictor's `inference` (NMS),
Detectron2's `detector_postprocess` (mask pasting)) for the duration of the profile, on the same
validation images at each (width, thread count), and reports medians over the calls, the whole
call's median and what no stage covers (pre-processing, RoI heads' glue).
"""
import contextlib
import statistics
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn
from detectron2.modeling.meta_arch import rcnn

from ..bn_calibration import use_configuration
from ..data.rescale import scaled_test_input
from ..flops import backbone_gflops
from ..runtime.latency import check_banked, model_device, torch_threads
from .timing import synchronize

# (stage, dotted path of the owner from the model ("" = Detectron2's rcnn module), attributes timed)
STAGES = (("backbone+FPN", "backbone", ("forward",)),
          ("RPN", "proposal_generator", ("forward",)),
          ("box pooler", "roi_heads.box_pooler", ("forward",)),
          ("box head", "roi_heads.box_head", ("forward",)),
          ("box predictor+NMS", "roi_heads.box_predictor", ("forward", "inference")),
          ("mask pooler", "roi_heads.mask_pooler", ("forward",)),
          ("mask head", "roi_heads.mask_head", ("forward",)),
          ("paste (postprocess)", "", ("detector_postprocess",)))
STAGE_NAMES = tuple(name for name, _, _ in STAGES)


def _owner(model: nn.Module, path: str):
    if not path:
        return rcnn
    owner = model
    for part in path.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


@contextlib.contextmanager
def stage_timers(model: nn.Module, spent: Dict[str, float]):
    """While inside: every stage's callables add their wall time (ms, synchronised on CUDA) to
    spent[stage]. The originals are put back on exit, also on errors."""
    device = model_device(model)
    restore = []

    def timed(stage, function):
        def wrapper(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                synchronize(device)
                spent[stage] = spent.get(stage, 0.0) + (time.perf_counter() - start) * 1000
        return wrapper

    try:
        for stage, path, attributes in STAGES:
            owner = _owner(model, path)
            if owner is None:  # e.g. no mask head: that stage is absent
                continue
            for attribute in attributes:
                had_own = attribute in vars(owner)  # an instance attribute (or a module's function)
                restore.append((owner, attribute, had_own, getattr(owner, attribute)))
                setattr(owner, attribute, timed(stage, getattr(owner, attribute)))
        yield spent
    finally:
        for owner, attribute, had_own, original in reversed(restore):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)


@torch.no_grad()
def profile_stages(cfg, model: nn.Module, images: Sequence[np.ndarray], widths: Sequence[float],
                   resolution_scale: float = 1.0, threads: Sequence[int] = None, warmup: int = 2,
                   repeats_per_image: int = 1) -> List[Dict]:
    """One record per (thread count, width): backbone GFLOPs, the median whole call (ms), each
    stage's median (ms) and share of it, and the median of what no stage covers. Each width loads
    its banked BN statistics (use_configuration); images are BGR at their original size."""
    check_banked(model, [(width, resolution_scale) for width in widths])  # before any timing
    model.eval()
    device = model_device(model)
    inputs = [scaled_test_input(image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image, cfg, resolution_scale)
              for image in images]
    records = []
    for count in (threads or [torch.get_num_threads()]):
        with torch_threads(count):
            for width in widths:
                use_configuration(model, width, resolution_scale)
                gflops = float(np.mean([backbone_gflops(model, model.preprocess_image([x]).tensor) for x in inputs]))
                for x in inputs[:warmup]:
                    model([x])
                calls = []
                for x in list(inputs) * repeats_per_image:
                    spent = {}
                    with stage_timers(model, spent):
                        synchronize(device)
                        start = time.perf_counter()
                        model([x])
                        synchronize(device)
                        total = (time.perf_counter() - start) * 1000
                    calls.append((total, spent))
                total = statistics.median(c[0] for c in calls)
                stages = {name: statistics.median(c[1].get(name, 0.0) for c in calls) for name in STAGE_NAMES}
                records.append({"width": width, "resolution_scale": resolution_scale, "threads": count,
                                "gflops_backbone": gflops, "total_ms": total, "stages_ms": stages,
                                "other_ms": statistics.median(c[0] - sum(c[1].values()) for c in calls),
                                "calls": len(calls)})
    return records


def stages_markdown(report: Dict) -> str:
    """The profile as the issue's table: per (threads, width) GFLOPs, median ms, each stage's ms
    (and the backbone's share), and width / widest ratios of time and FLOPs."""
    lines = [f"# Inference time by stage ({report['date']}, {report['device_name']})", "",
             f"Config `{report['config']}`, weights `{report.get('weights') or 'random init'}`, "
             f"{report['num_images']} validation images x {report['repeats_per_image']}, scale "
             f"{report['resolution_scale']:g}; medians over the calls, in ms.", "",
             "| threads | width | backbone GFLOPs | median ms | time / widest | FLOPs / widest | "
             + " | ".join(STAGE_NAMES) + " | other |",
             "|---|---|---|---|---|---|" + "---|" * (len(STAGE_NAMES) + 1)]
    for count in sorted({r["threads"] for r in report["stages"]}):
        rows = [r for r in report["stages"] if r["threads"] == count]
        widest = max(rows, key=lambda r: r["width"])
        for r in rows:
            share = r["stages_ms"]["backbone+FPN"] / r["total_ms"]
            cells = [f"{r['stages_ms'][name]:.1f}" + (f" ({share:.0%})" if name == "backbone+FPN" else "")
                     for name in STAGE_NAMES]
            lines.append(f"| {count} | {r['width']:g} | {r['gflops_backbone']:.2f} | {r['total_ms']:.1f} | "
                         f"{r['total_ms'] / widest['total_ms']:.2f} | {r['gflops_backbone'] / widest['gflops_backbone']:.2f} | "
                         + " | ".join(cells) + f" | {r['other_ms']:.1f} |")
    return "\n".join(lines) + "\n"
