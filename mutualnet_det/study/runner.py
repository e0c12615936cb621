"""The accuracy study (MutualNet vs US-Net, with and without inplace distillation, against
independently trained single-width models) on the embedded dataset, run as one resumable job.

Every run trains with tools/train_net.py in its own process (so a crash or interruption loses at
most the current run, which then resumes from its last checkpoint) and ends with its width sweep.
`summarize` gathers the sweeps into one JSON, a Markdown table and the trade-off plot.
"""
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from tqdm import tqdm

from ..benchmark.timing import cpu_description
from . import report as study_report
from ..evaluation.plots import plot_tradeoff

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The study of record (benchmarks/study/): Base-Study.yaml's regime at 3,375 iterations.
STUDY_CONFIG = os.path.join(REPO, "configs", "Study", "Converged-3375-Study.yaml")


@dataclass(frozen=True)
class StudyRun:
    name: str  # also the output folder
    group: str  # curve in the plot / row group in the table (seeds of a group are averaged)
    overrides: tuple = field(default_factory=tuple)
    seed: int = 1
    config: str = ""  # its own config file (e.g. the fine-tuning recipe); "" = the study's


def single_width_run(width: float) -> StudyRun:
    """An independently trained single-width model: WIDTH_RANGE collapsed to the width, evaluated there."""
    return StudyRun(f"single_w{width:g}_seed1", f"single width {width:g}",
                    ("MUTUALNET.TRAIN.METHOD", "single", "MUTUALNET.WIDTH_RANGE", f"({width}, {width})",
                     "MUTUALNET.TEST.WIDTHS", f"({width},)"), 1)


def study_plan(seeds=(1, 2, 3), slimmable_heads: bool = False) -> List[StudyRun]:
    """The runs, in pairs (two train at once) ordered so that an interrupted study has the most
    important ones: MutualNet / US-Net seed 1, both with inplace distillation (seed 1, the seed's
    soft-label mode: the Fig. 1 ablation), the other seeds, then the single-width baselines.

    slimmable_heads: also MutualNet with slimmable FPN outputs and heads (MUTUALNET.SLIMMABLE_HEADS),
    seeds 1 and 2, its own curve in the table and plot."""
    def method(name, group, method_name, distill, seed):
        overrides = ("MUTUALNET.TRAIN.METHOD", method_name, "MUTUALNET.TRAIN.INPLACE_DISTILL", str(distill))
        if distill:
            overrides += ("MUTUALNET.TRAIN.DISTILL_MODE", "soft_labels")
        return StudyRun(name, group, overrides, seed)

    def pair(seed):
        return [method(f"mutualnet_seed{seed}", "MutualNet", "mutualnet", False, seed),
                method(f"usnet_seed{seed}", "US-Net", "usnet", False, seed)]

    runs = pair(seeds[0])
    runs += [method("mutualnet_distill_seed1", "MutualNet + distill", "mutualnet", True, 1),
             method("usnet_distill_seed1", "US-Net + distill", "usnet", True, 1)]
    for seed in seeds[1:]:
        runs += pair(seed)
    if slimmable_heads:
        runs += [StudyRun(f"mutualnet_slimheads_seed{seed}", "MutualNet, slimmable heads",
                          ("MUTUALNET.TRAIN.METHOD", "mutualnet", "MUTUALNET.SLIMMABLE_HEADS", "True"), seed)
                 for seed in (1, 2)]
    return runs + [single_width_run(width) for width in (1.0, 0.25)]


def sweep_path(root: str, run: StudyRun) -> str:
    return os.path.join(root, "runs", run.name, "inference", "shapes_val", "width_sweep.json")


# Set when the study is interrupted (Ctrl-C, SIGTERM): each running training is then asked to stop
# the way Ctrl-C stops tools/train_net.py, which saves a checkpoint first.
_STOP = threading.Event()


def handle_stop_signals() -> None:
    """Ctrl-C and SIGTERM stop the study the same way (the trainings save a checkpoint first).

    Also when a script started the study in the background, where SIGINT comes ignored: that
    would leave the runner deaf to Ctrl-C / `kill -INT` and, inherited across exec, make its
    trainings ignore the SIGINT it sends them. A handled SIGINT is reset to the default on exec,
    so the trainings get Python's KeyboardInterrupt again. Main thread only (Python's rule)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt for any signal


class StudyInterrupted(Exception):
    pass


def train_and_sweep(run: StudyRun, root: str, threads: int = 0, config_file: str = STUDY_CONFIG) -> float:
    """Train one run (resuming if interrupted) and sweep it; returns its seconds over every
    invocation (kept in runs/<name>/seconds.json, updated every minute, so an interrupted run's
    time counts). Its output goes to runs/<name>/study.log; `threads` > 0 limits its CPU threads."""
    if _STOP.is_set():
        raise StudyInterrupted(run.name)
    folder = os.path.join(root, "runs", run.name)
    os.makedirs(folder, exist_ok=True)
    seconds_path = os.path.join(folder, "seconds.json")
    spent_before = json.load(open(seconds_path)) if os.path.isfile(seconds_path) else 0.0
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # relative to the repository (the child runs there) when inside it: the run's config.yaml, which
    # the demo reads to find model_final.pth, then holds no path of this machine's checkout
    inside_repo = os.path.commonpath([os.path.abspath(folder), REPO]) == REPO
    output_dir = os.path.relpath(folder, REPO) if inside_repo else os.path.abspath(folder)
    command = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", run.config or config_file,
               "--resume", "OUTPUT_DIR", output_dir, "SEED", str(run.seed),
               "MUTUALNET.TRAIN.COHORT_SEED", str(run.seed), *run.overrides]
    log_path = os.path.join(folder, "study.log")
    start = last_saved = time.perf_counter()

    def spent() -> float:
        seconds = spent_before + time.perf_counter() - start
        with open(seconds_path, "w") as f:
            json.dump(seconds, f)
        return seconds

    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        # its own session: a Ctrl-C at the terminal reaches the study, which passes on one SIGINT
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        try:
            while process.poll() is None and not _STOP.wait(timeout=5):
                if time.perf_counter() - last_saved > 60:
                    spent()
                    last_saved = time.perf_counter()
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # train_net saves a checkpoint, then exits
                process.wait()
            seconds = spent()
    if _STOP.is_set():
        raise StudyInterrupted(run.name)
    if process.returncode != 0 or not os.path.isfile(sweep_path(root, run)):
        raise RuntimeError(f"study run {run.name} failed (exit {process.returncode}); see {log_path}")
    return seconds


def machine_description() -> str:
    """The CPU and the instruction set torch uses: wall times of runs trained on different machines
    (e.g. AVX2 vs AVX-512) are not comparable, so every invocation records its machine."""
    return f"{cpu_description()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def load_timings(path: str) -> Dict:
    """timings.json: seconds per finished run, their sum, and the wall time of every invocation."""
    timings = json.load(open(path)) if os.path.isfile(path) else {}
    if timings and "runs" not in timings:  # the first study's format: {run name: seconds}
        timings = {"runs": timings}
    return {"runs": {}, "invocations": [], **timings}


def claim_config(timings: Dict, root: str, config_file: str) -> None:
    """A study folder holds runs of one config: record `config_file` in its timings (first use)
    or raise if the folder was started with another one."""
    config_name = os.path.relpath(os.path.abspath(config_file), REPO)
    if timings.setdefault("config", config_name) != config_name:
        raise ValueError(f"{root} is a study of {timings['config']}, not of {config_name}: use "
                         f"{timings['config']} with this folder, or give {config_name} its own --output folder")


SUMMARY_FILES = ("results.json", "table.md", "report.md", "tradeoff.png", "distillation.png", "object_sizes.png")


def commit_run(root: str, run: StudyRun, message: str) -> None:
    """Commit a finished run's results (its folder, minus what .gitignore keeps out, e.g.
    checkpoints), timings.json and the summary so far, and nothing else that may be staged."""
    root = os.path.abspath(root)
    paths = [os.path.join(root, "runs", run.name), os.path.join(root, "timings.json")]
    paths += [p for p in (os.path.join(root, name) for name in SUMMARY_FILES) if os.path.isfile(p)]
    commit_paths(root, paths, message)


def commit_paths(root: str, paths: List[str], message: str) -> None:
    """git add + commit exactly `paths`; retried while another git command holds the index lock."""
    for attempt in range(10):
        result = subprocess.run(["git", "add", "--", *paths], cwd=root, capture_output=True, text=True)
        if result.returncode == 0:
            result = subprocess.run(["git", "commit", "--quiet", "-m", message, "--", *paths], cwd=root,
                                    capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "index.lock" not in result.stderr:  # not a lock to wait out (no repository, nothing to commit)
            break
        time.sleep(6)
    # the results are on disk; losing the study to a failed commit would cost hours
    reason = (result.stderr or result.stdout).strip()  # git commit says "nothing to commit" on stdout
    tqdm.write(f"warning: could not commit {', '.join(paths)} ({reason}); commit them by hand: "
               f"git add {' '.join(paths)} && git commit -m '{message}'")


def run_study(root: str, runs: List[StudyRun], jobs: int = 1, commit: bool = False, train=None,
              plan: List[StudyRun] = None, config_file: str = STUDY_CONFIG) -> Dict:
    """Train and sweep every run not done yet (`jobs` at a time, one thread each when > 1),
    then summarize. Interrupted (Ctrl-C, SIGTERM): the running trainings save a checkpoint; run
    again, finished runs are skipped, others resume. A failed run is reported and the others go on.
    commit: commit each run's results (git) as soon as it finishes, and timings.json with this
    invocation's wall time when it ends (if it finished a run).
    train: (run, root, threads) -> seconds; `train_and_sweep` unless replaced (tests).
    plan: the runs the summary covers when finished (default `runs`): all of the study's, also
    when only some of them are trained now.
    config_file: every run's config; a study folder keeps the one it was started with (timings.json)
    and refuses another, so that no study mixes runs of two configs."""
    train = train or functools.partial(train_and_sweep, config_file=config_file)
    plan = plan or runs
    _STOP.clear()
    os.makedirs(root, exist_ok=True)
    timings_path = os.path.join(root, "timings.json")
    timings = load_timings(timings_path)
    claim_config(timings, root, config_file)
    started = time.perf_counter()
    invocation = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_description(), "runs": []}
    timings["invocations"].append(invocation)

    def save_timings():
        invocation["wall_seconds"] = time.perf_counter() - started
        timings["total_run_seconds"] = sum(timings["runs"].values())
        timings["total_wall_seconds"] = sum(i.get("wall_seconds", 0) for i in timings["invocations"])
        with open(timings_path, "w") as f:
            json.dump(timings, f, indent=1)

    def finished(run: StudyRun, seconds: float):
        timings["runs"][run.name] = seconds
        invocation["runs"].append(run.name)
        save_timings()
        minutes = seconds / 60
        tqdm.write(f"{run.name}: finished in {minutes:.1f} min")
        if commit:
            _summarize_quietly(root, plan)
            commit_run(root, run, f"Study: {run.name} finished ({minutes:.0f} min)")

    todo, failed = [], []
    for run in runs:
        if not os.path.isfile(sweep_path(root, run)):
            todo.append(run)
        elif run.name not in timings["runs"]:  # finished when its study was stopped: record it now
            seconds_path = os.path.join(root, "runs", run.name, "seconds.json")
            finished(run, json.load(open(seconds_path)) if os.path.isfile(seconds_path) else 0.0)
        else:
            tqdm.write(f"{run.name}: done already")
    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="study runs") as progress, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(train, run, root, 1 if jobs > 1 else 0): run for run in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=60, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: todo.index(futures[f])):  # plan order when several end together
                    run = futures[future]
                    try:
                        finished(run, future.result())
                    except Exception as error:  # the others go on; rerunning the study retries it
                        failed.append(run.name)
                        tqdm.write(f"{run.name}: {error}")
                    progress.update(1)
                save_timings()
        except KeyboardInterrupt:
            for future in pending:  # the queued ones first, so that no worker set free takes one
                future.cancel()
            _STOP.set()
            tqdm.write("study interrupted: the running trainings save a checkpoint and stop; "
                       "run the same command again to resume")
            raise
        finally:
            save_timings()
            if commit and invocation["runs"]:  # the wall time is known only now: the last run's commit lacks it
                hours = invocation["wall_seconds"] / 3600
                commit_paths(os.path.abspath(root), [os.path.abspath(timings_path)],
                             f"Study: timings.json with this invocation's wall time ({hours:.2f} h)")
    if failed:
        raise RuntimeError(f"study runs failed: {failed} (the others finished; run the study again to retry)")
    return summarize(root, plan)


def _summarize_quietly(root: str, runs: List[StudyRun]) -> None:
    """The summary so far, committed with each run; a plotting error must not stop the study."""
    try:
        summarize(root, runs)
    except Exception as error:
        tqdm.write(f"warning: could not summarize the finished runs ({error}); tools/study.py --summarize-only")


METRICS = (("bbox", "AP"), ("bbox", "APs"), ("bbox", "APm"), ("bbox", "APl"),
           ("segm", "AP"), ("segm", "APs"), ("segm", "APm"), ("segm", "APl"))
COMPARED = ("MutualNet", "US-Net")  # the paired comparison: seeds paired by their number
DISTILLATION_PAIRS = (("MutualNet", "MutualNet + distill"), ("US-Net", "US-Net + distill"))


def summarize(root: str, runs: List[StudyRun]) -> Dict:
    """results.json (every record, group means and seed spread), table.md, tradeoff.png, and
    report.md + distillation.png + object_sizes.png (study_report) for the groups finished so far."""
    by_group: Dict[str, List[List[Dict]]] = {}  # nothing finished yet: nothing written, {} returned
    seeds_of: Dict[str, List[int]] = {}
    for run in runs:
        if not os.path.isfile(sweep_path(root, run)):  # not finished yet: the report covers what is
            continue
        with open(sweep_path(root, run)) as f:
            by_group.setdefault(run.group, []).append(json.load(f))
        seeds_of.setdefault(run.group, []).append(run.seed)
    summary = {}
    if not by_group:
        return summary
    for group, sweeps in by_group.items():
        rows = []
        for records in zip(*sweeps):  # same configuration order in every sweep of a group
            row = {k: records[0][k] for k in ("width", "resolution_scale", "gflops", "gflops_backbone", "params")}
            row["seeds"], row["seed_ids"] = len(records), seeds_of[group]
            for task, metric in METRICS:
                values = [r[task][metric] for r in records]
                row.setdefault(task, {})[metric] = statistics.mean(values)
                row[task][f"{metric}_seeds"] = values
            rows.append(row)
        summary[group] = rows
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(format_markdown(summary))
    plot_tradeoff(summary, os.path.join(root, "tradeoff.png"),
                  title="Study on the embedded dataset (mean over seeds where several)")
    write_report(root, summary)
    return summary


def write_report(root: str, summary: Dict) -> None:
    """report.md (query tables, paired comparison, small / large objects) and its two plots."""
    methods = [group for group in COMPARED if group in summary]
    sections = ["# Study report (generated by tools/study.py; the README interprets it)", "",
                "## Query tables: each method's Pareto front by GFLOPs (mean over seeds)", "",
                study_report.format_fronts(summary, methods)]
    if len(methods) == 2:
        seeds = {group: study_report.seed_ids(summary[group][0]) for group in methods}
        common = sorted(set(seeds[methods[0]]) & set(seeds[methods[1]]))
        sections += ["## Paired comparison, seed by seed", "",
                     f"Seeds finished: {', '.join(f'{g} {s}' for g, s in seeds.items())}; paired: {common} "
                     "(same seed: same initialisation, data order and width draws).", ""]
        for metric in (("bbox", "AP"), ("segm", "AP")):
            rows = study_report.paired_differences(summary, *methods, metric)
            sections.append(study_report.format_paired(rows, *methods, metric))
        sections.append("A difference exceeds the seed spread when its mean is larger than either method's range "
                        "over the paired seeds (max - min) and every seed's difference has the same sign.\n")
    sections += ["## Small and large objects at scale 1.0 (mean over seeds)", "",
                 study_report.format_sizes(summary, [g for g in summary if not g.startswith("single")])]
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write("\n".join(sections))
    pairs = [pair for pair in DISTILLATION_PAIRS if pair[0] in summary]
    if pairs:
        study_report.plot_distillation(summary, pairs, os.path.join(root, "distillation.png"))
    if methods:
        study_report.plot_sizes(summary, methods, os.path.join(root, "object_sizes.png"))


def format_markdown(summary: Dict) -> str:
    names = {"bbox": "box", "segm": "mask"}
    lines = ["| method | width | scale | GFLOPs | " + " | ".join(f"{names[t]} {m}" for t, m in METRICS) + " |",
             "|---|---|---|---|" + "---|" * len(METRICS)]
    for group, rows in summary.items():
        for row in rows:
            cells = []
            for task, metric in METRICS:
                values = row[task][f"{metric}_seeds"]
                spread = f" ±{(max(values) - min(values)) / 2:.1f}" if len(values) > 1 else ""
                cells.append(f"{row[task][metric]:.1f}{spread}")
            lines.append(f"| {group} | {row['width']:g} | {row['resolution_scale']:.3g} | {row['gflops']:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(± is half the range over seeds.)\n"
