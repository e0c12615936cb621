#!/usr/bin/env python
"""A stream of validation images under a latency budget, with a background CPU load (another
process multiplying matrices) started halfway: share of frames within the budget and mean AP of
the configurations used, for AdaptivePredictor and for the fixed full configuration (width 1.0,
scale 1.0, at the largest thread count of the table: the usual deployment). With a table profiled
at several torch thread counts (profile_latency.py --threads 1 2) the adaptive predictor also picks
the thread count. Writes adaptive_stream_<device>_<date>.{json,md} to benchmarks/results/.

    python tools/profile_latency.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml --threads 1 2
    python tools/adaptive_stream_benchmark.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml
Defaults: the latency table beside the sweep (<OUTPUT_DIR>/inference/<DATASETS.TEST[0]>/
latency_table.json); budget 1.2 x the table's time of width 1.0 / scale 1.0 at its largest thread
count (a budget sized for the full model on an idle device, with 20% headroom).

Exported configurations (tools/export_width.py, one folder, width 1.0 among them) instead of the
PyTorch model: their latency table is profiled first (AP from the config's width sweep) and
written into that folder as latency_table.json, then the same two streams run on the exports:
    python tools/adaptive_stream_benchmark.py --config-file X --exports output/export [--backend torchscript]
"""
import argparse
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
from detectron2.utils.logger import setup_logger

from mutualnet_det.benchmark.timing import write_report
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.evaluation.query_table import load_sweep
from mutualnet_det.runtime.exported import BACKENDS, load_exports, profile_exported
from mutualnet_det.runtime.latency import (default_latency_table_path, default_sweep_path, load_latency_table, load_trained,
                                           validation_images, write_latency_table)
from mutualnet_det.runtime.stream import exported_stream_benchmark, stream_benchmark, stream_markdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", help="trained checkpoint (default MODEL.WEIGHTS or <OUTPUT_DIR>/model_final.pth)")
    parser.add_argument("--table", help="latency_table.json (default: beside the sweep)")
    parser.add_argument("--budget-ms", type=float, help="frame budget (default 1.2 x the table's width 1.0 / scale 1.0)")
    parser.add_argument("--frames", type=int, default=160, help="frames per stream (validation images, cycled)")
    parser.add_argument("--load-threads", type=int, default=1, help="threads of the background load process")
    parser.add_argument("--load-size", type=int, default=512, help="side of its square matrices")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--exports", help="folder of exported configurations to stream instead of the PyTorch model")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="runtime of the exports")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the exports")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="mutualnet_det")
    if args.frames < 2 or args.load_threads < 1:
        raise ValueError("need --frames >= 2 and --load-threads >= 1")
    if args.exports:
        from mutualnet_det.config import load_config

        cfg = load_config(args.config_file, args.opts)
        predictors = load_exports(args.exports, args.backend, args.threads)
        images = validation_images(cfg)
        table = profile_exported(predictors, load_sweep(default_sweep_path(cfg)), images[:8])
        write_latency_table(table, args.exports)
        report = exported_stream_benchmark(predictors, table, images, args.budget_ms, args.frames,
                                           args.load_threads, args.load_size)
        write_report(report, args.output, "adaptive_stream_exported_", stream_markdown)
        return 0
    cfg, model = load_trained(args.config_file, args.opts, args.weights)
    table_path = args.table or default_latency_table_path(cfg)
    report = stream_benchmark(cfg, model, load_latency_table(table_path), table_path, budget_ms=args.budget_ms,
                              frames=args.frames, load_threads=args.load_threads, load_size=args.load_size)
    write_report(report, args.output, "adaptive_stream_", stream_markdown)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as err:
        sys.exit(f"error: {err}")
