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
import csv
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
from mutualnet_det.runtime.adaptive import AdaptivePredictor
from mutualnet_det.bn_calibration import calibration_batches
from mutualnet_det.checkpoint import CheckpointError, load_weights
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.runtime.latency import load_latency_table
from mutualnet_det.evaluation.visualization import SlimmablePredictor, pick_by_object_size, prediction_panel, render_comparison

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


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
    return SlimmablePredictor(cfg, model, method, calibration_batches(cfg))


def expand_inputs(patterns):
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            matched = sorted(glob.glob(os.path.expanduser(pattern)))
            paths += matched or [pattern]  # a missing file is reported when read
    return paths


def read_frames(path):
    """(frame number, BGR image) of a video file, or (0, image) of an image file."""
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        yield 0, read_image(path, format="BGR")
        return
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"cannot open video {path!r}")
    try:
        number = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            yield number, frame
            number += 1
    finally:
        video.release()


def run_adaptive(args, items):
    """One model under a latency budget: a PNG per image (a video per video) titled with the
    configuration chosen (width, scale, torch threads) and the time of each frame; a CSV log of
    every frame."""
    if args.compare_config or args.width is not None or args.widths:
        raise ValueError("--latency-budget chooses the width per frame: drop --compare-config, --width and --widths")
    slimmable = load_predictor(args.config_file, args.opts)
    cfg = slimmable.cfg
    table_path = args.latency_table or os.path.join(cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0], "latency_table.json")
    predictor = AdaptivePredictor(cfg, slimmable.model, load_latency_table(table_path), args.latency_budget)
    metadata = MetadataCatalog.get(args.dataset or cfg.DATASETS.TEST[0])
    log_path = os.path.join(args.output, "adaptive_frames.csv")
    failures = 0
    with open(log_path, "w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["input", "frame", "width", "resolution_scale", "threads", "latency_ms", "switch_ms", "within_budget"])
        for path, _ in tqdm(items, desc="adaptive"):
            video_out, stem = None, os.path.splitext(os.path.basename(path))[0]
            try:
                for number, image in read_frames(path):
                    instances = predictor(image)["instances"].to("cpu")
                    frame = predictor.last
                    title = (f"w {frame.width:g} s {frame.resolution_scale:g} t {frame.threads}  {frame.latency_ms:.0f}/"
                             f"{args.latency_budget:g} ms{'  switched' if frame.switched else ''}")
                    drawn = prediction_panel(image[:, :, ::-1], instances, metadata, title, args.confidence_threshold).image
                    tqdm.write(f"{path} frame {number}: width {frame.width:g}, scale {frame.resolution_scale:g}, "
                               f"{frame.threads} torch thread(s), {frame.latency_ms:.1f} ms "
                               f"({'within' if frame.within_budget else 'over'} the budget)"
                               + (f", switched in {frame.switch_ms:.2f} ms" if frame.switched else ""))
                    writer.writerow([path, number, frame.width, frame.resolution_scale, frame.threads,
                                     f"{frame.latency_ms:.3f}", f"{frame.switch_ms:.3f}", int(frame.within_budget)])
                    if path.lower().endswith(VIDEO_EXTENSIONS):
                        if video_out is None:
                            video_out = cv2.VideoWriter(os.path.join(args.output, stem + "_adaptive.mp4"),
                                                        cv2.VideoWriter_fourcc(*"mp4v"), 10, drawn.shape[1::-1])
                        video_out.write(drawn[:, :, ::-1])
                    else:
                        cv2.imwrite(os.path.join(args.output, stem + "_adaptive.png"), drawn[:, :, ::-1])
            except Exception as err:  # an unreadable input is skipped, the others still run
                tqdm.write(f"skipped {path}: {type(err).__name__}: {err}")
                failures += 1
            finally:
                if video_out is not None:
                    video_out.release()
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
    records = DatasetCatalog.get(args.dataset) if args.dataset else []
    if args.most_small or args.most_large:
        records = pick_by_object_size(records, args.most_small, args.most_large)
    else:
        records = records[:args.num_images]
    items = [(d["file_name"], d) for d in records]
    items += [(path, None) for path in expand_inputs(args.input)]
    os.makedirs(args.output, exist_ok=True)
    if args.latency_budget is not None:
        return run_adaptive(args, items)
    predictors = [load_predictor(args.config_file, args.opts)]
    if args.compare_config:
        predictors.append(load_predictor(args.compare_config, [], args.compare_weights))
    width_range = predictors[0].model.backbone.width_range
    widths = [validate_width(w, width_range) for w in (args.widths or [args.width or width_range[1]])]
    if not 0 < args.resolution_scale <= 1:
        raise ValueError(f"--resolution-scale {args.resolution_scale} must be in (0, 1]")
    metadata = MetadataCatalog.get(args.dataset or predictors[0].cfg.DATASETS.TEST[0])
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
