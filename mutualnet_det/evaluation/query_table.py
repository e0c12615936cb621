"""The deployment query table: for each compute budget, the best (width, resolution scale).

As in the MutualNet paper's deployment table, the table is the Pareto front of a width sweep in
(GFLOPs, AP): a configuration is kept when no cheaper-or-equal configuration has at least its AP.
"""
import json
from typing import Dict, List, Sequence, Tuple

from tabulate import tabulate


def metric_of(record: Dict, metric: Tuple[str, str]) -> float:
    task, name = metric
    return float(record[task][name])


def pareto_front(records: Sequence[Dict], metric=("bbox", "AP")) -> List[Dict]:
    """Records on the (GFLOPs, metric) Pareto front, cheapest first."""
    ordered = sorted(records, key=lambda r: (r["gflops"], -metric_of(r, metric)))
    front, best = [], float("-inf")
    for record in ordered:
        value = metric_of(record, metric)
        if value > best:
            front.append(record)
            best = value
    return front


def best_config(table: Sequence[Dict], max_gflops: float, metric=("bbox", "AP")) -> Dict:
    """The configuration with the highest metric costing at most `max_gflops` GFLOPs per image."""
    affordable = [r for r in table if r["gflops"] <= max_gflops]
    if not affordable:
        cheapest = min(table, key=lambda r: r["gflops"])
        raise ValueError(f"budget {max_gflops} GFLOPs is below the cheapest configuration "
                         f"(width {cheapest['width']}, scale {cheapest['resolution_scale']}: "
                         f"{cheapest['gflops']:.3f} GFLOPs)")
    return max(affordable, key=lambda r: (metric_of(r, metric), -r["gflops"]))


def load_sweep(path: str) -> List[Dict]:
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read width sweep {path!r}: {err}") from None
    if not isinstance(records, list) or not records or not all("gflops" in r and "width" in r for r in records):
        raise ValueError(f"{path!r} is not a width_sweep.json (a list of records with width, gflops, bbox, ...)")
    return records


def format_table(front: Sequence[Dict], metric=("bbox", "AP")) -> str:
    rows = [[f"<= {r['gflops']:.3f}", r["width"], r["resolution_scale"], metric_of(r, metric),
             r.get("segm", {}).get("AP", float("nan"))] for r in front]
    return tabulate(rows, headers=["budget (GFLOPs)", "width", "scale", f"{metric[0]} {metric[1]}", "segm AP"],
                    floatfmt=".2f")
