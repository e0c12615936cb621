"""The fine-tuning study's plan (start, lengths, seeds, recipe), its order (the start first and
alone, the fine-tunings from its final weights) and its answer (gaps to from scratch, the shortest
length within 1 box AP at every width), on hand-made sweeps."""
import json
import os

import pytest

import mutualnet_det.study.runner as study
from mutualnet_det.study import finetune
from mutualnet_det.study.finetune import (FINETUNE_CONFIG, START, finetune_plan, gaps_to_scratch, run_finetune_study,
                                          schedule, shortest_within, write_finetune_report)
from mutualnet_det.study.runner import STUDY_CONFIG, sweep_path
from .test_runner import overrides, row


def test_plan_starts_from_the_single_width_model_and_fine_tunes_10_20_40_percent():
    plan = finetune_plan(os.path.join(study.REPO, "benchmarks", "finetune"))
    assert plan[0] == START and START.config == "" and overrides(START)["MUTUALNET.WIDTH_RANGE"] == "(1.0, 1.0)"
    assert [run.name for run in plan[1:]] == ["mutualnet_ft20_seed1", "mutualnet_ft20_seed2", "mutualnet_ft40_seed1",
                                              "mutualnet_ft40_seed2", "usnet_ft20_seed1", "mutualnet_ft10_seed1",
                                              "mutualnet_ft10_seed2"]
    # 10 / 20 / 40% of 3,375 iterations, lr / 10 at the study's point (2,812 / 3,375) of each
    assert [schedule(f) for f in (0.1, 0.2, 0.4)] == [{"iterations": 338, "step": 282}, {"iterations": 675, "step": 562},
                                                      {"iterations": 1350, "step": 1125}]
    for run in plan[1:]:
        given = overrides(run)
        assert run.config == FINETUNE_CONFIG and os.path.isfile(run.config)
        assert given["MODEL.WEIGHTS"] == os.path.join("benchmarks", "finetune", "runs", "single_w1_seed1", "model_final.pth")
        fraction = int(run.name.split("_ft")[1].split("_")[0]) / 100
        assert (given["SOLVER.MAX_ITER"], given["SOLVER.STEPS"]) == (str(schedule(fraction)["iterations"]),
                                                                    f"({schedule(fraction)['step']},)")
        assert given["MUTUALNET.TRAIN.METHOD"] == run.name.split("_")[0]
        assert run.seed == int(run.name[-1])


def test_the_start_trains_first_and_alone_then_the_fine_tunings_from_its_weights(tmp_path, monkeypatch):
    root = str(tmp_path / "finetune")
    calls = []

    def fake_train_and_sweep(run, root_, threads, config_file):
        calls.append((run.name, threads, run.config or config_file))
        folder = os.path.join(root_, "runs", run.name)
        os.makedirs(os.path.dirname(sweep_path(root_, run)), exist_ok=True)
        json.dump([row(1.0, 1.0, 1.0, [50.0])], open(sweep_path(root_, run), "w"))
        if run == START:
            open(os.path.join(folder, "model_final.pth"), "w").write("weights")
        return 1.0

    monkeypatch.setattr(study, "train_and_sweep", fake_train_and_sweep)
    monkeypatch.setattr(study, "summarize", lambda root_, runs_: {})
    monkeypatch.setattr(finetune, "summarize_finetune", lambda root_, plan_: {})
    plan = finetune_plan(root)
    with pytest.raises(FileNotFoundError, match="train single_w1_seed1 first"):
        run_finetune_study(root, plan[1:2])
    assert calls == []
    run_finetune_study(root, plan, jobs=2)
    assert calls[0] == (START.name, 0, STUDY_CONFIG)  # alone: every thread
    assert sorted(calls[1:]) == sorted((run.name, 1, FINETUNE_CONFIG) for run in plan[1:])


def sweep(aps, scale=1.0):
    return [row(width, scale, width * 4, seeds) for width, seeds in aps.items()]


def test_gaps_to_scratch_and_the_shortest_length_within_one_box_ap(tmp_path):
    scratch = sweep({1.0: [77.0, 78.0, 77.5], 0.5: [70.0, 71.0, 72.0], 0.25: [60.0, 61.0, 62.0]}) + \
        sweep({1.0: [10.0], 0.5: [10.0], 0.25: [10.0]}, scale=0.5)  # other scales: not compared
    summary = {"single width 1": sweep({1.0: [74.0]}),
               "MutualNet fine-tuned 10%": sweep({1.0: [76.0, 76.2], 0.5: [69.0, 69.4], 0.25: [55.0, 55.0]}),
               "MutualNet fine-tuned 20%": sweep({1.0: [77.0, 77.0], 0.5: [70.0, 70.2], 0.25: [60.0, 60.2]}),
               "MutualNet fine-tuned 40%": sweep({1.0: [78.0, 78.0], 0.5: [72.0, 72.0], 0.25: [62.0, 62.0]}),
               "US-Net fine-tuned 20%": sweep({1.0: [70.0], 0.5: [60.0], 0.25: [50.0]})}
    # by hand: scratch means 77.5 / 71.0 / 61.0; 10%: 76.1 / 69.2 / 55.0 -> -1.4, -1.8, -6.0
    gaps = gaps_to_scratch(summary["MutualNet fine-tuned 10%"], scratch)
    assert list(gaps) == [1.0, 0.5, 0.25]
    assert [round(g, 6) for g in gaps.values()] == [-1.4, -1.8, -6.0]
    # 20%: 77.0 / 70.1 / 60.1 -> -0.5, -0.9, -0.9: all within 1, so 20% is the answer
    assert shortest_within(summary, scratch) == 0.2
    del summary["MutualNet fine-tuned 20%"]
    assert shortest_within(summary, scratch) == 0.4
    del summary["MutualNet fine-tuned 40%"]
    assert shortest_within(summary, scratch) is None

    timings = {"runs": {"single_w1_seed1": 1200.0, "mutualnet_ft10_seed1": 300.0, "mutualnet_ft10_seed2": 420.0}}
    study_timings = {"runs": {"mutualnet_seed1": 6000.0, "mutualnet_seed2": 6600.0, "mutualnet_seed3": 7200.0}}
    write_finetune_report(str(tmp_path), summary, {"MutualNet": scratch}, study_timings, timings,
                          finetune_plan(str(tmp_path)))
    report = (tmp_path / "finetune.md").read_text()
    assert "| MutualNet from scratch (3) | 3,375 | 77.5 / 77.5 | 71.0 / 71.0 | 61.0 / 61.0 |" in report
    assert "| MutualNet fine-tuned 10% (2) | +338 | 76.1 / 76.1 | 69.2 / 69.2 | 55.0 / 55.0 |" in report
    assert "| MutualNet fine-tuned 10% | -1.4 | -1.8 | -6.0 | -6.0 |" in report
    assert "**none** of the lengths run; the closest, 10%, is 6.0 box AP short at its worst width." in report
    assert "- MutualNet fine-tuned 10%: +2.1 (76.1 vs 74.0)" in report  # width 1.0 against its start
    assert "| MutualNet from scratch (study of record) | 3,375 | 110 min |" in report  # mean 6,600 s
    assert "| MutualNet fine-tuned 10% | +338 | 6 min |" in report  # mean 360 s
    assert (tmp_path / "finetune.png").stat().st_size > 10000
