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
import datetime
import itertools
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_latency import default_sweep, load_trained  # noqa: E402

from mutualnet_det.runtime.adaptive import AdaptivePredictor, FixedPolicy  # noqa: E402
from mutualnet_det.benchmark.timing import write_report  # noqa: E402
from mutualnet_det.checkpoint import CheckpointError  # noqa: E402
from mutualnet_det.runtime.latency import (configuration_of, fronts_by_threads, load_latency_table, threads_of,  # noqa: E402
                                   validation_images)
from mutualnet_det.runtime.stream import BackgroundLoad, frame_rows, run_stream, summarize_stream  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = (1.0, 1.0)


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


def full_configuration(table, threads):
    """The table's width 1.0 / scale 1.0 record at `threads` torch threads, or None."""
    return next((r for r in table["configurations"] if configuration_of(r) == FULL and threads_of(r, table) == threads),
                None)


def _counts(counts):
    return ", ".join(f"{key}: {count}" for key, count in counts.items())


def markdown(report):
    lines = [f"# Adaptive stream {report['date']} on {report['device_name']} ({report['setting']} slimmable model)", "",
             f"{report['frames']} validation images (cycled); latency table profiled at torch thread count(s) "
             f"{', '.join(map(str, report['table_threads']))}; budget {report['budget_ms']:.1f} ms per frame; from frame "
             f"{report['load_from_frame']} another process multiplies {report['load_size']}x{report['load_size']} "
             f"matrices on {report['load_threads']} thread(s). AP: the {'.'.join(report['metric'])} of the configuration "
             "used, from the latency table (the sweep's value), averaged over frames. Load average (1, 5, 15 min) "
             f"when each stream started: "
             + ", ".join(f"{name} {' / '.join(f'{x:.2f}' for x in load)}" for name, load in report["load_average_at_start"].items())
             + ".", "",
             "| predictor | within budget (all) | before load | with load | mean AP (all) | before load | with load | median ms with load | switches | frames per thread count |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["summaries"].items():
        lines.append(f"| {name} | {s['all']['within_budget']:.1%} | {s['before_load']['within_budget']:.1%} | "
                     f"{s['with_load']['within_budget']:.1%} | {s['all']['mean_metric']:.2f} | "
                     f"{s['before_load']['mean_metric']:.2f} | {s['with_load']['mean_metric']:.2f} | "
                     f"{s['with_load']['median_ms']:.1f} | {s['switches']} | {_counts(s['threads_used'])} |")
    adaptive = report["summaries"]["adaptive"]
    lines += ["", f"Configurations used by the adaptive predictor: {_counts(adaptive['configurations_used'])}; median switch "
              f"{adaptive['median_switch_ms'] if adaptive['median_switch_ms'] is None else round(adaptive['median_switch_ms'], 2)} ms; "
              f"frames with the load before its first frame within the budget: {adaptive['frames_with_load_before_first_within']}.",
              "", "Target: >= 90% of frames within the budget for the adaptive predictor where the fixed one keeps < 50%: "
              f"{adaptive['all']['within_budget']:.1%} vs {report['summaries']['fixed_w1.0_s1.0']['all']['within_budget']:.1%}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="mutualnet_det")
    if args.frames < 2 or args.load_threads < 1:
        raise ValueError("need --frames >= 2 and --load-threads >= 1")
    cfg, model = load_trained(args.config_file, args.opts, args.weights)
    table_path = args.table or os.path.join(os.path.dirname(default_sweep(cfg)), "latency_table.json")
    table = load_latency_table(table_path)
    table_threads = list(fronts_by_threads(table))
    full = full_configuration(table, table_threads[-1])
    if full is None:
        raise ValueError(f"the latency table {table_path!r} has no width 1.0 / scale 1.0 configuration at "
                         f"{table_threads[-1]} threads to compare with")
    budget_ms = args.budget_ms or round(1.2 * full["latency_ms"], 1)
    images = validation_images(cfg)
    stream = list(itertools.islice(itertools.cycle(images), args.frames))
    load_from_frame = args.frames // 2
    for threads in table_threads:  # untimed, at every thread count the streams may use
        warm_up = AdaptivePredictor(cfg, model, table, budget_ms, policy=FixedPolicy(full_configuration(table, threads) or full))
        for image in images[:5]:
            warm_up(image)
    runs = {"adaptive": AdaptivePredictor(cfg, model, table, budget_ms),
            "fixed_w1.0_s1.0": AdaptivePredictor(cfg, model, table, budget_ms, policy=FixedPolicy(full))}
    report = {"date": datetime.date.today().isoformat(), "device": table["device"], "device_name": table["device_name"],
              "setting": table["setting"],
              "table": os.path.abspath(table_path), "weights": os.path.abspath(cfg.MODEL.WEIGHTS),
              "metric": table["metric"], "table_threads": table_threads, "budget_ms": budget_ms, "frames": args.frames,
              "load_from_frame": load_from_frame,
              "load_threads": args.load_threads, "load_size": args.load_size, "summaries": {}, "per_frame": {},
              "load_average_at_start": {}}
    for name, predictor in runs.items():
        print(f"stream: {name}")
        report["load_average_at_start"][name] = os.getloadavg()  # other work on the machine (1, 5, 15 min)
        frames = run_stream(predictor, stream, BackgroundLoad(args.load_threads, args.load_size), load_from_frame)
        report["summaries"][name] = summarize_stream(frames, budget_ms, load_from_frame)
        report["per_frame"][name] = frame_rows(frames)
    write_report(report, args.output, "adaptive_stream_", markdown)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as err:
        sys.exit(f"error: {err}")
