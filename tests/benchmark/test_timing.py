"""write_report: the one writer of the benchmark tools' reports (tools/benchmark.py,
tools/adaptive_stream_benchmark.py)."""
import json

from mutualnet_det.benchmark.timing import write_report


def test_report_named_by_prefix_device_type_and_date_with_json_and_markdown(tmp_path, capsys):
    report = {"device": "cuda:1", "date": "2026-11-26", "ratio": 0.9}
    stem = write_report(report, str(tmp_path / "out"), "precision_", lambda r: f"# ratio {r['ratio']}\n")
    assert stem == str(tmp_path / "out" / "precision_cuda_2026-11-26")
    assert json.load(open(stem + ".json")) == report
    assert open(stem + ".md").read() == "# ratio 0.9\n"
    assert "# ratio 0.9" in capsys.readouterr().out
