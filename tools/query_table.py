#!/usr/bin/env python
"""Print and write the deployment query table (Pareto front) of a width sweep.

    python tools/query_table.py output/shapes_mutualnet/inference/shapes_val/width_sweep.json
    python tools/query_table.py sweep.json --budget 2.5     # the configuration to run under 2.5 GFLOPs
"""
import argparse
import json
import os
import sys

from mutualnet_det.evaluation.query_table import best_config, format_table, load_sweep, pareto_front, parse_metric


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="width_sweep.json written by train_net.py --eval-only")
    parser.add_argument("--metric", default="bbox.AP", help="task.metric to maximise (bbox.AP, segm.AP, bbox.APs, ...)")
    parser.add_argument("--budget", type=float, help="also print the best configuration within this many GFLOPs")
    parser.add_argument("-o", "--output", help="where to write the table (default: query_table.json beside the sweep)")
    args = parser.parse_args()
    try:
        records = load_sweep(args.sweep)
        metric = parse_metric(args.metric, records, args.sweep)
        front = pareto_front(records, metric)
        choice = best_config(front, args.budget, metric) if args.budget is not None else None  # before writing
        print(format_table(front, metric))
        output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.sweep)), "query_table.json")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(front, f, indent=1)
        print(f"written to {output}")
        if choice is not None:
            print(f"best under {args.budget} GFLOPs: width {choice['width']}, resolution scale "
                  f"{choice['resolution_scale']} ({choice['gflops']:.3f} GFLOPs, {args.metric} {choice[metric[0]][metric[1]]:.2f})")
    except ValueError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
