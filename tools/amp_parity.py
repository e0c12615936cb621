#!/usr/bin/env python
"""Accuracy parity of AMP (bfloat16 autocast on CPU) against float32 training, on the study config.

    python tools/amp_parity.py              # trains what is missing, one run at a time, then compares
    python tools/amp_parity.py --seeds 1 2  # float32 with two seeds gives a seed spread to compare with

MutualNet is trained with the same config (configs/Study/Base-Study.yaml as it is now) and seed in
float32 and with SOLVER.AMP.ENABLED True; both end with their width sweep. The float32 runs have
the study's names and command lines ("mutualnet_seed<n>"): pointing --output at a study trained
with the current config reuses its runs; the default folder trains its own. A folder whose
timings.json records another config (e.g. benchmarks/study_converged) is refused; runs trained with
an older Base-Study (benchmarks/study_faithful's, benchmarks/study_192px's) must not be mixed with
a new AMP run either. Parity at a width: |AMP -
float32| box AP at scale 1.0 (same seed) within the float32 seed spread (max - min), or within
1.5 AP with one seed. Writes amp_parity.{json,md} into --output.
"""
import argparse
import json
import os

from tqdm import tqdm

from mutualnet_det.study import REPO, STUDY_CONFIG, StudyRun, claim_config, load_timings, sweep_path, train_and_sweep

MUTUALNET = ("MUTUALNET.TRAIN.METHOD", "mutualnet", "MUTUALNET.TRAIN.INPLACE_DISTILL", "False")
ONE_SEED_TOLERANCE = 1.5  # box AP


def parity_plan(float32_seeds):
    runs = [StudyRun(f"mutualnet_seed{seed}", "MutualNet float32", MUTUALNET, seed) for seed in float32_seeds]
    return runs + [StudyRun("mutualnet_amp_seed1", "MutualNet AMP", MUTUALNET + ("SOLVER.AMP.ENABLED", "True"), 1)]


def box_ap(records, width, metric=("bbox", "AP")):
    record = next(r for r in records if r["width"] == width and r["resolution_scale"] == 1.0)
    return record[metric[0]][metric[1]]


def compare(float32_sweeps, amp_sweep, widths=(1.0, 0.25)):
    """Per width at scale 1.0: float32 values (seed 1 first), AMP (seed 1), difference, tolerance, verdict."""
    rows = []
    for width in widths:
        seeds = [box_ap(sweep, width) for sweep in float32_sweeps]
        tolerance = max(seeds) - min(seeds) if len(seeds) > 1 else ONE_SEED_TOLERANCE
        difference = box_ap(amp_sweep, width) - seeds[0]
        rows.append({"width": width, "float32_box_AP_seeds": seeds, "amp_box_AP": box_ap(amp_sweep, width),
                     "difference_to_same_seed": difference, "tolerance": tolerance,
                     "float32_mask_AP_seeds": [box_ap(s, width, ("segm", "AP")) for s in float32_sweeps],
                     "amp_mask_AP": box_ap(amp_sweep, width, ("segm", "AP")), "parity": abs(difference) <= tolerance})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "amp_parity"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="float32 seeds (seed 1 is always one)")
    args = parser.parse_args()
    runs = parity_plan([1] + sorted(set(args.seeds) - {1}))
    try:  # float32 runs of a study folder are reused only if it was trained with the same config
        claim_config(load_timings(os.path.join(args.output, "timings.json")), args.output, STUDY_CONFIG)
    except ValueError as error:
        parser.error(str(error))
    for run in tqdm(runs, desc="parity runs"):
        if not os.path.isfile(sweep_path(args.output, run)):
            train_and_sweep(run, args.output)
    sweeps = [json.load(open(sweep_path(args.output, run))) for run in runs]
    rows = compare(sweeps[:-1], sweeps[-1])
    with open(os.path.join(args.output, "amp_parity.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| width | float32 box AP (seeds) | AMP box AP | AMP - float32 (seed 1) | tolerance | parity |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:g} | {', '.join(f'{v:.1f}' for v in r['float32_box_AP_seeds'])} | {r['amp_box_AP']:.1f} | "
              f"{r['difference_to_same_seed']:+.1f} | {r['tolerance']:.1f} | {'yes' if r['parity'] else 'no'} |" for r in rows]
    with open(os.path.join(args.output, "amp_parity.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
