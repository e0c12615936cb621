#!/usr/bin/env python
"""The accuracy study on the embedded dataset: one command, resumable, results in benchmarks/study/.

    python tools/study.py                  # the study of record (configs/Study/Converged-3375-Study.yaml):
                                           # train all runs, sweep them, write results.json, table.md,
                                           # tradeoff.png (2 runs at a time, one CPU thread each: --jobs)
    python tools/study.py --summarize-only # rebuild the table and plot from finished runs
    python tools/study.py --slimmable-heads # also MutualNet with slimmable heads (2 runs more)
    python tools/study.py --runs mutualnet_seed1 usnet_seed1 --output DIR  # train a subset of the plan
    python tools/study.py --commit         # commit each run's results (git) as it finishes, and the
                                           # invocation's wall time (timings.json) when it ends
    python tools/study.py --config-file configs/Study/Base-Study.yaml --output benchmarks/study_1800
                                           # the same plan with another config, in its own folder
    python tools/study.py --plan finetune --commit
                                           # fine-tuning the single-width model into an adaptive one
                                           # (10/20/40% of the schedule) vs from scratch: benchmarks/finetune/

Interrupted (Ctrl-C, or SIGTERM from `kill`)? The running trainings save a checkpoint and stop;
the same command resumes them and never redoes a finished run.
"""
import argparse
import os
import sys

from mutualnet_det.study.finetune import finetune_plan, run_finetune_study, summarize_finetune
from mutualnet_det.study.runner import (REPO, STUDY_CONFIG, claim_config, handle_stop_signals, load_timings, run_study,
                                        study_plan, summarize)

DEFAULT_OUTPUT = {"study": os.path.join(REPO, "benchmarks", "study"), "finetune": os.path.join(REPO, "benchmarks", "finetune")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=sorted(DEFAULT_OUTPUT), default="study",
                        help="study: MutualNet vs US-Net from scratch (the study of record); finetune: MutualNet "
                             "fine-tuned from the single-width model vs from scratch")
    parser.add_argument("--output", help="the study folder (default: benchmarks/study, benchmarks/finetune)")
    parser.add_argument("--config-file", default=STUDY_CONFIG,
                        help="every run's config (a study folder keeps the one it was started with)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="rebuild table, report and plots from every finished run of the plan (whatever --runs says)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once, one CPU thread each (2 suits a 2-core machine)")
    parser.add_argument("--slimmable-heads", action="store_true",
                        help="also MutualNet with slimmable FPN outputs and heads (2 seeds), a curve of its own")
    parser.add_argument("--runs", nargs="+", metavar="NAME",
                        help="only these runs of the plan, in this order (e.g. mutualnet_seed1 usnet_seed1)")
    parser.add_argument("--commit", action="store_true",
                        help="commit each finished run's results and timings.json (git) as it completes, "
                             "and timings.json with the wall time when the invocation ends")
    args = parser.parse_args()
    args.output = args.output or DEFAULT_OUTPUT[args.plan]
    if args.plan == "finetune" and args.slimmable_heads:
        parser.error("--slimmable-heads belongs to --plan study")
    if args.plan == "finetune" and os.path.abspath(args.config_file) != STUDY_CONFIG:
        parser.error("--plan finetune runs in the study of record's config (its start model and "
                     "configs/Study/Finetune-Study.yaml on top): drop --config-file")
    if not os.path.isfile(args.config_file):
        parser.error(f"no config file {args.config_file} (the studies' configs are in configs/Study/)")
    try:  # checked again by run_study; here it is a usage error, not a traceback
        claim_config(load_timings(os.path.join(args.output, "timings.json")), args.output, args.config_file)
    except ValueError as error:
        parser.error(str(error))
    plan = runs = (finetune_plan(args.output) if args.plan == "finetune"
                   else study_plan(slimmable_heads=args.slimmable_heads))
    if args.runs:
        by_name = {run.name: run for run in runs}
        unknown = [name for name in args.runs if name not in by_name]
        if unknown:
            parser.error(f"unknown run(s) {unknown}; the plan has {sorted(by_name)}")
        runs = [by_name[name] for name in args.runs]
    handle_stop_signals()  # Ctrl-C, `kill`, `kill -INT`: trainings save a checkpoint first
    # the summary covers every finished run of the plan in the output folder, not only those named
    if args.plan == "finetune":
        try:
            summary = (summarize_finetune(args.output, plan) if args.summarize_only
                       else run_finetune_study(args.output, runs, args.jobs, commit=args.commit))
        except FileNotFoundError as error:  # a fine-tuning named before its start model is trained
            parser.error(str(error))
    else:
        summary = (summarize(args.output, plan) if args.summarize_only
                   else run_study(args.output, runs, args.jobs, commit=args.commit, plan=plan,
                                  config_file=args.config_file))
    if not summary:
        print(f"no finished runs yet in {args.output}")
        return
    print(open(os.path.join(args.output, "table.md")).read())
    print(f"{len(summary)} method groups; results in {args.output}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the runner has said what happened and how to resume: no traceback
        sys.exit(130)
