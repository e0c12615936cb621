"""The accuracy-efficiency trade-off plot of one or more width sweeps (matplotlib, no display).

A study draws 4 widths x 4 input scales x several methods in each panel, too many points for a
text label each. So a point's configuration is read from its marker: colour = method, shape =
width, size = input scale (a figure legend for each), filled = on the method's Pareto front
(`query_table.pareto_front`, drawn as a line), hollow = off it. Text labels go only to the front
points of the methods a reader compares (`labelled`), and only where one fits without covering
another label or a marker; a point whose label does not fit is still identified by its marker.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from .query_table import metric_of, pareto_front  # noqa: E402

PANELS = [("bbox", "AP", "box AP"), ("bbox", "APs", "box AP small"), ("bbox", "APl", "box AP large"),
          ("segm", "AP", "mask AP"), ("segm", "APs", "mask AP small"), ("segm", "APl", "mask AP large")]
METRIC_NAMES = {(task, metric): name for task, metric, name in PANELS}  # what a plot calls a metric
WIDTH_MARKERS = ("v", "s", "^", "o", "D", "P", "X", "h")  # narrowest width first
MARKER_POINTS = (4.0, 10.0)  # marker diameter in points of the smallest and largest input scale
DPI = 110
# Where a label may sit relative to its point, tried in order: offset in points, alignment, whether
# a leader line is drawn (the far offsets, where the label no longer touches its point).
LABEL_SPOTS = [((dx * d, dy * d), ha, va, d > 6)
               for d in (5, 14, 26)
               for dx, dy, ha, va in ((1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
                                      (-1, -1, "right", "top"), (1, 0, "left", "center"), (-1, 0, "right", "center"),
                                      (0, 1.4, "center", "bottom"), (0, -1.4, "center", "top"))]


def front_gid(method: str) -> str:
    """The gid of a method's front line, by which tests and callers find it in the figure."""
    return f"front:{method}"


def _width_markers(sweeps: Dict[str, List[Dict]]) -> Dict[float, str]:
    widths = sorted({round(r["width"], 6) for records in sweeps.values() for r in records})
    return {w: WIDTH_MARKERS[i % len(WIDTH_MARKERS)] for i, w in enumerate(widths)}


def _scale_sizes(sweeps: Dict[str, List[Dict]]) -> Dict[float, float]:
    """Marker diameter (points) per input scale, linear in the scale from MARKER_POINTS[0] to [1]."""
    scales = sorted({round(r["resolution_scale"], 6) for records in sweeps.values() for r in records})
    low, high = MARKER_POINTS
    if len(scales) == 1:
        return {scales[0]: (low + high) / 2}
    return {s: low + (high - low) * (s - scales[0]) / (scales[-1] - scales[0]) for s in scales}


def _label(record: Dict) -> str:
    proposals = record.get("proposals")
    return f"w{record['width']:g} s{record['resolution_scale']:.2g}" + (f" p{proposals}" if proposals else "")


def draw_tradeoff(sweeps: Dict[str, List[Dict]], title: str = "",
                  labelled: Optional[Sequence[str]] = None) -> plt.Figure:
    """The trade-off figure (see the module docstring), not saved: one panel per metric (box/mask
    AP, AP-small, AP-large, COCO AP on a 0-100 scale) against GFLOPs per image. `labelled`: the
    methods whose front points get text labels where they fit (default: the first two, the pair a
    study compares)."""
    methods = list(sweeps)
    labelled = methods[:2] if labelled is None else list(labelled)
    panels = [p for p in PANELS if any(p[0] in r for records in sweeps.values() for r in records)]
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    legend_inches = 2.3
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns + legend_inches, 4.6 * rows), squeeze=False,
                                dpi=DPI)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {method: colours[i % len(colours)] for i, method in enumerate(methods)}
    markers, sizes = _width_markers(sweeps), _scale_sizes(sweeps)
    fronts: Dict[Tuple[int, str], List[Dict]] = {}
    for index, (axis, (task, metric, name)) in enumerate(zip(axes.flat, panels)):
        for method, records in sweeps.items():
            points = [r for r in records if task in r]
            front = pareto_front(points, (task, metric))
            fronts[index, method] = front
            on_front = {id(r) for r in front}
            axis.plot([r["gflops"] for r in front], [metric_of(r, (task, metric)) for r in front], "-",
                      color=colour_of[method], linewidth=1.5, zorder=2, gid=front_gid(method))
            for r in points:
                filled = id(r) in on_front
                axis.plot(r["gflops"], metric_of(r, (task, metric)), linestyle="none",
                          marker=markers[round(r["width"], 6)], markersize=sizes[round(r["resolution_scale"], 6)],
                          markeredgecolor=colour_of[method], markeredgewidth=1.0,
                          markerfacecolor=colour_of[method] if filled else "none",
                          alpha=1.0 if filled else 0.55, zorder=3 if filled else 2.5)
        axis.set_xlabel("GFLOPs per image")
        axis.set_ylabel(f"{name} (0-100)")
        axis.set_title(f"{name} vs GFLOPs per image")
        axis.grid(alpha=0.3)
        axis.margins(x=0.06, y=0.08)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if title:
        figure.suptitle(title)
    legend_left = 1 - legend_inches / figure.get_figwidth()
    figure.tight_layout(rect=(0, 0, legend_left, 1))
    _add_legends(figure, methods, colour_of, markers, sizes, legend_left)
    renderer = figure.canvas.get_renderer()
    for index, (axis, (task, metric, _)) in enumerate(zip(axes.flat, panels)):
        candidates = [(r["gflops"], metric_of(r, (task, metric)), _label(r), colour_of[method])
                      for method in labelled if method in sweeps for r in fronts[index, method]]
        _place_labels(axis, candidates, renderer)
    return figure


def check_image_format(output_path: str) -> None:
    """Raise ValueError unless matplotlib can write `output_path`'s extension (before any work)."""
    extension = os.path.splitext(output_path)[1].lstrip(".").lower()
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if extension not in supported:
        raise ValueError(f"cannot write a plot as {output_path!r}: the extension must be one of "
                         f"{', '.join('.' + e for e in sorted(supported))}")


def plot_tradeoff(sweeps: Dict[str, List[Dict]], output_path: str, title: str = "",
                  labelled: Optional[Sequence[str]] = None) -> str:
    """`draw_tradeoff` saved as a PNG at `output_path`; returns the path."""
    figure = draw_tradeoff(sweeps, title, labelled)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    figure.savefig(output_path, dpi=figure.dpi)
    plt.close(figure)
    return output_path


def _add_legends(figure, methods: Sequence[str], colour_of: Dict[str, str], markers: Dict[float, str],
                 sizes: Dict[float, float], left: float) -> None:
    """Three legends stacked in the figure's right margin: method (colour), width (marker shape),
    input scale (marker size), each placed under the one before as measured by the renderer."""
    grey = "0.35"
    groups = [
        ("method: colour\nfilled + line: Pareto front\nhollow: off the front",
         [Line2D([], [], color=colour_of[m], marker="o", markersize=6) for m in methods], list(methods)),
        ("width w: marker shape",
         [Line2D([], [], linestyle="none", marker=markers[w], markersize=7, color=grey) for w in markers],
         [f"w {w:g}" for w in markers]),
        ("input scale s: marker size",
         [Line2D([], [], linestyle="none", marker="o", markersize=sizes[s], color=grey) for s in sizes],
         [f"s {s:.2g}" for s in sizes]),
    ]
    renderer = figure.canvas.get_renderer()
    top = 0.98
    for heading, handles, labels in groups:
        legend = figure.legend(handles, labels, title=heading, loc="upper left", bbox_to_anchor=(left, top),
                               fontsize=8, title_fontsize=8, alignment="left", frameon=False)
        box = legend.get_window_extent(renderer).transformed(figure.transFigure.inverted())
        top = box.y0 - 0.02


def _place_labels(axis, candidates: Sequence[Tuple[float, float, str, str]], renderer) -> List:
    """Annotate each candidate (x, y, text, colour) at the first LABEL_SPOTS offset whose text box
    stays inside the axes and covers neither a placed label nor any marker; skip it where none does.
    The axes limits are frozen first so that the boxes measured here are the ones drawn."""
    axis.set_xlim(axis.get_xlim())
    axis.set_ylim(axis.get_ylim())
    inside = axis.get_window_extent(renderer)
    obstacles = []
    for line in axis.get_lines():
        if line.get_marker() in (None, "None", "none", ""):
            continue
        radius = line.get_markersize() * axis.figure.dpi / 72 / 2 + 1
        for x, y in axis.transData.transform(line.get_xydata()):
            obstacles.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))
    placed = []
    for x, y, text, colour in candidates:
        for offset, ha, va, leader in LABEL_SPOTS:
            annotation = axis.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                       fontsize=7, color=colour, zorder=4,
                                       arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.6, shrinkA=0,
                                                       shrinkB=3) if leader else None)
            box = annotation.get_window_extent(renderer).padded(1)
            fits = (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(other) for other in obstacles))
            if fits:
                obstacles.append(box)
                placed.append(annotation)
                break
            annotation.remove()
    return placed
