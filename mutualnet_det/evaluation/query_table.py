"""The deployment query table: for each compute budget, the best (width, resolution scale).

As in the MutualNet paper's deployment table, the table is the Pareto front of a width sweep in
(GFLOPs, AP): a configuration is kept when no cheaper-or-equal configuration has at least its AP.
The same front and query work on measured time: a latency table (mutualnet_det/runtime/latency.py) adds
`latency_ms` (median milliseconds per image on one device) to each record.
"""
import json
import math
from typing import Dict, List, Sequence, Tuple

from tabulate import tabulate


def metric_of(record: Dict, metric: Tuple[str, str]) -> float:
    task, name = metric
    return float(record[task][name])


# What a budget is counted in: the record key it is compared with and its unit.
COSTS = {"gflops": "GFLOPs", "latency_ms": "ms"}


def _cost_of(record: Dict, cost: str) -> float:
    if cost not in COSTS:
        raise ValueError(f"cost {cost!r} is not one of {sorted(COSTS)}")
    if cost not in record:
        source = "tools/profile_latency.py" if cost == "latency_ms" else "a width sweep"
        raise ValueError(f"configuration width {record.get('width')}, scale {record.get('resolution_scale')} "
                         f"has no {cost!r}: use a table written by {source}")
    return float(record[cost])


def pareto_front(records: Sequence[Dict], metric=("bbox", "AP"), cost: str = "gflops") -> List[Dict]:
    """Records on the (cost, metric) Pareto front, cheapest first; cost is "gflops" or
    "latency_ms" (a latency table's measured milliseconds)."""
    ordered = sorted(records, key=lambda r: (_cost_of(r, cost), -metric_of(r, metric)))
    front, best = [], float("-inf")
    for record in ordered:
        value = metric_of(record, metric)
        if value > best:  # a NaN value is never on the front
            front.append(record)
            best = value
    return front


def best_config(table: Sequence[Dict], max_gflops: float = None, metric=("bbox", "AP"), *,
                max_ms: float = None) -> Dict:
    """The configuration with the highest metric within a budget: at most `max_gflops` GFLOPs per
    image, or (exactly one of the two) at most `max_ms` milliseconds per image as measured in a
    latency table (its records' `latency_ms`). Ties go to the cheaper configuration."""
    if (max_gflops is None) == (max_ms is None):
        raise ValueError(f"give exactly one budget, max_gflops or max_ms (got max_gflops={max_gflops}, max_ms={max_ms})")
    if not table:
        raise ValueError("the table is empty: no configuration to choose from")
    cost, budget = ("gflops", max_gflops) if max_ms is None else ("latency_ms", max_ms)
    affordable = [r for r in table if _cost_of(r, cost) <= budget]
    if not affordable:
        cheapest = min(table, key=lambda r: _cost_of(r, cost))
        raise ValueError(f"budget {budget} {COSTS[cost]} is below the cheapest configuration "
                         f"(width {cheapest['width']}, scale {cheapest['resolution_scale']}: "
                         f"{_cost_of(cheapest, cost):.3f} {COSTS[cost]})")
    return max(affordable, key=lambda r: (metric_of(r, metric), -_cost_of(r, cost)))


def parse_metric(text: str, records: Sequence[Dict], source: str):
    """("task", "metric") from "task.metric" (e.g. bbox.AP, segm.APs), checked against the
    records of `source` (a sweep or latency table): present, and finite in at least one
    configuration (a sweep of an empty or unannotated dataset has NaN everywhere)."""
    metric = tuple(text.split("."))
    if len(metric) != 2 or metric[0] not in records[0] or metric[1] not in records[0][metric[0]]:
        raise ValueError(f"--metric {text!r} is not in {source}; use task.metric, e.g. bbox.AP or segm.APs")
    if not any(math.isfinite(metric_of(r, metric)) for r in records):
        raise ValueError(f"{source} has no finite {text} in any configuration (NaN everywhere): was it "
                         "evaluated on an empty or unannotated dataset?")
    return metric


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
    """The front as a table; a proposals column where the sweep made the count a knob."""
    with_proposals = any("proposals" in r for r in front)
    rows = [[f"<= {r['gflops']:.3f}", r["width"], r["resolution_scale"]] + ([r.get("proposals")] if with_proposals else [])
            + [metric_of(r, metric), r.get("segm", {}).get("AP", float("nan"))] for r in front]
    return tabulate(rows, headers=["budget (GFLOPs)", "width", "scale"] + (["proposals"] if with_proposals else [])
                    + [f"{metric[0]} {metric[1]}", "segm AP"], floatfmt=".2f")
