#!/usr/bin/env python
"""Plot the accuracy-efficiency trade-off of width sweeps, one curve per method.

    python tools/plot_tradeoff.py A/width_sweep.json B/width_sweep.json --labels MutualNet US-Net -o tradeoff.png
"""
import argparse
import sys

from mutualnet_det.evaluation.plots import check_image_format, plot_tradeoff
from mutualnet_det.evaluation.query_table import load_sweep, parse_metric


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="width_sweep.json files")
    parser.add_argument("--labels", nargs="+", help="one label per sweep (default: file names)")
    parser.add_argument("-o", "--output", default="tradeoff.png")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    labels = args.labels or args.sweeps
    if len(labels) != len(args.sweeps):
        sys.exit(f"error: {len(args.sweeps)} sweeps but {len(labels)} labels; give one label per sweep")
    try:
        check_image_format(args.output)
        sweeps = {label: load_sweep(path) for label, path in zip(labels, args.sweeps)}
        for path, records in zip(args.sweeps, sweeps.values()):
            parse_metric("bbox.AP", records, path)  # a sweep with no finite AP would draw nothing
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"written to {plot_tradeoff(sweeps, args.output, args.title)}")


if __name__ == "__main__":
    main()
