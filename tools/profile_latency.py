#!/usr/bin/env python
"""Time every (width, scale) of a trained model's width sweep on this device; write the latency
table (latency_table.json / .csv: AP, GFLOPs, median and IQR milliseconds, front by ms).

    python tools/profile_latency.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml
    python tools/profile_latency.py --config-file X --weights W.pth --sweep S/width_sweep.json --num-images 20
    python tools/profile_latency.py --config-file X --threads 1 2
--threads times every configuration at each torch thread count (one front per count: on a CPU,
AdaptivePredictor then also picks the thread count from other processes' load); default: torch's
current count only. Defaults: weights MODEL.WEIGHTS or <OUTPUT_DIR>/model_final.pth; sweep
<OUTPUT_DIR>/inference/<DATASETS.TEST[0]>/width_sweep.json; output beside the sweep. Trailing
KEY VALUE pairs override the config (e.g. MODEL.DEVICE cuda).
"""
import argparse
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
from detectron2.utils.logger import setup_logger

from mutualnet_det.benchmark.reports import shown_path
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.evaluation.query_table import load_sweep, parse_metric
from mutualnet_det.runtime.contention import usable_cpus
from mutualnet_det.runtime.latency import (check_sweep_matches_model, default_sweep_path, format_latency_table,
                                           load_trained, profile_latency, validation_images, write_latency_table)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", help="trained checkpoint (with its BN stats bank)")
    parser.add_argument("--sweep", help="width_sweep.json of these weights")
    parser.add_argument("--num-images", type=int, default=20, help="validation images timed per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per configuration")
    parser.add_argument("--repeats-per-image", type=int, default=1)
    parser.add_argument("--metric", default="bbox.AP", help="task.metric the front maximises")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help="torch thread counts to time every configuration at (default: the current count)")
    parser.add_argument("-o", "--output", help="output folder (default: beside the sweep)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="mutualnet_det")
    if args.num_images < 1 or args.warmup < 0 or args.repeats_per_image < 1:
        raise ValueError("need --num-images >= 1, --warmup >= 0 and --repeats-per-image >= 1")
    if args.threads and min(args.threads) < 1:
        raise ValueError(f"--threads {' '.join(map(str, args.threads))}: thread counts must be >= 1")
    cores = len(usable_cpus())
    if args.threads and max(args.threads) > cores:
        raise ValueError(f"--threads {' '.join(map(str, args.threads))}: this process may run on {cores} core(s); "
                         "more threads than cores are never chosen at run time")
    cfg, model = load_trained(args.config_file, args.opts, args.weights)
    sweep_path = args.sweep or default_sweep_path(cfg)
    sweep = load_sweep(sweep_path)
    metric = parse_metric(args.metric, sweep, sweep_path)
    images = validation_images(cfg, args.num_images)
    check_sweep_matches_model(cfg, model, sweep, images)
    table = profile_latency(cfg, model, sweep, images, threads=args.threads, warmup=args.warmup,
                            repeats_per_image=args.repeats_per_image, metric=metric)
    table.update(weights=shown_path(cfg.MODEL.WEIGHTS), sweep=shown_path(sweep_path))  # repository-relative inside it
    path = write_latency_table(table, args.output or os.path.dirname(os.path.abspath(sweep_path)))
    print(format_latency_table(table))
    print(f"{table['setting']} slimmable model on {table['device_name']} (torch threads "
          f"{', '.join(table['fronts_by_threads'])}); one switch (width + banked BN statistics) at "
          f"{table['torch_threads']} threads: {table['switch']['median_ms']:.2f} ms median")
    print(f"written to {path} (and .csv)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as err:
        sys.exit(f"error: {err}")
