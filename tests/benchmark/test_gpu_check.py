"""The GPU check's plan, its refusal without CUDA, its step bookkeeping and its report."""
import os

import pytest
import torch

import mutualnet_det.benchmark.gpu_check as gpu_check
from mutualnet_det.config import load_config


def test_dry_run_prints_every_step_and_its_sweep_command_is_a_valid_config(capsys):
    assert gpu_check.main(["--dry-run", "--iters", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:]] == list(gpu_check.STEPS)
    assert "-m cuda tests" in lines[1] and "-m not cuda tests --ignore tests/test_offline_setup.py" in lines[2]
    assert "12 iterations" in lines[3] and "float16" in lines[3] and "bfloat16" in lines[3]
    command = gpu_check.sweep_command(12, "out")
    assert "MODEL.DEVICE" not in command  # the device follows the machine
    config = command[command.index("--config-file") + 1]
    assert os.path.isfile(os.path.join(gpu_check.REPO, config))
    overrides = command[command.index(config) + 1:]
    cfg = load_config(os.path.join(gpu_check.REPO, config), overrides)
    assert cfg.SOLVER.MAX_ITER == 12 and len(cfg.MUTUALNET.TEST.WIDTHS) * len(cfg.MUTUALNET.TEST.RESOLUTION_SCALES) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_check_refuses_and_says_what_to_do(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_a_failing_step_is_recorded_and_the_others_still_run(monkeypatch):
    ran = []

    def fail(*args):
        ran.append("suite")
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "run_pytest", lambda marker: ran.append(marker) or {"ok": True, "summary": "3 passed"})
    monkeypatch.setattr(gpu_check, "training_step", fail)
    monkeypatch.setattr(gpu_check, "sweep_step", lambda iters, out, device: ran.append("sweep") or {"ok": False, "seconds": 1.0})
    written = []  # the report is rewritten after every step
    steps = gpu_check.run_steps(["cuda_tests", "training", "sweep"], 3, "cuda", "out", log=lambda line: None,
                                after_each=lambda results: written.append(list(results)))
    assert ran == ["cuda", "suite", "sweep"]
    assert written == [["cuda_tests"], ["cuda_tests", "training"], ["cuda_tests", "training", "sweep"]]
    assert steps["cuda_tests"]["ok"] and steps["training"] == {"ok": False, "error": "RuntimeError: boom",
                                                               "seconds": pytest.approx(0, abs=1)}
    assert steps["sweep"] == {"ok": False, "seconds": 1.0}


def test_report_tables_by_hand():
    rows = {m: {"seconds_per_iter": s, "peak_memory_mb": mb} for m, s, mb in
            (("single", 0.1, 1000.0), ("usnet", 0.3, 1500.0), ("mutualnet", 0.24, 1200.0))}
    report = {"date": "2026-12-05", "device_name": "GPU", "torch": "2", "cuda": "13", "seconds": 300.0, "iters": 30,
              "steps": {"cuda_tests": {"ok": True, "summary": "7 passed", "seconds": 20.0},
                        "training": {"ok": True, "iters": 30, "seconds": 100.0,
                                     "seconds_per_iter_and_peak_mb": {"float32": rows},
                                     "ratios": {"float32": {"mutualnet/single": {"time": 2.4, "memory": 1.2},
                                                            "mutualnet/usnet": {"time": 0.8, "memory": 0.8}}}}}}
    text = gpu_check.gpu_check_markdown(report)
    assert "| cuda_tests | 7 passed | 20 |" in text
    assert "| float32 | 0.100 s, 1000 | 0.300 s, 1500 | 0.240 s, 1200 | 2.40, 1.20 | 0.80, 0.80 |" in text
