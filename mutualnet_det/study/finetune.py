"""Making a trained detector adaptive, measured on the embedded set: MutualNet (and US-Net)
fine-tuning that starts from a trained width-1.0 model, against training from scratch.

The plan, in the study of record's setting (its config, schedule, sweep and report tools):
- `single_w1_seed1`: the study's single-width width-1.0 model, trained again here for its weights
  (the study of record keeps no checkpoints); it is the starting point and the static reference;
- MutualNet fine-tuned from it for 10%, 20% and 40% of the study's 3,375 iterations, seeds 1 and 2
  (the seed draws the data order and the sandwich's widths and scales; the start is the same), and
  US-Net at 20%, seed 1: the fine-tuning recipe is configs/Study/Finetune-Study.yaml;
- the answer (`write_finetune_report`): each fine-tuned front against the study of record's
  from-scratch MutualNet front (3 seeds) and the single-width model, in finetune.md and
  finetune.png, and the shortest fine-tuning whose front is within 1 box AP of from scratch at
  every width at scale 1.0.
"""
import json
import os
import statistics
from typing import Dict, List, Optional

from ..evaluation.plots import plot_tradeoff
from .runner import REPO, STUDY_CONFIG, StudyRun, load_timings, run_study, single_width_run, summarize

FINETUNE_CONFIG = os.path.join(REPO, "configs", "Study", "Finetune-Study.yaml")
STUDY_RESULTS = os.path.join(REPO, "benchmarks", "study", "results.json")
STUDY_TIMINGS = os.path.join(REPO, "benchmarks", "study", "timings.json")
# The study of record's schedule (Converged-3375-Study.yaml): lr / 10 at 2,812 of 3,375 iterations.
STUDY_ITERATIONS, STUDY_STEP = 3375, 2812
FRACTIONS = (0.1, 0.2, 0.4)
START = single_width_run(1.0)
SCRATCH = "MutualNet"  # the study of record's from-scratch group
WITHIN = 1.0  # box AP: "as good as from scratch" at every width at scale 1.0


def schedule(fraction: float) -> Dict[str, int]:
    """A fine-tuning length as a fraction of the study's schedule, its lr step at the same point."""
    iterations = round(STUDY_ITERATIONS * fraction)
    return {"iterations": iterations, "step": round(iterations * STUDY_STEP / STUDY_ITERATIONS)}


def group_name(method: str, fraction: float) -> str:
    return f"{method} fine-tuned {fraction:.0%}"


def finetune_run(method: str, fraction: float, seed: int, start_weights: str) -> StudyRun:
    length = schedule(fraction)
    overrides = ("MODEL.WEIGHTS", start_weights, "MUTUALNET.TRAIN.METHOD", method.lower().replace("-", ""),
                 "SOLVER.MAX_ITER", str(length["iterations"]), "SOLVER.STEPS", f"({length['step']},)")
    return StudyRun(f"{method.lower().replace('-', '')}_ft{round(fraction * 100)}_seed{seed}",
                    group_name(method, fraction), overrides, seed, FINETUNE_CONFIG)


def finetune_plan(root: str) -> List[StudyRun]:
    """The start, then the fine-tunings in pairs (two train at once), the middle length first: an
    interrupted plan then has the length the US-Net comparison is made at."""
    folder = os.path.abspath(os.path.join(root, "runs", START.name))
    inside_repo = os.path.commonpath([folder, REPO]) == REPO  # the training runs in the repository
    weights = os.path.join(os.path.relpath(folder, REPO) if inside_repo else folder, "model_final.pth")
    runs = [START]
    for fraction in (0.2, 0.4, 0.1):
        runs += [finetune_run("MutualNet", fraction, seed, weights) for seed in (1, 2)]
    runs.insert(runs.index(finetune_run("MutualNet", 0.1, 1, weights)), finetune_run("US-Net", 0.2, 1, weights))
    return runs


def run_finetune_study(root: str, runs: List[StudyRun], jobs: int = 2, commit: bool = False) -> Dict:
    """The start first, alone (every fine-tuning loads its final weights), then the others `jobs`
    at a time; resumable like the study. Ends with the summary and the fine-tuning report."""
    plan = finetune_plan(root)
    if START in runs:
        run_study(root, [START], 1, commit=commit, plan=plan, config_file=STUDY_CONFIG)
    rest = [run for run in runs if run != START]
    if rest:
        start_weights = os.path.join(root, "runs", START.name, "model_final.pth")
        if not os.path.isfile(start_weights):
            raise FileNotFoundError(f"{start_weights} is missing: the fine-tunings start from it; train "
                                    f"{START.name} first (tools/study.py --plan finetune --runs {START.name})")
        run_study(root, rest, jobs, commit=commit, plan=plan, config_file=STUDY_CONFIG)
    return summarize_finetune(root, plan)


def summarize_finetune(root: str, plan: List[StudyRun], study_results: str = STUDY_RESULTS,
                       study_timings: str = STUDY_TIMINGS) -> Dict:
    summary = summarize(root, plan)
    if summary:
        write_finetune_report(root, summary, json.load(open(study_results)), load_timings(study_timings),
                              load_timings(os.path.join(root, "timings.json")), plan)
    return summary


def _at_scale(rows: List[Dict], scale: float = 1.0) -> Dict[float, Dict]:
    return {round(row["width"], 6): row for row in rows if abs(row["resolution_scale"] - scale) < 1e-6}


def _mean_seconds(timings: Dict, names: List[str]) -> Optional[float]:
    seconds = [timings["runs"][name] for name in names if name in timings["runs"]]
    return statistics.fmean(seconds) if seconds else None


def gaps_to_scratch(finetuned: List[Dict], scratch: List[Dict]) -> Dict[float, float]:
    """Box AP of the fine-tuned front minus the from-scratch front, per width at scale 1.0."""
    ours, theirs = _at_scale(finetuned), _at_scale(scratch)
    return {width: ours[width]["bbox"]["AP"] - theirs[width]["bbox"]["AP"] for width in sorted(ours, reverse=True)
            if width in theirs}


def shortest_within(summary: Dict, scratch: List[Dict], method: str = "MutualNet") -> Optional[float]:
    """The smallest fine-tuning fraction whose front is within WITHIN box AP of from scratch at
    every width at scale 1.0 (None if none finished is)."""
    for fraction in sorted(FRACTIONS):
        group = summary.get(group_name(method, fraction))
        if group and all(gap >= -WITHIN for gap in gaps_to_scratch(group, scratch).values()):
            return fraction
    return None


def write_finetune_report(root: str, summary: Dict, study: Dict, study_timings: Dict, timings: Dict,
                          plan: List[StudyRun]) -> None:
    """finetune.md (fronts at scale 1.0, gaps to from scratch, width 1.0 against its start, costs)
    and finetune.png (the fronts over every width and scale, from scratch beside them)."""
    scratch = study[SCRATCH]
    start = summary.get(START.group)
    groups = [g for g in [group_name("MutualNet", f) for f in FRACTIONS] + [group_name("US-Net", 0.2)]
              if g in summary]
    widths = sorted(_at_scale(scratch), reverse=True)
    lines = ["# Fine-tuning a trained detector into an adaptive one (generated by tools/study.py --plan finetune)", "",
             f"Start: `{START.name}`, the study's single-width width-1.0 model trained again here. From scratch: "
             f"the study of record's MutualNet ({len(scratch[0]['bbox']['AP_seeds'])} seeds, "
             f"{STUDY_ITERATIONS:,} iterations). Box AP / mask AP at scale 1.0, mean over seeds (seeds in brackets).", "",
             "| model | iterations | " + " | ".join(f"w {w:g}" for w in widths) + " |",
             "|---|---|" + "---|" * len(widths)]

    def row(name, rows, iterations):
        at = _at_scale(rows)
        cells = [f"{at[w]['bbox']['AP']:.1f} / {at[w]['segm']['AP']:.1f}" if w in at else "-" for w in widths]
        return f"| {name} ({rows[0]['seeds']}) | {iterations} | " + " | ".join(cells) + " |"

    lines.append(row("MutualNet from scratch", scratch, f"{STUDY_ITERATIONS:,}"))
    if start:
        lines.append(row("single width 1.0 (the start)", start, f"{STUDY_ITERATIONS:,}"))
    for group in groups:
        fraction = float(group.rsplit(" ", 1)[1].rstrip("%")) / 100
        lines.append(row(group, summary[group], f"+{schedule(fraction)['iterations']:,}"))
    lines += ["", "## Against from scratch: fine-tuned minus from-scratch box AP at scale 1.0", "",
              "| model | " + " | ".join(f"w {w:g}" for w in widths) + " | worst |", "|---|" + "---|" * (len(widths) + 1)]
    for group in groups:
        gaps = gaps_to_scratch(summary[group], scratch)
        lines.append(f"| {group} | " + " | ".join(f"{gaps[w]:+.1f}" if w in gaps else "-" for w in widths)
                     + f" | {min(gaps.values()):+.1f} |")
    shortest = shortest_within(summary, scratch)
    mutualnet = [g for g in groups if g.startswith("MutualNet")]
    closest = max(mutualnet, key=lambda g: min(gaps_to_scratch(summary[g], scratch).values()), default=None)
    answer = (f"**{shortest:.0%}** of the schedule ({schedule(shortest)['iterations']:,} iterations)." if shortest is not None
              else "**none** of the lengths run" + (f"; the closest, {closest.rsplit(' ', 1)[1]}, is "
                                                    f"{-min(gaps_to_scratch(summary[closest], scratch).values()):.1f} box AP "
                                                    "short at its worst width." if closest else "."))
    lines += ["", f"Shortest MutualNet fine-tuning within {WITHIN:g} box AP of from scratch at every width (scale 1.0): "
              + answer]
    if start:
        start_box = _at_scale(start)[1.0]["bbox"]["AP"]
        lines += ["", "## Width 1.0 against its start (box AP at scale 1.0)", ""]
        lines += [f"- {group}: {_at_scale(summary[group])[1.0]['bbox']['AP'] - start_box:+.1f} "
                  f"({_at_scale(summary[group])[1.0]['bbox']['AP']:.1f} vs {start_box:.1f})" for group in groups]
    lines += ["", "## Cost", "", "| model | iterations | wall time per run (mean) |", "|---|---|---|"]
    scratch_seconds = _mean_seconds(study_timings, [f"mutualnet_seed{s}" for s in (1, 2, 3)])
    start_seconds = _mean_seconds(timings, [START.name])
    if scratch_seconds:
        lines.append(f"| MutualNet from scratch (study of record) | {STUDY_ITERATIONS:,} | {scratch_seconds / 60:.0f} min |")
    if start_seconds:
        lines.append(f"| single width 1.0 (the start, this folder) | {STUDY_ITERATIONS:,} | {start_seconds / 60:.0f} min |")
    for group in groups:
        names = [run.name for run in plan if run.group == group]
        seconds = _mean_seconds(timings, names)
        fraction = float(group.rsplit(" ", 1)[1].rstrip("%")) / 100
        lines.append(f"| {group} | +{schedule(fraction)['iterations']:,} | "
                     + (f"{seconds / 60:.0f} min |" if seconds else "- |"))
    lines += ["", "Wall times include each run's width sweep; runs train two at a time, one thread each, and "
              "timings.json records each invocation's machine: compare times within one folder, not across."]
    with open(os.path.join(root, "finetune.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    fronts = {"MutualNet from scratch": scratch, **({START.group: start} if start else {}),
              **{group: summary[group] for group in groups}}
    plot_tradeoff(fronts, os.path.join(root, "finetune.png"),
                  title="Fine-tuned from the width-1.0 model vs MutualNet from scratch (embedded set)")
