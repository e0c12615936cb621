"""Bad input to the evaluation tools ends in one `error:` line before any work, and output
folders that do not exist yet are created."""
import json
import math
import sys

import pytest
from helpers import REPO
from tools_loader import load_tool

MAIN_JOB_SWEEP = f"{REPO}/benchmarks/main_job/mutualnet/width_sweep.json"


def run_tool(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    return load_tool(name).main()


def nan_sweep(tmp_path):
    records = json.load(open(MAIN_JOB_SWEEP))
    for record in records:
        for task in ("bbox", "segm"):
            record[task] = {key: math.nan for key in record[task]}
    path = tmp_path / "nan_sweep.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_query_table_refuses_a_sweep_without_a_finite_ap(tmp_path, monkeypatch):
    path = nan_sweep(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_tool("query_table", [path], monkeypatch)
    assert exit_info.value.code == (f"error: {path} has no finite bbox.AP in any configuration (NaN everywhere): "
                                    "was it evaluated on an empty or unannotated dataset?")
    assert not (tmp_path / "query_table.json").exists()


def test_query_table_and_plot_create_missing_output_folders(tmp_path, monkeypatch):
    run_tool("query_table", [MAIN_JOB_SWEEP, "-o", str(tmp_path / "new" / "table.json")], monkeypatch)
    front = json.load(open(tmp_path / "new" / "table.json"))
    assert front and all(math.isfinite(r["bbox"]["AP"]) for r in front)
    run_tool("plot_tradeoff", [MAIN_JOB_SWEEP, "-o", str(tmp_path / "plots" / "deeper" / "x.png")], monkeypatch)
    assert (tmp_path / "plots" / "deeper" / "x.png").stat().st_size > 10_000


def test_demo_with_nothing_to_render_is_an_error(tmp_path):
    demo = load_tool_from_demo()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = demo.get_parser().parse_args(["--config-file", "configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml",
                                         "--input", str(empty), "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=rf"nothing to render: {empty} holds no image \(.png, .jpg"):
        demo.main(args)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def load_tool_from_demo():
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_refuses_an_unwritable_format_and_a_sweep_without_finite_ap(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        run_tool("plot_tradeoff", [MAIN_JOB_SWEEP, "-o", str(tmp_path / "p" / "x.txt")], monkeypatch)
    assert str(exit_info.value.code).startswith(f"error: cannot write a plot as '{tmp_path}/p/x.txt': the extension must be one of ")
    path = nan_sweep(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_tool("plot_tradeoff", [MAIN_JOB_SWEEP, path, "-o", str(tmp_path / "p" / "x.png")], monkeypatch)
    assert exit_info.value.code == (f"error: {path} has no finite bbox.AP in any configuration (NaN everywhere): "
                                    "was it evaluated on an empty or unannotated dataset?")
    assert not (tmp_path / "p").exists()


def test_query_table_checks_the_budget_before_writing(tmp_path, monkeypatch):
    output = tmp_path / "table.json"
    with pytest.raises(SystemExit) as exit_info:
        run_tool("query_table", [MAIN_JOB_SWEEP, "--budget", "0.001", "-o", str(output)], monkeypatch)
    assert str(exit_info.value.code).startswith("error: budget 0.001 GFLOPs is below the cheapest configuration")
    assert not output.exists()


def test_export_benchmark_refuses_several_thread_counts_before_any_work(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_tool("benchmark", ["--export", "--threads", "1", "2", "--weights", "does/not/exist.pth"], monkeypatch)
    assert exit_info.value.code == 2  # argparse's usage error, raised before the (missing) weights are read
    assert "--export times every runtime at one thread count: give one --threads value, not [1, 2]" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["--export", "--stages", "--targets"])
def test_benchmark_refuses_a_thread_count_below_one_before_any_work(mode, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_tool("benchmark", [mode, "--threads", "2", "0", "--weights", "does/not/exist.pth"], monkeypatch)
    assert exit_info.value.code == 2
    assert "--threads 2 0: every thread count must be at least 1" in capsys.readouterr().err
