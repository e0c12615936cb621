#!/usr/bin/env python
"""Accuracy parity of bfloat16 (CPU autocast) against float32 training, on the embedded study config.

    python tools/amp_parity.py            # trains the runs not done yet (2 at a time), then compares
    python tools/amp_parity.py --seeds 1 2  # float32 with two seeds gives a seed spread to compare with

MutualNet is trained with the same config and seed in float32 and with SOLVER.AMP.ENABLED True
(bfloat16 on CPU); both end with their width sweep. Parity at a width: |bf16 - fp32| box AP at
scale 1.0 within the float32 seed spread (max - min over seeds), or within 1.5 AP with one seed.
Writes benchmarks/amp_parity/{parity.json, parity.md, table.md, tradeoff.png, timings.json}.
"""
import argparse
import json
import os

from mutualnet_det.study import REPO, StudyRun, run_study

MUTUALNET = ("MUTUALNET.TRAIN.METHOD", "mutualnet")
ONE_SEED_TOLERANCE = 1.5  # box AP


def parity_plan(float32_seeds):
    runs = [StudyRun(f"mutualnet_float32_seed{seed}", "MutualNet float32", MUTUALNET, seed) for seed in float32_seeds]
    runs.append(StudyRun("mutualnet_bfloat16_seed1", "MutualNet bfloat16", MUTUALNET + ("SOLVER.AMP.ENABLED", "True"), 1))
    return runs


def compare(summary, widths=(1.0, 0.25)):
    """Per width at scale 1.0: float32 seed values, bfloat16 (seed 1), difference, tolerance, verdict."""
    rows = []
    for width in widths:
        def at(group):
            return next(r for r in summary[group] if r["width"] == width and r["resolution_scale"] == 1.0)
        fp32, bf16 = at("MutualNet float32"), at("MutualNet bfloat16")
        seeds = fp32["bbox"]["AP_seeds"]
        tolerance = max(seeds) - min(seeds) if len(seeds) > 1 else ONE_SEED_TOLERANCE
        difference = bf16["bbox"]["AP"] - seeds[0]  # same seed (1) as the bfloat16 run
        rows.append({"width": width, "float32_box_AP_seeds": seeds, "bfloat16_box_AP": bf16["bbox"]["AP"],
                     "difference_to_same_seed": difference, "tolerance": tolerance,
                     "float32_mask_AP_seeds": fp32["segm"]["AP_seeds"], "bfloat16_mask_AP": bf16["segm"]["AP"],
                     "parity": abs(difference) <= tolerance})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "amp_parity"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="float32 seeds (1 is always compared)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    summary = run_study(args.output, parity_plan(sorted(set(args.seeds) | {1})), args.jobs)
    rows = compare(summary)
    with open(os.path.join(args.output, "parity.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| width | float32 box AP (seeds) | bfloat16 box AP | bf16 - fp32 (seed 1) | tolerance | parity |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:g} | {', '.join(f'{v:.1f}' for v in r['float32_box_AP_seeds'])} | {r['bfloat16_box_AP']:.1f} | "
              f"{r['difference_to_same_seed']:+.1f} | {r['tolerance']:.1f} | {'yes' if r['parity'] else 'no'} |" for r in rows]
    with open(os.path.join(args.output, "parity.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
