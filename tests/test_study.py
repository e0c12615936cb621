"""The study runner: the plan of study v2, resuming without redoing finished runs, and each
finished run committed (results, not checkpoints) as it completes."""
import json
import os
import subprocess

import mutualnet_det.study as study
from mutualnet_det.study import run_study, study_plan, sweep_path


def overrides(run):
    return dict(zip(run.overrides[::2], run.overrides[1::2]))


def test_plan_three_seeds_per_method_distillation_seed1_and_single_width_baselines():
    runs = study_plan()
    assert [run.name for run in runs] == [
        "mutualnet_seed1", "usnet_seed1", "mutualnet_distill_seed1", "usnet_distill_seed1",
        "mutualnet_seed2", "usnet_seed2", "mutualnet_seed3", "usnet_seed3", "single_w1_seed1", "single_w0.25_seed1"]
    assert [run.seed for run in runs if run.group == "MutualNet"] == [1, 2, 3]
    assert [run.seed for run in runs if run.group == "US-Net"] == [1, 2, 3]
    distilled = [run for run in runs if "distill" in run.name]
    assert all(overrides(run)["MUTUALNET.TRAIN.INPLACE_DISTILL"] == "True" and
               overrides(run)["MUTUALNET.TRAIN.DISTILL_MODE"] == "soft_labels" for run in distilled)
    assert all(overrides(run)["MUTUALNET.TRAIN.INPLACE_DISTILL"] == "False" for run in runs
               if run.group in ("MutualNet", "US-Net"))
    assert {overrides(run)["MUTUALNET.WIDTH_RANGE"] for run in runs if run.group.startswith("single")} == \
        {"(1.0, 1.0)", "(0.25, 0.25)"}


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_resumes_without_redoing_finished_runs_and_commits_each_as_it_finishes(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "test")
    (repo / ".gitignore").write_text("*.pth\n")
    (repo / "unrelated.txt").write_text("staged, not the study's\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    (repo / "unrelated.txt").write_text("changed and staged\n")
    git(repo, "add", "unrelated.txt")
    root = str(repo / "study")
    runs = study_plan()[:3]
    os.makedirs(os.path.dirname(sweep_path(root, runs[0])))
    open(sweep_path(root, runs[0]), "w").write("[]")  # finished before this invocation
    trained = []

    def fake_train(run, root_, threads):
        trained.append((run.name, threads))
        os.makedirs(os.path.dirname(sweep_path(root_, run)), exist_ok=True)
        open(sweep_path(root_, run), "w").write("[]")
        open(os.path.join(root_, "runs", run.name, "model_final.pth"), "w").write("weights")
        return 60.0 * len(trained)

    monkeypatch.setattr(study, "summarize", lambda root_, runs_: {})
    run_study(root, runs, jobs=1, commit=True, train=fake_train)
    assert trained == [("usnet_seed1", 0), ("mutualnet_distill_seed1", 0)]
    def commit(rev):
        return [line for line in git(repo, "show", "--format=%s", "--name-only", rev).splitlines() if line]

    assert commit("HEAD") == ["Study: mutualnet_distill_seed1 finished (2 min)",
                              "study/runs/mutualnet_distill_seed1/inference/shapes_val/width_sweep.json",
                              "study/timings.json"]
    assert commit("HEAD~1") == ["Study: usnet_seed1 finished (1 min)",
                                "study/runs/usnet_seed1/inference/shapes_val/width_sweep.json", "study/timings.json"]
    assert "unrelated.txt" in git(repo, "diff", "--cached", "--name-only")  # left staged, not committed
    timings = json.load(open(os.path.join(root, "timings.json")))
    assert timings["runs"] == {"usnet_seed1": 60.0, "mutualnet_distill_seed1": 120.0}
    assert timings["total_run_seconds"] == 180.0 and len(timings["invocations"]) == 1
    # again: nothing left to train, nothing committed
    head = git(repo, "rev-parse", "HEAD")
    run_study(root, runs, jobs=1, commit=True, train=fake_train)
    assert len(trained) == 2 and git(repo, "rev-parse", "HEAD") == head
