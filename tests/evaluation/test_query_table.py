"""The query table's pieces on hand-made records: ties, NaN, the cost keys, the table text, the
sweep and metric checks (the front and budget queries of a whole sweep are in test_width_sweep.py
and, in milliseconds, in tests/runtime/test_latency.py)."""
import json
import math

import pytest

from mutualnet_det.evaluation.query_table import best_config, format_table, load_sweep, metric_of, parse_metric, pareto_front


def record(width, scale, gflops, ap, segm_ap=None, **extra):
    result = {"width": width, "resolution_scale": scale, "gflops": gflops, "bbox": {"AP": ap, "APs": ap / 2}, **extra}
    if segm_ap is not None:
        result["segm"] = {"AP": segm_ap}
    return result


def test_metric_of_reads_task_and_name_as_a_float():
    assert metric_of({"segm": {"APs": 12}}, ("segm", "APs")) == 12.0
    assert isinstance(metric_of({"segm": {"APs": 12}}, ("segm", "APs")), float)


def test_front_ties_nan_and_another_metric():
    """Equal cost: the higher AP is kept and the lower dropped; equal AP at a higher cost is not an
    improvement; a NaN AP is never on the front; the front follows the metric asked for."""
    records = [record(0.5, 1.0, 2.0, 20.0), record(0.25, 1.0, 2.0, 25.0), record(0.75, 1.0, 3.0, 25.0),
               record(1.0, 0.5, 3.5, float("nan")), record(1.0, 1.0, 4.0, 30.0)]
    assert [r["width"] for r in pareto_front(records)] == [0.25, 1.0]
    by_small = [record(0.5, 1.0, 2.0, 20.0), record(1.0, 1.0, 4.0, 30.0)]
    by_small[1]["bbox"]["APs"] = 5.0  # the wider one is worse on small objects
    assert [r["width"] for r in pareto_front(by_small, ("bbox", "APs"))] == [0.5]
    with pytest.raises(ValueError, match=r"cost 'flops' is not one of \['gflops', 'latency_ms'\]"):
        pareto_front(records, cost="flops")


def test_best_config_ties_go_to_the_cheaper_and_errors_name_the_budget():
    table = [record(1.0, 1.0, 4.0, 30.0), record(0.5, 1.0, 2.0, 30.0), record(0.25, 1.0, 1.5, 10.0)]
    assert best_config(table, 5.0)["width"] == 0.5  # same AP: the cheaper
    assert best_config(table, 1.5)["width"] == 0.25  # the budget is inclusive
    assert best_config(table, 5.0, ("bbox", "APs"))["width"] == 0.5
    with pytest.raises(ValueError, match=r"^budget 1.0 GFLOPs is below the cheapest configuration "
                                         r"\(width 0.25, scale 1.0: 1.500 GFLOPs\)$"):
        best_config(table, 1.0)
    with pytest.raises(ValueError, match=r"^give exactly one budget, max_gflops or max_ms \(got max_gflops=None, max_ms=None\)$"):
        best_config(table)
    with pytest.raises(ValueError, match=r"^the table is empty: no configuration to choose from$"):
        best_config([], 1.0)
    with pytest.raises(ValueError, match=r"^configuration width 0.5, scale 1.0 has no 'gflops': use a table written by a width sweep$"):
        best_config([{"width": 0.5, "resolution_scale": 1.0, "bbox": {"AP": 1.0}}], 1.0)
    with pytest.raises(ValueError, match=r"has no 'latency_ms': use a table written by tools/profile_latency.py$"):
        best_config(table, max_ms=10.0)


def test_format_table_rows_by_hand():
    text = format_table([record(0.25, 0.5, 1.23456, 20.0, segm_ap=18.0), record(1.0, 1.0, 4.0, 30.0)])
    lines = text.splitlines()
    assert lines[0].split() == ["budget", "(GFLOPs)", "width", "scale", "bbox", "AP", "segm", "AP"]
    assert lines[2].split() == ["<=", "1.235", "0.25", "0.50", "20.00", "18.00"]
    assert lines[3].split() == ["<=", "4.000", "1.00", "1.00", "30.00", "nan"]  # no segm: nan
    assert format_table([record(1.0, 1.0, 4.0, 30.0)], ("bbox", "APs")).splitlines()[0].split()[4:6] == ["bbox", "APs"]


def test_load_sweep_accepts_a_sweep_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "width_sweep.json"
    good.write_text(json.dumps([record(1.0, 1.0, 4.0, 30.0)]))
    assert load_sweep(str(good)) == [record(1.0, 1.0, 4.0, 30.0)]
    with pytest.raises(ValueError, match=r"^cannot read width sweep '.*missing.json': .*No such file"):
        load_sweep(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match=r"^cannot read width sweep '.*broken.json': "):
        load_sweep(str(broken))
    for content in ({"width": 1.0, "gflops": 1.0}, [], [{"width": 1.0}], [{"gflops": 1.0}]):
        not_a_sweep = tmp_path / "other.json"
        not_a_sweep.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=r"'.*other.json' is not a width_sweep.json \(a list of records with width, gflops, bbox, ...\)$"):
            load_sweep(str(not_a_sweep))


def test_parse_metric_checks_presence_and_a_finite_value():
    records = [record(1.0, 1.0, 4.0, float("nan")), record(0.5, 1.0, 2.0, 20.0, segm_ap=float("nan"))]
    assert parse_metric("bbox.APs", records, "the sweep") == ("bbox", "APs")
    assert parse_metric("bbox.AP", records, "the sweep") == ("bbox", "AP")  # finite in one configuration
    for text in ("bbox", "bbox.AP.x", "keypoints.AP", "bbox.AR"):
        with pytest.raises(ValueError, match=rf"^--metric '{text}' is not in the sweep; use task.metric, e.g. bbox.AP or segm.APs$"):
            parse_metric(text, records, "the sweep")
    nan_everywhere = [record(1.0, 1.0, 4.0, float("nan"))]
    with pytest.raises(ValueError, match=r"^the sweep has no finite bbox.AP in any configuration \(NaN everywhere\): "
                                         r"was it evaluated on an empty or unannotated dataset\?$"):
        parse_metric("bbox.AP", nan_everywhere, "the sweep")
    assert math.isnan(metric_of(nan_everywhere[0], ("bbox", "AP")))
