"""What the COCO configs cost, on paper: fvcore's count of one R-50-FPN Mask R-CNN forward at
COCO's size per (width, input scale), turned into the expected compute of one training
iteration of each method and of one width sweep over val2017.

The count is of the inference forward at a fixed number of detections (the mask head's cost
follows them), a proxy for a training member's forward; forward + backward is taken as 3 x the
forward, the usual estimate. Times scale from Detectron2's model zoo (R50-FPN Mask R-CNN 1x:
0.261 s/iteration on 8 V100) by the FLOPs ratio, an optimistic bound for narrow members, whose
time falls less than their FLOPs (benchmarks/results/README.md)."""
import itertools
from typing import Dict, Sequence

import numpy as np
import torch

from ..config import PAPER_RESOLUTION_SCALES, load_config
from ..data.rescale import scaled_test_input
from ..flops import model_gflops
from ..width import set_width

MODEL_ZOO_SECONDS_PER_ITER = 0.261  # R50-FPN Mask R-CNN 1x, 8 V100, Detectron2's MODEL_ZOO.md
MODEL_ZOO_ITERATIONS = 90_000
VAL2017_IMAGES = 5_000
BACKWARD_FACTOR = 3.0  # forward + backward = 3 forwards


def member_gflops(config_file: str, widths: Sequence[float], scales: Sequence[float], height: int = 800,
                  width: int = 1333, detections: int = 100) -> Dict:
    """{(width, scale): GFLOPs of one forward on a height x width image} for the config's model
    (random weights, BN in place of SyncBN: same count, one process), with `detections` kept per
    image (score threshold 0)."""
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN",
                                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                                    "TEST.DETECTIONS_PER_IMAGE", detections])
    from ..engine.trainer import MutualNetTrainer

    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    costs = {}
    for member_width, scale in itertools.product(widths, scales):
        set_width(model, member_width)
        with torch.no_grad():
            costs[(member_width, scale)] = model_gflops(model, scaled_test_input(image, cfg, scale))
    return costs


def method_costs(costs: Dict, widths: Sequence[float], scales: Sequence[float], images_per_batch: int = 16,
                 num_random_widths: int = 2) -> Dict[str, float]:
    """Expected forward+backward GFLOPs of one iteration (images_per_batch images) per method:
    single = the widest at scale 1; US-Net = widest + narrowest + num_random_widths widths drawn
    uniformly from the range, all at scale 1; MutualNet = the widest at scale 1, the others at a
    scale drawn uniformly from `scales`. A uniform width is averaged over the `widths` grid (the
    trapezoid rule on evenly spaced widths)."""
    widest, narrowest = max(widths), min(widths)
    grid = sorted(widths)

    def uniform_width(scale):
        values = [costs[(w, scale)] for w in grid]
        return (sum(values) - (values[0] + values[-1]) / 2) / (len(values) - 1)

    def uniform_scale(function):
        return sum(function(s) for s in scales) / len(scales)

    per_image = {
        "single": costs[(widest, 1.0)],
        "usnet": costs[(widest, 1.0)] + costs[(narrowest, 1.0)] + num_random_widths * uniform_width(1.0),
        "mutualnet": costs[(widest, 1.0)] + uniform_scale(lambda s: costs[(narrowest, s)])
        + num_random_widths * uniform_scale(uniform_width),
    }
    return {method: BACKWARD_FACTOR * images_per_batch * gflops for method, gflops in per_image.items()}


def sweep_cost(costs: Dict, sweep_widths: Sequence[float], sweep_scales: Sequence[float]) -> Dict[str, float]:
    """GFLOPs of one width sweep over val2017 (forward only), and how many single full-width
    passes over val2017 that is."""
    total = sum(costs[(w, s)] for w in sweep_widths for s in sweep_scales)
    return {"configurations": len(sweep_widths) * len(sweep_scales),
            "gflops": total * VAL2017_IMAGES, "full_width_passes": total / costs[(max(sweep_widths), 1.0)]}


def coco_cost_report(config_file: str, width_grid=(1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25),
                     scales=PAPER_RESOLUTION_SCALES, sweep_widths=(1.0, 0.75, 0.5, 0.25)) -> Dict:
    costs = member_gflops(config_file, width_grid, scales)
    iteration = method_costs(costs, width_grid, scales)
    ratios = {method: gflops / iteration["single"] for method, gflops in iteration.items()}
    return {"members": [{"width": w, "resolution_scale": s, "gflops": g} for (w, s), g in costs.items()],
            "iteration_gflops": iteration, "ratio_to_single": ratios,
            "hours_1x_on_8_v100_if_time_follows_flops": {
                method: ratio * MODEL_ZOO_SECONDS_PER_ITER * MODEL_ZOO_ITERATIONS / 3600 for method, ratio in ratios.items()},
            "sweep": {"four_by_four": sweep_cost(costs, sweep_widths, scales),
                      "four_configurations": sweep_cost(costs, sweep_widths, (1.0,))}}


def coco_cost_markdown(report: Dict) -> str:
    r = report["coco_cost"]
    lines = [f"# The COCO configs' cost, on paper ({report['date']})", "",
             f"Config `{report['config']}`: R-50-FPN Mask R-CNN, fvcore's count of one inference forward at "
             "800 x 1333 with 100 detections per (width, input scale); forward + backward = 3 x forward; "
             "16 images per iteration (Detectron2's 1x); times scaled from the model zoo's 0.261 s/iteration "
             "on 8 V100 by the FLOPs ratio (optimistic for narrow members).", "",
             "| method | GFLOPs / iteration | x single | 1x schedule on 8 V100 if time follows FLOPs |",
             "|---|---|---|---|"]
    for method in ("single", "usnet", "mutualnet"):
        lines.append(f"| {method} | {r['iteration_gflops'][method]:,.0f} | {r['ratio_to_single'][method]:.2f} | "
                     f"{r['hours_1x_on_8_v100_if_time_follows_flops'][method]:.1f} h |")
    lines += ["", "Width sweeps over val2017 (5,000 images, forward only):", "",
              "| sweep | configurations | TFLOPs | = full-width passes |", "|---|---|---|---|"]
    for name, label in (("four_by_four", "4 widths x 4 scales (the study's)"), ("four_configurations", "4 widths at scale 1.0")):
        s = r["sweep"][name]
        lines.append(f"| {label} | {s['configurations']} | {s['gflops'] / 1000:,.0f} | {s['full_width_passes']:.1f} |")
    lines += ["", "GFLOPs of one forward per (width, scale):", "", "| width | " +
              " | ".join(f"scale {s:.3f}" for s in sorted({m['resolution_scale'] for m in r["members"]}, reverse=True)) + " |",
              "|---|" + "---|" * len({m['resolution_scale'] for m in r["members"]})]
    for width in sorted({m["width"] for m in r["members"]}, reverse=True):
        row = sorted((m for m in r["members"] if m["width"] == width), key=lambda m: -m["resolution_scale"])
        lines.append(f"| {width:g} | " + " | ".join(f"{m['gflops']:.0f}" for m in row) + " |")
    return "\n".join(lines) + "\n"
