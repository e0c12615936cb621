#!/usr/bin/env python
"""Accuracy parity of AMP (bfloat16 autocast on CPU) against float32 training, on the study config.

    python tools/amp_parity.py              # trains what is missing, one run at a time, then compares
    python tools/amp_parity.py --seeds 1 2  # float32 with two seeds gives a seed spread to compare with
    python tools/amp_parity.py --output DIR --seeds 1 2 3 --amp-seeds 1 2 3  # as reported (docs/history.md)

MutualNet is trained with the same config (configs/Study/Base-Study.yaml, the study's regime at
1,800 iterations) and seed in float32 and with SOLVER.AMP.ENABLED True; both end with their width
sweep. The float32 runs have the study's names and command lines ("mutualnet_seed<n>"): pointing
--output at a study folder trained with Base-Study.yaml reuses its runs; the default folder trains
its own. A folder whose timings.json records another config (e.g. the study of record,
benchmarks/study/) is refused; runs trained with an older Base-Study (docs/history.md) must not be
mixed with a new AMP run either.

The rule stated before the first AMP run, parity at a width: |AMP - float32| box AP at scale 1.0
(seed 1 of each) within the float32 seed spread (max - min), or within 1.5 AP with one seed. It
looks at scale 1.0 only, so the report also compares every width x scale point of the sweep, box
and mask AP: the difference of the two precisions' seed means, and whether the AMP seeds
(--amp-seeds) lie below, above or across the float32 seeds. Writes amp_parity.{json,md} into
--output.
"""
import argparse
import json
import os

from tqdm import tqdm

from mutualnet_det.evaluation.query_table import load_sweep
from mutualnet_det.study.runner import REPO, StudyRun, claim_config, load_timings, sweep_path, train_and_sweep

MUTUALNET = ("MUTUALNET.TRAIN.METHOD", "mutualnet", "MUTUALNET.TRAIN.INPLACE_DISTILL", "False")
ONE_SEED_TOLERANCE = 1.5  # box AP
# The parity of record was measured at the 1,800-iteration schedule (docs/history.md).
PARITY_CONFIG = os.path.join(REPO, "configs", "Study", "Base-Study.yaml")


def parity_plan(float32_seeds, amp_seeds=(1,)):
    """The float32 runs, then the AMP runs; seed 1 first in each."""
    runs = [StudyRun(f"mutualnet_seed{seed}", "MutualNet float32", MUTUALNET, seed) for seed in float32_seeds]
    return runs + [StudyRun(f"mutualnet_amp_seed{seed}", "MutualNet AMP", MUTUALNET + ("SOLVER.AMP.ENABLED", "True"), seed)
                   for seed in amp_seeds]


def seed_one_first(seeds):
    """The seeds asked for, with seed 1 (the one the rule compares) always first."""
    return [1] + sorted(set(seeds) - {1})


def ap_at(records, width, scale=1.0, task="bbox"):
    """A sweep's AP (box: "bbox", mask: "segm") at one width and input scale."""
    return next(r for r in records if r["width"] == width and r["resolution_scale"] == scale)[task]["AP"]


def compare(float32_sweeps, amp_sweep, widths=(1.0, 0.25)):
    """Per width at scale 1.0: float32 values (seed 1 first), AMP (seed 1), difference, tolerance, verdict."""
    rows = []
    for width in widths:
        seeds = [ap_at(sweep, width) for sweep in float32_sweeps]
        tolerance = max(seeds) - min(seeds) if len(seeds) > 1 else ONE_SEED_TOLERANCE
        difference = ap_at(amp_sweep, width) - seeds[0]
        rows.append({"width": width, "float32_box_AP_seeds": seeds, "amp_box_AP": ap_at(amp_sweep, width),
                     "difference_to_same_seed": difference, "tolerance": tolerance,
                     "float32_mask_AP_seeds": [ap_at(s, width, task="segm") for s in float32_sweeps],
                     "amp_mask_AP": ap_at(amp_sweep, width, task="segm"), "parity": abs(difference) <= tolerance})
    return rows


def every_point(float32_sweeps, amp_sweeps):
    """Per width x scale of the sweep and per task (box, mask AP): both precisions' seeds (seed 1
    first), AMP minus float32 in the seeds' means and in seed 1, and how the two seed ranges lie:
    AMP "below" (every AMP seed under every float32 seed), "above", or "overlapping"."""
    points = []
    for record in amp_sweeps[0]:
        width, scale = record["width"], record["resolution_scale"]
        point = {"width": width, "resolution_scale": scale}
        for task in ("bbox", "segm"):
            float32 = [ap_at(sweep, width, scale, task) for sweep in float32_sweeps]
            amp = [ap_at(sweep, width, scale, task) for sweep in amp_sweeps]
            place = "below" if max(amp) < min(float32) else "above" if min(amp) > max(float32) else "overlapping"
            point[task] = {"float32_seeds": float32, "amp_seeds": amp,
                           "difference_of_means": sum(amp) / len(amp) - sum(float32) / len(float32),
                           "difference_seed_1": amp[0] - float32[0], "amp_range_against_float32": place}
        points.append(point)
    return points


def point_summary(points, task):
    """One line per task: at how many points the AMP seeds lie below / overlap / lie above the
    float32 seeds, and the mean and extremes of the difference of the seeds' means."""
    differences = [p[task]["difference_of_means"] for p in points]
    places = [p[task]["amp_range_against_float32"] for p in points]
    counts = ", ".join(f"{place} {places.count(place)}" for place in ("below", "overlapping", "above"))
    return (f"{'box' if task == 'bbox' else 'mask'} AP over {len(points)} points, AMP seeds against float32 seeds: "
            f"{counts}; AMP - float32 (means): mean {sum(differences) / len(differences):+.1f}, "
            f"{min(differences):+.1f} to {max(differences):+.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "amp_parity"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="float32 seeds (seed 1 is always one)")
    parser.add_argument("--amp-seeds", type=int, nargs="+", default=[1], help="AMP seeds (seed 1 is always one)")
    args = parser.parse_args()
    float32_seeds = seed_one_first(args.seeds)
    runs = parity_plan(float32_seeds, seed_one_first(args.amp_seeds))
    try:  # float32 runs of a study folder are reused only if it was trained with the same config
        claim_config(load_timings(os.path.join(args.output, "timings.json")), args.output, PARITY_CONFIG)
    except ValueError as error:
        parser.error(str(error))
    for run in tqdm(runs, desc="parity runs"):
        if not os.path.isfile(sweep_path(args.output, run)):
            train_and_sweep(run, args.output, config_file=PARITY_CONFIG)
    sweeps = [load_sweep(sweep_path(args.output, run)) for run in runs]
    float32_sweeps, amp_sweeps = sweeps[:len(float32_seeds)], sweeps[len(float32_seeds):]
    rows = compare(float32_sweeps, amp_sweeps[0])
    points = every_point(float32_sweeps, amp_sweeps)
    with open(os.path.join(args.output, "amp_parity.json"), "w") as f:
        json.dump({"scale_1_rule": rows, "every_point": points}, f, indent=1)
    lines = ["| width | float32 box AP (seeds) | AMP box AP | AMP - float32 (seed 1) | tolerance | parity |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:g} | {', '.join(f'{v:.1f}' for v in r['float32_box_AP_seeds'])} | {r['amp_box_AP']:.1f} | "
              f"{r['difference_to_same_seed']:+.1f} | {r['tolerance']:.1f} | {'yes' if r['parity'] else 'no'} |" for r in rows]
    lines += ["", "Every point of the sweep: AP of each seed (seed 1 first), AMP - float32 in the means, and "
              "where the AMP seeds lie against the float32 ones:", "",
              "| width | scale | box float32 | box AMP | box diff | mask float32 | mask AMP | mask diff |",
              "|---|---|---|---|---|---|---|---|"]
    for p in points:
        cells = []
        for task in ("bbox", "segm"):
            t = p[task]
            cells.append(f"{' / '.join(f'{v:.1f}' for v in t['float32_seeds'])} | "
                         f"{' / '.join(f'{v:.1f}' for v in t['amp_seeds'])} | "
                         f"{t['difference_of_means']:+.1f} ({t['amp_range_against_float32']})")
        lines.append(f"| {p['width']:g} | {p['resolution_scale']:.3g} | {' | '.join(cells)} |")
    lines += ["", point_summary(points, "bbox"), "", point_summary(points, "segm")]
    with open(os.path.join(args.output, "amp_parity.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
