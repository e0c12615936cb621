"""The accuracy-efficiency trade-off plot of one or more width sweeps (matplotlib, no display)."""
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .query_table import pareto_front  # noqa: E402

PANELS = [("bbox", "AP", "box AP"), ("bbox", "APs", "box AP small"), ("bbox", "APl", "box AP large"),
          ("segm", "AP", "mask AP"), ("segm", "APs", "mask AP small"), ("segm", "APl", "mask AP large")]


def plot_tradeoff(sweeps: Dict[str, List[Dict]], output_path: str, title: str = "") -> str:
    """One panel per metric (box/mask AP, AP-small, AP-large) against GFLOPs; per method all
    configurations as dots and its Pareto front as a line, front points labelled 'w<width> s<scale>'."""
    panels = [p for p in PANELS if any(p[0] in r for records in sweeps.values() for r in records)]
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (task, metric, label) in zip(axes.flat, panels):
        for index, (method, records) in enumerate(sweeps.items()):
            colour = colours[index % len(colours)]
            points = [r for r in records if task in r]
            axis.scatter([r["gflops"] for r in points], [r[task][metric] for r in points], color=colour, alpha=0.35, s=18)
            front = pareto_front(points, (task, metric))
            axis.plot([r["gflops"] for r in front], [r[task][metric] for r in front], "-o", color=colour,
                      label=method, markersize=5)
            for r in front:
                axis.annotate(f"w{r['width']:g} s{r['resolution_scale']:g}", (r["gflops"], r[task][metric]),
                              textcoords="offset points", xytext=(3, 4), fontsize=7, color=colour)
        axis.set_xlabel("GFLOPs per image")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return output_path
