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
"""
import argparse
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
from detectron2.utils.logger import setup_logger

from mutualnet_det.benchmark.timing import write_report
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.runtime.latency import default_latency_table_path, load_latency_table, load_trained
from mutualnet_det.runtime.stream import stream_benchmark, stream_markdown

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
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="mutualnet_det")
    if args.frames < 2 or args.load_threads < 1:
        raise ValueError("need --frames >= 2 and --load-threads >= 1")
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
