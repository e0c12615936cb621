#!/usr/bin/env python
"""Render a MutualNet and a US-Net model side by side (one PNG per image).

    python demo/demo.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml \
        --compare-config configs/Shapes/usnet_mask_rcnn_R_18_FPN.yaml \
        --dataset shapes_val --num-images 4 --widths 1.0 0.5 0.25 --output output/demo
    python demo/demo.py --config-file X --input images/*.jpg --width 0.5 --output out/ \
        --opts MODEL.WEIGHTS model.pth
Weights: MODEL.WEIGHTS of each config (or --opts / --compare-weights); default
<OUTPUT_DIR>/model_final.pth.
"""
import argparse
import glob
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
import cv2
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from mutualnet_det import add_mutualnet_config, validate_mutualnet_config, validate_width
from mutualnet_det.checkpoint import CheckpointError, load_weights
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.visualization import SlimmablePredictor, render_comparison

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="first model (typically MutualNet)")
    parser.add_argument("--compare-config", help="second model, rendered beside the first (typically US-Net)")
    parser.add_argument("--compare-weights", help="weights of the second model (default: its MODEL.WEIGHTS)")
    parser.add_argument("--input", nargs="+", default=[], help="image files, globs or directories")
    parser.add_argument("--dataset", help="take images from a registered dataset (adds a ground-truth panel)")
    parser.add_argument("--num-images", type=int, default=4, help="images taken from --dataset")
    parser.add_argument("--output", required=True, help="output directory (one PNG per image)")
    parser.add_argument("--width", type=float, default=None, help="backbone width for both models")
    parser.add_argument("--widths", type=float, nargs="+", help="several widths: one row each")
    parser.add_argument("--resolution-scale", type=float, default=1.0, help="input scale for both models")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of the first config")
    return parser


def load_predictor(config_file, opts, weights=None):
    cfg = get_cfg()
    add_mutualnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if weights:
        cfg.MODEL.WEIGHTS = weights
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    validate_mutualnet_config(cfg)
    cfg.freeze()
    model = MutualNetTrainer.build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS)
    method = {"mutualnet": "MutualNet", "usnet": "US-Net", "single": "single"}[cfg.MUTUALNET.TRAIN.METHOD]
    if cfg.MUTUALNET.TRAIN.INPLACE_DISTILL:
        method += "+distill"
    return SlimmablePredictor(cfg, model, method, lambda: iter(MutualNetTrainer.build_train_loader(cfg)))


def expand_inputs(patterns):
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            matched = sorted(glob.glob(os.path.expanduser(pattern)))
            paths += matched or [pattern]  # a missing file is reported when read
    return paths


def main(args):
    setup_logger(name="mutualnet_det")
    if not args.input and not args.dataset:
        raise ValueError("give --input images or --dataset NAME")
    predictors = [load_predictor(args.config_file, args.opts)]
    if args.compare_config:
        predictors.append(load_predictor(args.compare_config, [], args.compare_weights))
    width_range = predictors[0].model.backbone.width_range
    widths = [validate_width(w, width_range) for w in (args.widths or [args.width or width_range[1]])]
    if not 0 < args.resolution_scale <= 1:
        raise ValueError(f"--resolution-scale {args.resolution_scale} must be in (0, 1]")
    metadata = MetadataCatalog.get(args.dataset or predictors[0].cfg.DATASETS.TEST[0])
    items = [(d["file_name"], d) for d in DatasetCatalog.get(args.dataset)[:args.num_images]] if args.dataset else []
    items += [(path, None) for path in expand_inputs(args.input)]
    os.makedirs(args.output, exist_ok=True)
    failures = 0
    for path, dataset_dict in tqdm(items, desc="rendering"):
        try:
            image = read_image(path, format="BGR")
        except Exception as err:
            tqdm.write(f"skipped {path}: cannot read it as an image ({type(err).__name__}: {err})")
            failures += 1
            continue
        canvas, _ = render_comparison(image, predictors, widths, args.resolution_scale, metadata,
                                      args.confidence_threshold, dataset_dict)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + "_comparison.png")
        cv2.imwrite(out_path, canvas[:, :, ::-1])
        tqdm.write(f"wrote {out_path}")
    if failures:
        print(f"{failures} of {len(items)} inputs could not be rendered", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    arguments = get_parser().parse_args()
    try:
        sys.exit(main(arguments))
    except (ValueError, KeyError, CheckpointError) as err:
        sys.exit(f"error: {err}")
