"""The trade-off plot at a study's density stays readable: no two texts overlap (measured by
matplotlib's renderer), the legends name every method and width, and each front line is the
query table's Pareto front. The old plot (a text label on every front point, a legend of methods
only) fails the first two."""
import itertools
import json
import os
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from helpers import REPO

from mutualnet_det.evaluation.plots import draw_tradeoff, front_gid, plot_tradeoff
from mutualnet_det.evaluation.query_table import metric_of, pareto_front

STUDY_RESULTS = os.path.join(REPO, "benchmarks", "study", "results.json")
MAIN_JOB = os.path.join(REPO, "benchmarks", "main_job")
WIDTHS = (1.0, 0.75, 0.5, 0.25)
SCALES = (1.0, 6 / 7, 5 / 7, 4 / 7)


def study_sweeps():
    with open(STUDY_RESULTS) as f:
        return json.load(f)


def close_sweeps(methods=("MutualNet", "US-Net", "MutualNet + distill")):
    """16 configurations x 3 methods whose APs differ by tenths between methods: every front
    point of one method has another method's point next to it."""
    sweeps = {}
    for index, method in enumerate(methods):
        records = []
        for width in WIDTHS:
            for scale in SCALES:
                ap = 40 + 20 * width + 15 * scale + 0.3 * index + 0.1 * ((width * 7 + scale * 3) % 1)
                records.append({"width": width, "resolution_scale": scale,
                                "gflops": 0.1 + 1.2 * width ** 2 * scale ** 2 + 0.01 * index,
                                "bbox": {"AP": ap, "APs": ap - 10, "APl": ap + 5},
                                "segm": {"AP": ap - 2, "APs": ap - 12, "APl": ap + 3}})
        sweeps[method] = records
    return sweeps


@pytest.fixture
def close_figure():
    figure = draw_tradeoff(close_sweeps(), title="synthetic")
    figure.canvas.draw()
    yield figure
    plt.close(figure)


@pytest.fixture(scope="module")
def study_figure():
    figure = draw_tradeoff(study_sweeps(), title="Study on the embedded dataset (mean over seeds where several)")
    figure.canvas.draw()
    yield figure
    plt.close(figure)


def figure_texts(figure):
    """Every text drawn: annotations, titles, axis labels of each panel, the legends' entries and
    headings, the figure title."""
    texts = [figure._suptitle] if figure._suptitle else []
    for axis in figure.axes:
        if not axis.axison:
            continue
        texts += list(axis.texts) + [axis.title, axis.xaxis.label, axis.yaxis.label]
        if axis.get_legend():
            texts += list(axis.get_legend().get_texts()) + [axis.get_legend().get_title()]
    for legend in figure.legends:
        texts += list(legend.get_texts()) + [legend.get_title()]
    return [t for t in texts if t.get_visible() and t.get_text()]


def assert_no_overlap(figure):
    boxes = [(t.get_text(), t.get_window_extent()) for t in figure_texts(figure)]
    overlapping = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert not overlapping, f"{len(overlapping)} overlapping text pairs, e.g. {overlapping[:5]}"


def legend_texts(figure):
    legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    return {t.get_text() for legend in legends for t in legend.get_texts()}


def test_study_plot_has_no_overlapping_text(study_figure):
    assert_no_overlap(study_figure)
    labels = [t for axis in study_figure.axes for t in axis.texts]
    assert len(labels) >= 6, "the front points a reader compares should still be labelled where they fit"


def test_close_sweeps_plot_has_no_overlapping_text(close_figure):
    assert_no_overlap(close_figure)


def test_labels_cover_no_marker_and_stay_inside_their_panel(study_figure):
    dpi = study_figure.dpi
    for axis in study_figure.axes:
        inside = axis.get_window_extent()
        markers = []
        for line in axis.get_lines():
            if line.get_marker() not in (None, "None", "none", ""):
                radius = line.get_markersize() * dpi / 72 / 2
                markers += [(x, y, radius) for x, y in axis.transData.transform(line.get_xydata())]
        for text in axis.texts:
            box = text.get_window_extent()
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            for x, y, radius in markers:  # the marker's bounding square and the text box are disjoint
                assert (box.x1 < x - radius or box.x0 > x + radius or box.y1 < y - radius or box.y0 > y + radius), \
                    f"label {text.get_text()!r} covers a marker at ({x:.0f}, {y:.0f}) px"


@pytest.mark.parametrize("sweeps", [study_sweeps, close_sweeps])
def test_legend_names_every_method_width_and_scale(sweeps):
    sweeps = sweeps()
    figure = draw_tradeoff(sweeps)
    try:
        names = legend_texts(figure)
    finally:
        plt.close(figure)
    records = [r for rows in sweeps.values() for r in rows]
    assert set(sweeps) <= names
    assert {f"w {r['width']:g}" for r in records} <= names
    assert {f"s {r['resolution_scale']:.2g}" for r in records} <= names


def brute_force_front(records, metric):
    """Independent of pareto_front: a record is on the front when no other record is at most as
    expensive and at least as accurate (the values here have no exact ties)."""
    on_front = [r for r in records
                if not any(o is not r and o["gflops"] <= r["gflops"] and metric_of(o, metric) >= metric_of(r, metric)
                           for o in records)]
    return sorted(on_front, key=lambda r: r["gflops"])


def test_front_lines_are_the_pareto_fronts(study_figure):
    sweeps = study_sweeps()
    panels = {axis.get_title(): axis for axis in study_figure.axes if axis.axison}
    for (task, metric), name in ((("bbox", "AP"), "box AP"), (("segm", "APs"), "mask AP small")):
        axis = next(a for title, a in panels.items() if title.startswith(name + " vs"))
        for method, records in sweeps.items():
            (line,) = [line for line in axis.get_lines() if line.get_gid() == front_gid(method)]
            expected = [(r["gflops"], metric_of(r, (task, metric))) for r in pareto_front(records, (task, metric))]
            assert [tuple(p) for p in line.get_xydata()] == expected
            independent = [(r["gflops"], metric_of(r, (task, metric))) for r in brute_force_front(records, (task, metric))]
            assert expected == independent


def test_plot_tradeoff_writes_the_png_and_the_cli_takes_the_main_jobs_sweeps(tmp_path):
    path = plot_tradeoff(close_sweeps(), str(tmp_path / "close.png"), title="t")
    assert path.endswith("close.png") and os.path.getsize(path) > 20000
    command = [sys.executable, os.path.join(REPO, "tools", "plot_tradeoff.py"),
               os.path.join(MAIN_JOB, "mutualnet", "width_sweep.json"), os.path.join(MAIN_JOB, "usnet", "width_sweep.json"),
               "--labels", "MutualNet", "US-Net", "-o", str(tmp_path / "main.png")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(tmp_path / "main.png") > 20000
    mismatched = subprocess.run(command[:-5] + ["--labels", "MutualNet", "-o", str(tmp_path / "x.png")],
                                capture_output=True, text=True, cwd=REPO)
    assert mismatched.returncode != 0 and "one label per sweep" in mismatched.stderr
