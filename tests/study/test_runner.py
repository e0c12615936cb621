"""The study runner: the plan of study v2, resuming without redoing finished runs, and each
finished run committed (results, not checkpoints) as it completes."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import mutualnet_det.study.runner as study
from mutualnet_det.study.runner import run_study, study_plan, sweep_path
from tools_loader import load_tool


def overrides(run):
    return dict(zip(run.overrides[::2], run.overrides[1::2]))


def test_default_config_is_the_study_of_record_in_its_folder():
    """The runner writes where the study of record lives: REPO is the repository (not the
    package), the default config is the one benchmarks/study/timings.json records."""
    from helpers import REPO

    assert study.REPO == REPO
    record = json.load(open(os.path.join(REPO, "benchmarks", "study", "timings.json")))
    assert os.path.relpath(study.STUDY_CONFIG, REPO) == record["config"]
    assert os.path.isfile(study.STUDY_CONFIG)


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
    open(sweep_path(root, runs[0]), "w").write("[]")  # finished when an earlier invocation was stopped:
    json.dump(30.0, open(os.path.join(root, "runs", runs[0].name, "seconds.json"), "w"))  # not yet recorded
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

    assert commit("HEAD") == ["Study: timings.json with this invocation's wall time (0.00 h)", "study/timings.json"]
    assert commit("HEAD~1") == ["Study: mutualnet_distill_seed1 finished (2 min)",
                                "study/runs/mutualnet_distill_seed1/inference/shapes_val/width_sweep.json",
                                "study/timings.json"]
    assert commit("HEAD~2") == ["Study: usnet_seed1 finished (1 min)",
                                "study/runs/usnet_seed1/inference/shapes_val/width_sweep.json", "study/timings.json"]
    assert commit("HEAD~3")[:3] == ["Study: mutualnet_seed1 finished (0 min)",  # recorded and committed now
                                    "study/runs/mutualnet_seed1/inference/shapes_val/width_sweep.json",
                                    "study/runs/mutualnet_seed1/seconds.json"]
    assert "unrelated.txt" in git(repo, "diff", "--cached", "--name-only")  # left staged, not committed
    timings = json.load(open(os.path.join(root, "timings.json")))
    assert timings["runs"] == {"mutualnet_seed1": 30.0, "usnet_seed1": 60.0, "mutualnet_distill_seed1": 120.0}
    assert timings["total_run_seconds"] == 210.0 and len(timings["invocations"]) == 1
    assert git(repo, "status", "--porcelain", "study") == ""  # the wall time committed too: nothing left over
    assert timings == json.loads(git(repo, "show", "HEAD:study/timings.json"))
    # again: nothing left to train, nothing committed
    head = git(repo, "rev-parse", "HEAD")
    run_study(root, runs, jobs=1, commit=True, train=fake_train)
    assert len(trained) == 2 and git(repo, "rev-parse", "HEAD") == head


def test_training_some_runs_summarizes_every_finished_run_of_the_plan(tmp_path, monkeypatch):
    """`tools/study.py --runs usnet_distill_seed1` once rewrote table.md, report.md and the plots
    with that one run: the summary must cover the plan's other finished runs too."""
    root = str(tmp_path)
    plan = study_plan()
    finished_before = plan[0]
    os.makedirs(os.path.dirname(sweep_path(root, finished_before)))
    open(sweep_path(root, finished_before), "w").write("[]")
    summarized = []
    monkeypatch.setattr(study, "summarize", lambda root_, runs_: summarized.append(
        [r.name for r in runs_ if os.path.isfile(sweep_path(root_, r))]) or {})

    def fake_train(run, root_, threads):
        os.makedirs(os.path.dirname(sweep_path(root_, run)), exist_ok=True)
        open(sweep_path(root_, run), "w").write("[]")
        return 1.0

    committed = []
    monkeypatch.setattr(study, "commit_run", lambda root_, run, message: committed.append(list(summarized[-1])))
    monkeypatch.setattr(study, "commit_paths", lambda root_, paths, message: None)  # the wall time's commit
    run_study(root, [plan[3]], train=fake_train, commit=True, plan=plan)
    assert committed == [[finished_before.name, plan[3].name]]  # the summary committed with the run
    assert summarized[-1] == [finished_before.name, plan[3].name]


def row(width, scale, gflops, ap_seeds, mask_seeds=None, aps=(1.0,), apl=(2.0,)):
    """A results.json row with per-seed values (means computed here, as summarize does)."""
    def metrics(ap, small, large):
        out = {}
        for name, values in (("AP", ap), ("APs", small), ("APm", ap), ("APl", large)):
            out[name], out[f"{name}_seeds"] = sum(values) / len(values), list(values)
        return out
    seeds = len(ap_seeds)
    return {"width": width, "resolution_scale": scale, "gflops": gflops, "seeds": seeds,
            "bbox": metrics(ap_seeds, aps * seeds if len(aps) == 1 else aps, apl * seeds if len(apl) == 1 else apl),
            "segm": metrics(mask_seeds or ap_seeds, aps * seeds if len(aps) == 1 else aps,
                            apl * seeds if len(apl) == 1 else apl)}


def test_paired_comparison_by_seed_and_the_spread_rule():
    from mutualnet_det.study.report import format_paired, paired_differences

    summary = {"A": [row(1.0, 1.0, 5.0, [30.0, 32.0, 31.0]), row(0.25, 1.0, 1.0, [10.0, 14.0, 12.0])],
               "B": [row(1.0, 1.0, 5.1, [25.0, 26.0, 25.5]), row(0.25, 1.0, 1.1, [11.0, 12.0, 13.5])]}
    at_full, at_quarter = paired_differences(summary, "A", "B")
    # width 1.0: differences 5, 6, 5.5 -> mean 5.5 > spread max(2, 1) = 2, same sign: exceeds
    assert at_full["differences"] == [5.0, 6.0, 5.5] and at_full["mean"] == 5.5 and at_full["seed_spread"] == 2.0
    assert at_full["exceeds_spread"]
    # width 0.25: -1, +2, -1.5 -> mixed signs, mean -0.1667, spread 4: does not
    assert at_quarter["differences"] == [-1.0, 2.0, -1.5] and not at_quarter["exceeds_spread"]
    text = format_paired([at_full, at_quarter], "A", "B")
    assert "| 1 | 1 | +5.0, +6.0, +5.5 | +5.5 | 2.0 | yes |" in text
    assert "| 0.25 | 1 | -1.0, +2.0, -1.5 | -0.2 | 4.0 | no |" in text
    # B has seeds 1 and 3 only (seed 2 failed): paired by seed number, not by position
    summary["B"] = [dict(row(1.0, 1.0, 5.1, [25.0, 26.0]), seed_ids=[1, 3])]
    (only,) = paired_differences(summary, "A", "B")
    assert only["seeds"] == [1, 3] and only["differences"] == [5.0, 5.0]  # 30 - 25, 31 - 26
    assert only["seed_spread"] == 1.0 and only["exceeds_spread"]  # spreads over seeds 1, 3: A 1, B 1


def test_summarize_writes_the_report_and_its_plots(tmp_path):
    from mutualnet_det.study.runner import StudyRun, summarize

    runs = [StudyRun(f"{name}_seed{seed}", group, (), seed) for name, group in
            (("mutualnet", "MutualNet"), ("usnet", "US-Net")) for seed in (1, 2)]
    runs.append(StudyRun("mutualnet_distill_seed1", "MutualNet + distill", (), 1))
    aps = {"mutualnet_seed1": 30.0, "mutualnet_seed2": 34.0, "usnet_seed1": 20.0, "usnet_seed2": 21.0,
           "mutualnet_distill_seed1": 29.0}
    for run in runs:
        records = [row(w, 1.0, 4 * w, [aps[run.name] * w]) for w in (1.0, 0.5)]
        for r in records:
            r["gflops_backbone"], r["params"] = r["gflops"] / 2, 1000
        os.makedirs(os.path.dirname(sweep_path(str(tmp_path), run)))
        json.dump(records, open(sweep_path(str(tmp_path), run), "w"))
    unfinished = StudyRun("usnet_seed3", "US-Net", (), 3)  # no sweep yet: left out, not an error
    summary = summarize(str(tmp_path), runs + [unfinished])
    assert summary["MutualNet"][0]["bbox"]["AP_seeds"] == [30.0, 34.0]
    assert summary["US-Net"][0]["bbox"]["AP_seeds"] == [20.0, 21.0]
    report = (tmp_path / "report.md").read_text()
    # width 1.0: 30-20, 34-21 -> +10, +13, mean 11.5 > spread max(4, 1): exceeds
    assert "| 1 | 1 | +10.0, +13.0 | +11.5 | 4.0 | yes |" in report
    assert "| MutualNet | <= 2.00 | 0.5 | 1 | 16.0 | 16.0 |" in report  # front: width 0.5 then 1.0
    assert (tmp_path / "distillation.png").stat().st_size > 10000 and (tmp_path / "object_sizes.png").is_file()
    table = (tmp_path / "table.md").read_text()
    assert "box APm" in table
    # ± is half the range over seeds, by hand: AP and APm 30, 34 -> 32.0 ±2.0 (width 1.0), 15, 17 ->
    # 16.0 ±1.0 (width 0.5); APs, APl equal over seeds -> ±0.0; US-Net 20, 21 -> 20.5 ±0.5; one seed: no ±
    assert "| MutualNet | 1 | 1 | 4.00 | " + " | ".join(["32.0 ±2.0", "1.0 ±0.0", "32.0 ±2.0", "2.0 ±0.0"] * 2) + " |" in table
    assert "| MutualNet | 0.5 | 1 | 2.00 | 16.0 ±1.0 | 1.0 ±0.0 | 16.0 ±1.0 |" in table
    assert "| US-Net | 1 | 1 | 4.00 | 20.5 ±0.5 |" in table
    assert "| MutualNet + distill | 1 | 1 | 4.00 | 29.0 | 1.0 | 29.0 | 2.0 |" in table


def test_a_study_folder_trains_every_run_with_its_config_and_refuses_another(tmp_path, monkeypatch):
    """--config-file reaches every run's training; a folder started with one config must not get
    runs of another (a converged-schedule study beside the 1,800-iteration one)."""
    root = str(tmp_path / "study")
    configs = []

    def fake_train_and_sweep(run, root_, threads, config_file):
        configs.append(config_file)
        os.makedirs(os.path.dirname(sweep_path(root_, run)), exist_ok=True)
        open(sweep_path(root_, run), "w").write("[]")
        return 1.0

    monkeypatch.setattr(study, "train_and_sweep", fake_train_and_sweep)
    monkeypatch.setattr(study, "summarize", lambda root_, runs_: {})
    first, other = (os.path.join(study.REPO, "configs", "Study", name) for name in ("A.yaml", "B.yaml"))
    run_study(root, study_plan()[:1], config_file=first)
    assert configs == [first]
    assert json.load(open(os.path.join(root, "timings.json")))["config"] == os.path.join("configs", "Study", "A.yaml")
    with pytest.raises(ValueError, match=r"study of configs/Study/A.yaml, not of configs/Study/B.yaml"):
        run_study(root, study_plan()[1:2], config_file=other)
    assert configs == [first]  # nothing trained with the other config
    run_study(root, study_plan()[1:2], config_file=first)  # the same config resumes the folder
    assert configs == [first, first]


def test_amp_parity_refuses_a_study_folder_of_another_config(tmp_path, monkeypatch, capsys):
    """amp_parity.py trains on Base-Study.yaml and reuses a folder's float32 runs: a converged-
    schedule study folder must be refused before anything is trained into it."""
    root = tmp_path / "study_converged"
    root.mkdir()
    (root / "timings.json").write_text(json.dumps({"runs": {}, "config": "configs/Study/Converged-Study.yaml"}))
    amp_parity = load_tool("amp_parity")
    trained = []
    monkeypatch.setattr(amp_parity, "train_and_sweep", lambda run, root_: trained.append(run.name))
    monkeypatch.setattr(sys, "argv", ["amp_parity.py", "--output", str(root)])
    with pytest.raises(SystemExit) as exit_info:
        amp_parity.main()
    assert exit_info.value.code == 2 and trained == []
    assert "study of configs/Study/Converged-Study.yaml, not of configs/Study/Base-Study.yaml" in capsys.readouterr().err


def test_a_failed_run_does_not_stop_the_others_and_is_reported(tmp_path, monkeypatch):
    runs = study_plan()[:3]

    def fake_train(run, root_, threads):
        if run.name == "usnet_seed1":
            raise RuntimeError("study run usnet_seed1 failed (exit 1)")
        os.makedirs(os.path.dirname(sweep_path(root_, run)), exist_ok=True)
        open(sweep_path(root_, run), "w").write("[]")
        return 10.0

    monkeypatch.setattr(study, "summarize", lambda root_, runs_: {})
    with pytest.raises(RuntimeError, match=r"failed: \['usnet_seed1'\]"):
        run_study(str(tmp_path), runs, jobs=1, train=fake_train)
    timings = json.load(open(tmp_path / "timings.json"))
    assert timings["runs"] == {"mutualnet_seed1": 10.0, "mutualnet_distill_seed1": 10.0}


def test_an_interrupted_study_stops_its_trainings_starts_no_more_and_keeps_its_wall_time(tmp_path, monkeypatch):
    runs = study_plan()[:3]
    stopped, started = [], []

    def fake_train(run, root_, threads):
        started.append(run.name)
        stopped.append(study._STOP.wait(timeout=20))  # each running training is asked to stop
        raise study.StudyInterrupted(run.name)

    def ctrl_c_once_both_train(futures, timeout, return_when):
        while len(started) < 2:
            time.sleep(0.05)
        time.sleep(0.5)
        raise KeyboardInterrupt  # arrives in the study's main thread, as Ctrl-C or SIGTERM would

    monkeypatch.setattr(study, "wait", ctrl_c_once_both_train)
    monkeypatch.setattr(study, "summarize", lambda root_, runs_: {})
    with pytest.raises(KeyboardInterrupt):
        run_study(str(tmp_path), runs, jobs=2, train=fake_train)
    assert sorted(started) == ["mutualnet_seed1", "usnet_seed1"] and stopped == [True, True]  # no third
    (invocation,) = json.load(open(tmp_path / "timings.json"))["invocations"]
    assert invocation["runs"] == [] and invocation["wall_seconds"] >= 0.5
    assert torch.backends.cpu.get_cpu_capability() in invocation["machine"]


def _repo_with_train_net(tmp_path, monkeypatch, script: str):
    """A repository whose tools/train_net.py is `script` (a stand-in child process) for the runner."""
    fake_repo = tmp_path / "repo"
    (fake_repo / "tools").mkdir(parents=True)
    (fake_repo / "tools" / "train_net.py").write_text(script)
    monkeypatch.setattr(study, "REPO", str(fake_repo))
    return fake_repo


# a stand-in for tools/train_net.py: says it started, then waits; on Ctrl-C "saves" and exits
TRAINING_THAT_SAVES_ON_INTERRUPT = (
    "import os, sys, time\n"
    "out = sys.argv[sys.argv.index('OUTPUT_DIR') + 1]\n"
    "open(out + '/started', 'w').write(str(os.getpid()))\n"
    "try:\n    time.sleep(60)\n"
    "except KeyboardInterrupt:\n    open(out + '/checkpoint_on_interrupt', 'w').close()\n    sys.exit(1)\n")


def test_train_and_sweep_passes_the_interrupt_on_to_its_training_and_keeps_the_time(tmp_path, monkeypatch, request):
    """A real child process (a stand-in for tools/train_net.py) gets one SIGINT and exits as
    train_net does after saving its checkpoint; the time spent is kept in seconds.json."""
    # as tools/study.py's handle_stop_signals: a test run started in the background (`... &`) has
    # SIGINT ignored, and the child would inherit that
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    fake_repo = _repo_with_train_net(tmp_path, monkeypatch, TRAINING_THAT_SAVES_ON_INTERRUPT)
    root = tmp_path / "study"
    run = study_plan()[0]
    folder = root / "runs" / run.name
    study._STOP.clear()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("error", pytest.raises(
        study.StudyInterrupted, study.train_and_sweep, run, str(root), 1)))
    worker.start()
    deadline = time.time() + 30
    while not (folder / "started").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    study._STOP.set()
    worker.join(timeout=30)
    study._STOP.clear()
    assert not worker.is_alive() and (folder / "checkpoint_on_interrupt").exists()
    assert json.load(open(folder / "seconds.json")) >= 1.0


def test_a_study_started_in_the_background_still_stops_its_trainings_on_sigint(tmp_path, monkeypatch):
    """A script's `nohup python tools/study.py &` starts with SIGINT ignored, and so would the
    trainings it starts: `kill -INT` then did nothing. With handle_stop_signals the runner
    stops on it and its training gets the SIGINT it passes on (here: a real child process)."""
    fake_repo = _repo_with_train_net(tmp_path, monkeypatch, TRAINING_THAT_SAVES_ON_INTERRUPT)
    root = tmp_path / "study"
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import sys\n"
        "import mutualnet_det.study.runner as study\n"
        f"study.REPO = {str(fake_repo)!r}\n"
        "study.handle_stop_signals()\n"
        f"study.train_and_sweep(study.study_plan()[0], {str(root)!r}, 1)\n")
    # bash's `trap '' INT` ignores SIGINT, and the ignoring survives exec, as for a background job
    process = subprocess.Popen(["bash", "-c", f"trap '' INT; exec {sys.executable} {runner}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = root / "runs" / study_plan()[0].name
    try:
        deadline = time.time() + 60
        while not (folder / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass  # still running: the runner did not hear the SIGINT (asserted below)
    finally:
        process.kill()
        if (folder / "started").exists():  # the stand-in training runs in a session of its own
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((folder / "started").read_text()), signal.SIGKILL)
    assert (folder / "checkpoint_on_interrupt").exists(), process.stdout.read()[-2000:]


def test_a_run_inside_the_repository_gets_a_relative_output_dir(tmp_path, monkeypatch):
    """The run's config.yaml (which the demo reads to find model_final.pth) must not hold this
    checkout's absolute path: the child runs in the repository with OUTPUT_DIR relative to it."""
    fake_repo = _repo_with_train_net(tmp_path, monkeypatch,
        "import json, os, sys\n"
        "out = sys.argv[sys.argv.index('OUTPUT_DIR') + 1]\n"
        "os.makedirs(os.path.join(out, 'inference', 'shapes_val'))\n"
        "open(os.path.join(out, 'inference', 'shapes_val', 'width_sweep.json'), 'w').write('[]')\n"
        "json.dump({'cwd': os.getcwd(), 'out': out}, open(os.path.join(out, 'seen.json'), 'w'))\n")
    root = fake_repo / "benchmarks" / "study"
    run = study_plan()[0]
    study._STOP.clear()
    study.train_and_sweep(run, str(root), 1)  # raises if the sweep is not where the runner looks
    seen = json.load(open(root / "runs" / run.name / "seen.json"))
    assert seen == {"cwd": str(fake_repo), "out": os.path.join("benchmarks", "study", "runs", run.name)}


def test_amp_parity_rule_at_scale_one_and_every_sweep_point():
    """Hand-computed: float32 seeds 60 / 62 / 65 box AP at (1.0, 1.0), AMP seed 1 at 61 -> +1, inside
    the spread (5): parity. Two AMP seeds against three float32 ones at both points: ranges
    overlapping / below / above, differences of the means."""
    amp_parity = load_tool("amp_parity")

    def sweep(box, mask):
        return [{"width": 1.0, "resolution_scale": scale, "bbox": {"AP": b}, "segm": {"AP": m}}
                for scale, b, m in zip((1.0, 0.5), box, mask)]

    float32 = [sweep((60.0, 54.0), (58.0, 50.0)), sweep((62.0, 55.0), (57.0, 51.0)), sweep((65.0, 56.0), (59.0, 52.0))]
    amp = [sweep((61.0, 50.0), (60.0, 51.5)), sweep((63.0, 53.0), (61.0, 49.0))]
    (rule,) = amp_parity.compare(float32, amp[0], widths=(1.0,))
    assert rule["difference_to_same_seed"] == pytest.approx(1.0) and rule["tolerance"] == pytest.approx(5.0)
    assert rule["parity"]
    assert not amp_parity.compare(float32[:1], sweep((58.0, 0), (0, 0)), widths=(1.0,))[0]["parity"]  # 2 > 1.5
    points = amp_parity.every_point(float32, amp)
    assert [p["bbox"]["amp_range_against_float32"] for p in points] == ["overlapping", "below"]
    assert [p["segm"]["amp_range_against_float32"] for p in points] == ["above", "overlapping"]
    # box means: (61 + 63) / 2 - (60 + 62 + 65) / 3 = 62 - 62.333; (50 + 53) / 2 - 55 = -3.5
    assert [p["bbox"]["difference_of_means"] for p in points] == pytest.approx([-1 / 3, -3.5])
    assert [p["segm"]["difference_of_means"] for p in points] == pytest.approx([60.5 - 58.0, 50.25 - 51.0])
    assert [p["bbox"]["difference_seed_1"] for p in points] == [1.0, -4.0]
    # a tie with the lowest float32 seed is not "below": the ranges touch
    (tie, _) = amp_parity.every_point(float32, [sweep((60.0, 0), (0, 0))])
    assert tie["bbox"]["amp_range_against_float32"] == "overlapping"
    assert amp_parity.point_summary(points, "bbox") == (
        "box AP over 2 points, AMP seeds against float32 seeds: below 1, overlapping 1, above 0; "
        "AMP - float32 (means): mean -1.9, -3.5 to -0.3")
