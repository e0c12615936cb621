#!/usr/bin/env python
"""Render a MutualNet and a US-Net model side by side (one PNG per image).

    python demo/demo.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml \
        --compare-config configs/Shapes/usnet_mask_rcnn_R_18_FPN.yaml \
        --dataset shapes_val --num-images 4 --widths 1.0 0.5 0.25 --output output/demo
    python demo/demo.py --config-file X --input images/*.jpg --width 0.5 --output out/ \
        --opts MODEL.WEIGHTS model.pth
Runtime adaptation: one model, the configuration chosen per frame to keep a latency budget (from
the latency table of tools/profile_latency.py; images or a video file):
    python demo/demo.py --config-file X --input clip.mp4 --latency-budget 100 --output out/
Weights: MODEL.WEIGHTS of each config (or --opts / --compare-weights); default
<OUTPUT_DIR>/model_final.pth.
"""
import argparse
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from mutualnet_det import validate_width
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.evaluation.visualization import (IMAGE_EXTENSIONS, expand_inputs, load_slimmable_predictor, render_adaptive_files,
                                                    render_comparison_files, select_records)
from mutualnet_det.runtime.adaptive import AdaptivePredictor
from mutualnet_det.runtime.latency import default_latency_table_path, load_latency_table


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="first model (typically MutualNet)")
    parser.add_argument("--compare-config", help="second model, rendered beside the first (typically US-Net)")
    parser.add_argument("--compare-weights", help="weights of the second model (default: its MODEL.WEIGHTS)")
    parser.add_argument("--input", nargs="+", default=[], help="image files, globs or directories")
    parser.add_argument("--dataset", help="take images from a registered dataset (adds a ground-truth panel)")
    parser.add_argument("--num-images", type=int, default=4, help="images taken from --dataset")
    parser.add_argument("--most-small", type=int, default=0, metavar="N",
                        help="instead of the first --num-images: the N dataset images with the most small "
                             "ground-truth objects (COCO: area < 32^2) ...")
    parser.add_argument("--most-large", type=int, default=0, metavar="N",
                        help="... and the N others with the most large ones (area > 96^2)")
    parser.add_argument("--output", required=True, help="output directory (one PNG per image)")
    parser.add_argument("--width", type=float, default=None, help="backbone width for both models")
    parser.add_argument("--widths", type=float, nargs="+", help="several widths: one row each")
    parser.add_argument("--resolution-scale", type=float, default=1.0, help="input scale for both models")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--latency-budget", type=float, metavar="MS",
                        help="run one model adaptively within MS milliseconds per frame (images or a video)")
    parser.add_argument("--latency-table", help="latency_table.json of tools/profile_latency.py (default: "
                        "<OUTPUT_DIR>/inference/<DATASETS.TEST[0]>/latency_table.json)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of the first config")
    return parser


def run_adaptive(args, items):
    """One model under a latency budget: a PNG per image (a video per video) titled with the
    configuration chosen and the time of each frame; a CSV log of every frame."""
    if args.compare_config or args.width is not None or args.widths:
        raise ValueError("--latency-budget chooses the width per frame: drop --compare-config, --width and --widths")
    slimmable = load_slimmable_predictor(args.config_file, args.opts)
    cfg = slimmable.cfg
    table_path = args.latency_table or default_latency_table_path(cfg)
    predictor = AdaptivePredictor(cfg, slimmable.model, load_latency_table(table_path), args.latency_budget)
    metadata = MetadataCatalog.get(args.dataset or cfg.DATASETS.TEST[0])
    os.makedirs(args.output, exist_ok=True)  # only once every argument has been accepted
    log_path, failures = render_adaptive_files(predictor, [path for path, _ in items], metadata, args.latency_budget,
                                               args.confidence_threshold, args.output)
    frames = predictor.frames
    if frames:
        print(f"{sum(f.within_budget for f in frames)} of {len(frames)} frames within {args.latency_budget:g} ms; "
              f"{sum(f.switched for f in frames)} switches; log: {log_path}")
    if failures:
        print(f"{failures} of {len(items)} inputs could not be run", file=sys.stderr)
    return 1 if failures else 0


def main(args):
    setup_logger(name="mutualnet_det")
    if not args.input and not args.dataset:
        raise ValueError("give --input images or --dataset NAME")
    if (args.most_small or args.most_large) and not args.dataset:
        raise ValueError("--most-small / --most-large pick images of a --dataset NAME; none given")
    if args.most_small < 0 or args.most_large < 0:
        raise ValueError(f"--most-small {args.most_small} / --most-large {args.most_large} must be >= 0")
    records = select_records(DatasetCatalog.get(args.dataset) if args.dataset else [], args.num_images,
                             args.most_small, args.most_large)
    items = [(d["file_name"], d) for d in records] + [(path, None) for path in expand_inputs(args.input)]
    if not items:
        raise ValueError(f"nothing to render: {' '.join(args.input or [])} holds no image "
                         f"({', '.join(IMAGE_EXTENSIONS)}) and --dataset gives none")
    if args.latency_budget is not None:
        return run_adaptive(args, items)
    if not 0 < args.resolution_scale <= 1:
        raise ValueError(f"--resolution-scale {args.resolution_scale} must be in (0, 1]")
    predictors = [load_slimmable_predictor(args.config_file, args.opts)]
    if args.compare_config:
        predictors.append(load_slimmable_predictor(args.compare_config, [], args.compare_weights))
    width_range = predictors[0].model.backbone.width_range
    widths = [validate_width(w, width_range) for w in (args.widths or [args.width or width_range[1]])]
    os.makedirs(args.output, exist_ok=True)  # only once every argument has been accepted
    metadata = MetadataCatalog.get(args.dataset or predictors[0].cfg.DATASETS.TEST[0])
    failures = render_comparison_files(items, predictors, widths, args.resolution_scale, metadata,
                                       args.confidence_threshold, args.output)
    if failures:
        print(f"{failures} of {len(items)} inputs could not be rendered", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    arguments = get_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (ValueError, KeyError, CheckpointError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
