"""The study's analyses, from its summary (`results.json`: per method group, one row per (width,
scale) with the mean and the per-seed values of each metric and the seed numbers): the paired
comparison of two methods seed by seed, each method's query table (Pareto front by GFLOPs),
the distillation ablation (the MutualNet paper's Fig. 1 analogue) and small / large
objects per width, as Markdown tables and plots.

A difference "exceeds the seed spread" when its mean over seeds is larger than either method's
range over seeds (max - min) and every seed's difference has the same sign: with 3 seeds a
deliberately plain rule, stated wherever it is used.
"""
import statistics
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..evaluation.plots import METRIC_NAMES  # noqa: E402
from ..evaluation.query_table import pareto_front  # noqa: E402

Metric = Tuple[str, str]


def _key(row: Dict) -> Tuple[float, float]:
    return round(row["width"], 6), round(row["resolution_scale"], 6)


def _seeds(row: Dict, metric: Metric) -> List[float]:
    task, name = metric
    return row[task][f"{name}_seeds"]


def seed_ids(row: Dict) -> List[int]:
    """The seed numbers behind a row's per-seed values (1, 2, ... where results.json predates them)."""
    return row.get("seed_ids") or list(range(1, row["seeds"] + 1))


def paired_differences(summary: Dict, a: str, b: str, metric: Metric = ("bbox", "AP")) -> List[Dict]:
    """Per (width, scale) of both groups: a - b seed by seed, on the seeds both groups have (paired
    by seed number: same initialisation, data order and width draws), their mean, each group's
    range over those seeds, and whether the mean difference exceeds the seed spread."""
    rows_b = {_key(row): row for row in summary[b]}
    result = []
    for row_a in summary[a]:
        row_b = rows_b.get(_key(row_a))
        if row_b is None:
            continue
        values_a = dict(zip(seed_ids(row_a), _seeds(row_a, metric)))
        values_b = dict(zip(seed_ids(row_b), _seeds(row_b, metric)))
        common = sorted(set(values_a) & set(values_b))
        if not common:
            continue
        seeds_a, seeds_b = [values_a[s] for s in common], [values_b[s] for s in common]
        differences = [x - y for x, y in zip(seeds_a, seeds_b)]
        mean = statistics.fmean(differences)
        spread = max(max(seeds_a) - min(seeds_a), max(seeds_b) - min(seeds_b))
        same_sign = all(d > 0 for d in differences) or all(d < 0 for d in differences)
        result.append({"width": row_a["width"], "resolution_scale": row_a["resolution_scale"], "seeds": common,
                       "differences": differences, "mean": mean, "seed_spread": spread,
                       "exceeds_spread": len(differences) > 1 and same_sign and abs(mean) > spread})
    return result


def format_paired(rows: Sequence[Dict], a: str, b: str, metric: Metric = ("bbox", "AP")) -> str:
    lines = [f"| width | scale | {a} - {b}, {metric[0]} {metric[1]}, per seed | mean | seed spread | exceeds it |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{d:+.1f}" for d in r["differences"])
        lines.append(f"| {r['width']:g} | {r['resolution_scale']:.3g} | {per_seed} | {r['mean']:+.1f} | "
                     f"{r['seed_spread']:.1f} | {'yes' if r['exceeds_spread'] else 'no'} |")
    return "\n".join(lines) + "\n"


def format_fronts(summary: Dict, groups: Sequence[str], metric: Metric = ("bbox", "AP")) -> str:
    """Each group's query table: its Pareto front by GFLOPs (mean over seeds), i.e. the best
    configuration under each budget."""
    lines = ["| method | budget (GFLOPs) | width | scale | box AP | mask AP |", "|---|---|---|---|---|---|"]
    for group in groups:
        for r in pareto_front(summary[group], metric):
            lines.append(f"| {group} | <= {r['gflops']:.2f} | {r['width']:g} | {r['resolution_scale']:.3g} | "
                         f"{r['bbox']['AP']:.1f} | {r['segm']['AP']:.1f} |")
    return "\n".join(lines) + "\n"


def format_sizes(summary: Dict, groups: Sequence[str], scale: float = 1.0) -> str:
    """Small and large objects (box and mask APs, APl; mean over seeds) per group and width."""
    lines = ["| method | width | box APs | box APl | mask APs | mask APl |", "|---|---|---|---|---|---|"]
    for group in groups:
        for r in summary[group]:
            if abs(r["resolution_scale"] - scale) < 1e-6:
                lines.append(f"| {group} | {r['width']:g} | {r['bbox']['APs']:.1f} | {r['bbox']['APl']:.1f} | "
                             f"{r['segm']['APs']:.1f} | {r['segm']['APl']:.1f} |")
    return "\n".join(lines) + "\n"


def _metric_name(metric: Metric) -> str:
    return METRIC_NAMES.get(tuple(metric), f"{metric[0]} {metric[1]}")


def _width_curve(axis, rows: Sequence[Dict], metric: Metric, scale: float, label: str, style: str, colour) -> None:
    """Mean over seeds against width at one input scale, with the seeds' range as a band."""
    points = sorted((r for r in rows if abs(r["resolution_scale"] - scale) < 1e-6), key=lambda r: r["width"])
    widths = [r["width"] for r in points]
    seeds = len(_seeds(points[0], metric)) if points else 0
    label = f"{label} ({seeds} seed{'s' if seeds != 1 else ''})"
    axis.plot(widths, [r[metric[0]][metric[1]] for r in points], style, color=colour, label=label, markersize=5)
    if seeds > 1:
        axis.fill_between(widths, [min(_seeds(r, metric)) for r in points], [max(_seeds(r, metric)) for r in points],
                          color=colour, alpha=0.15)


def _finish_axis(axis, title: str, ylabel: str, widths: Sequence[float]) -> None:
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("backbone width")
    axis.set_xticks(sorted(set(widths)))
    axis.set_ylabel(f"{ylabel} (0-100)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_distillation(summary: Dict, pairs: Sequence[Tuple[str, str]], path: str, scale: float = 1.0) -> str:
    """The Fig. 1 analogue: per method, box and mask AP against width with and without inplace
    distillation (band: range over seeds where there are several)."""
    metrics = [("bbox", "AP"), ("segm", "AP")]
    figure, axes = plt.subplots(len(metrics), len(pairs), figsize=(5.5 * len(pairs), 4.2 * len(metrics)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (plain, distilled) in enumerate(pairs):
        for row, metric in enumerate(metrics):
            axis = axes[row][column]
            _width_curve(axis, summary[plain], metric, scale, f"{plain}, no distillation", "-o", colours[0])
            if distilled in summary:
                _width_curve(axis, summary[distilled], metric, scale, distilled, "--s", colours[1])
            _finish_axis(axis, f"{plain}: {_metric_name(metric)} at input scale {scale:g}\n"
                         "(mean over seeds; band: range over seeds where several)", _metric_name(metric),
                         [r["width"] for r in summary[plain]])
    return _save(figure, path)


def plot_sizes(summary: Dict, groups: Sequence[str], path: str, scale: float = 1.0) -> str:
    """Box AP on small and on large objects against width, one curve per group."""
    metrics = [("bbox", "APs"), ("bbox", "APl")]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, metric in zip(axes[0], metrics):
        for index, group in enumerate(groups):
            _width_curve(axis, summary[group], metric, scale, group, "-o", colours[index % len(colours)])
        _finish_axis(axis, f"{_metric_name(metric)} at input scale {scale:g}\n"
                     "(mean over seeds; band: range over seeds)", _metric_name(metric),
                     [r["width"] for group in groups for r in summary[group]])
    return _save(figure, path)
