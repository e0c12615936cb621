"""Does a smaller configuration run as much faster as its FLOPs promise? The latency targets of
a trained model, measured in one process: every configuration of its sweep (width, scale,
proposals) timed on this device, plus widths 1.0 and 0.25 (scale 1.0, the config's proposals)
with Detectron2's own proposal selection and mask pasting (the code path before
`modeling/proposal_selection.py` and `modeling/mask_paste.py`) for the "no slower than before" check.

Reported (`tools/benchmark.py --targets`):
- width 0.25 / width 1.0 latency at scale 1.0, at each proposal count;
- the fastest configuration whose box AP is within 1.0 of width 0.25's (scale 1.0, the config's
  proposals), as a fraction of width 1.0's latency at the config's proposals;
- widths 1.0 and 0.25 against themselves with Detectron2's proposal selection and paste;
- the latency / GFLOPs curve of the front, with the FLOPs-ideal line (width 1.0's latency scaled
  by each configuration's share of its GFLOPs) beside it: `latency_targets_<device>_<date>.png`.
"""
import contextlib
import statistics
from typing import Dict, List

AP_WITHIN = 1.0  # box AP a cheaper configuration may lose against width 0.25's


def _key(record) -> tuple:
    return (record["width"], round(record["resolution_scale"], 3), record.get("proposals"))


def _find(records: List[Dict], width: float, scale: float, proposals: int) -> Dict:
    for record in records:
        if _key(record) == (width, round(scale, 3), proposals):
            return record
    raise ValueError(f"the sweep has no configuration width {width:g}, scale {scale:g}, {proposals} proposals: "
                     "sweep it (MUTUALNET.TEST.WIDTHS / RESOLUTION_SCALES / PROPOSALS) before timing")


def targets_from_latency(table: Dict, default_proposals: int, detectron2_ms: Dict[float, float] = None) -> Dict:
    """The targets of a latency table (`runtime.latency.profile_latency`) at its last thread count;
    detectron2_ms: {width: ms} at scale 1.0 and the config's proposals with Detectron2's own
    proposal selection and mask pasting (`measure_targets`)."""
    threads = table["torch_threads"]
    records = [r for r in table["configurations"] if r["threads"] == threads]
    full = _find(records, 1.0, 1.0, default_proposals)
    narrow = _find(records, 0.25, 1.0, default_proposals)
    by_proposals = sorted({r.get("proposals") for r in records if r.get("proposals") is not None}, reverse=True)
    ratios = []
    for count in by_proposals:
        try:
            a, b = _find(records, 0.25, 1.0, count), _find(records, 1.0, 1.0, count)
        except ValueError:
            continue
        ratios.append({"proposals": count, "width_0.25_ms": a["latency_ms"], "width_1.0_ms": b["latency_ms"],
                       "ratio": a["latency_ms"] / b["latency_ms"]})
    floor = narrow["bbox"]["AP"] - AP_WITHIN
    eligible = [r for r in records if r["bbox"]["AP"] >= floor]
    fastest = min(eligible, key=lambda r: r["latency_ms"])
    front = sorted(table["front"], key=lambda r: r["gflops"])
    report = {
        "threads": threads, "default_proposals": default_proposals,
        "width_1.0_ms": full["latency_ms"], "width_1.0_gflops": full["gflops"],
        "width_ratio_by_proposals": ratios,
        "cheap_within_ap": {"box_ap_floor": floor, "width_0.25_box_ap": narrow["bbox"]["AP"],
                            "configuration": {k: fastest[k] for k in ("width", "resolution_scale", "proposals", "gflops", "latency_ms")},
                            "box_ap": fastest["bbox"]["AP"], "fraction_of_width_1.0": fastest["latency_ms"] / full["latency_ms"]},
        "front": [{"width": r["width"], "resolution_scale": r["resolution_scale"], "proposals": r.get("proposals"),
                   "gflops": r["gflops"], "latency_ms": r["latency_ms"], "box_ap": r["bbox"]["AP"],
                   "flops_ideal_ms": full["latency_ms"] * r["gflops"] / full["gflops"]} for r in front],
    }
    if detectron2_ms:
        ours = {1.0: full["latency_ms"], 0.25: narrow["latency_ms"]}
        report["against_detectron2_postprocessing"] = [
            {"width": width, "ms": ours[width], "detectron2_ms": ms, "ratio": ours[width] / ms}
            for width, ms in sorted(detectron2_ms.items(), reverse=True)]
    return report


@contextlib.contextmanager
def detectron2_postprocessing(model):
    """The model with Detectron2's own RPN proposal selection and mask pasting, for the block."""
    from ..modeling.proposal_selection import TopProposalsRPN, use_top_proposals

    pasting, selecting = model.vectorized_mask_paste, type(model.proposal_generator) is TopProposalsRPN
    model.vectorized_mask_paste = False
    use_top_proposals(model, enabled=False)
    try:
        yield model
    finally:
        model.vectorized_mask_paste = pasting
        use_top_proposals(model, enabled=selecting)


def merge_rounds(tables: List[Dict]) -> Dict:
    """One latency table from `tables`, the same configurations timed in turn (round robin, so a
    slow spell of the machine falls on every configuration alike rather than on a few): each
    configuration's latency is the median of its rounds' medians (all of them kept in
    `latency_rounds_ms`), its IQR the median of theirs, its min / max over all rounds, its calls
    their sum; the front is recomputed from those. The table's `switch` timing is the first
    round's."""
    from ..evaluation.query_table import pareto_front

    merged = dict(tables[0])
    records = []
    for rounds in zip(*(table["configurations"] for table in tables)):
        times = [r["latency_ms"] for r in rounds]
        record = {**rounds[0], "latency_ms": statistics.median(times), "latency_rounds_ms": times}
        if all("latency_min_ms" in r for r in rounds):
            record.update(latency_iqr_ms=statistics.median(r["latency_iqr_ms"] for r in rounds),
                          latency_min_ms=min(r["latency_min_ms"] for r in rounds),
                          latency_max_ms=max(r["latency_max_ms"] for r in rounds),
                          latency_calls=sum(r["latency_calls"] for r in rounds))
        records.append(record)
    threads = tables[0]["torch_threads"]
    front = pareto_front([r for r in records if r["threads"] == threads], tuple(tables[0]["metric"]), cost="latency_ms")
    merged.update(configurations=records, front=front, fronts_by_threads={str(threads): front}, rounds=len(tables))
    return merged


def bank_missing_statistics(cfg, model, sweep: List[Dict]) -> List[List[float]]:
    """Calibrate the BN statistics of every (width, scale) of the sweep that the checkpoint's bank
    lacks, on the training set as `--eval-only` did for the sweep (its records say "calibrated"),
    and put them in the model's bank in memory (the checkpoint is not changed). Returns the
    (width, scale) pairs calibrated."""
    from ..bn_calibration import bn_layers, calibration_batches, use_configuration

    bank = getattr(model, "bn_stats_bank", None)
    if not bn_layers(model) or bank is None:
        return []
    missing = list(dict.fromkeys((r["width"], r["resolution_scale"]) for r in sweep
                                 if (r["width"], r["resolution_scale"]) not in bank))
    batches = calibration_batches(cfg) if missing else None
    for width, scale in missing:
        use_configuration(model, width, scale, batches, cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
        bank.store(model, width, scale)
    model.eval()
    return [[width, scale] for width, scale in missing]


def measure_targets(cfg, model, sweep: List[Dict], images, threads: int, warmup: int = 3, repeats_per_image: int = 3,
                    rounds: int = 3) -> Dict:
    """Time every sweep configuration at `threads` torch threads, `rounds` times in turn
    (`merge_rounds`), widths 1.0 and 0.25 (scale 1.0, the config's proposals) with Detectron2's
    proposal selection and mask pasting in each round too; returns (latency table, targets).
    Configurations the checkpoint has no BN statistics for are calibrated first
    (`bank_missing_statistics`, listed in the table as `calibrated_for_timing`)."""
    from ..runtime.latency import profile_latency

    calibrated = bank_missing_statistics(cfg, model, sweep)
    default_proposals = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    baseline = [_find(sweep, width, 1.0, default_proposals) for width in (1.0, 0.25)]
    tables, before = [], []
    for index in range(rounds):
        tables.append(profile_latency(cfg, model, sweep, images, threads=[threads], warmup=warmup,
                                      repeats_per_image=repeats_per_image, progress=index == 0))
        with detectron2_postprocessing(model):
            before.append(profile_latency(cfg, model, baseline, images, threads=[threads], warmup=warmup,
                                          repeats_per_image=repeats_per_image, progress=False))
    table, before = merge_rounds(tables), merge_rounds(before)
    table["calibrated_for_timing"] = calibrated
    detectron2_ms = {r["width"]: r["latency_ms"] for r in before["configurations"]}
    targets = targets_from_latency(table, default_proposals, detectron2_ms)
    targets["rounds"] = per_round_targets(tables, default_proposals)
    return table, targets


def per_round_targets(tables: List[Dict], default_proposals: int) -> List[Dict]:
    """The two ratios of each round on its own: how much the targets move with the machine."""
    rows = []
    for table in tables:
        targets = targets_from_latency(table, default_proposals)
        ratios = {r["proposals"]: r["ratio"] for r in targets["width_ratio_by_proposals"]}
        rows.append({"width_ratio_default_proposals": ratios.get(default_proposals),
                     "cheap_fraction": targets["cheap_within_ap"]["fraction_of_width_1.0"],
                     "cheap_configuration": targets["cheap_within_ap"]["configuration"]})
    return rows


def plot_front(targets: Dict, table: Dict, path: str) -> None:
    """Latency against GFLOPs (log-log): every configuration, the front, the FLOPs-ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = targets["threads"]
    records = [r for r in table["configurations"] if r["threads"] == threads]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter([r["gflops"] for r in records], [r["latency_ms"] for r in records], s=14, color="0.7",
               label="every configuration")
    front = targets["front"]
    ax.plot([r["gflops"] for r in front], [r["latency_ms"] for r in front], "o-", color="C0", label="front (box AP / latency)")
    gflops = sorted({r["gflops"] for r in records})
    ideal = [targets["width_1.0_ms"] * g / targets["width_1.0_gflops"] for g in gflops]
    ax.plot(gflops, ideal, "--", color="C3", label="FLOPs-ideal (width 1.0 scaled by GFLOPs)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel(f"median latency, ms ({threads} thread{'s' if threads > 1 else ''})")
    ax.set_title("Latency against FLOPs: the front and the ideal")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets_markdown(report: Dict) -> str:
    targets = report["targets"]
    cheap = targets["cheap_within_ap"]
    c = cheap["configuration"]
    lines = [f"# Latency targets, {report['date']}", "",
             f"{report['device_name']}, {targets['threads']} torch thread(s); {report['num_images']} validation images x "
             f"{report['repeats_per_image']}; weights {report['weights']}; sweep {report['sweep']}.", "",
             f"Width 1.0 (scale 1.0, {targets['default_proposals']} proposals): {targets['width_1.0_ms']:.1f} ms, "
             f"{targets['width_1.0_gflops']:.2f} GFLOPs.", "",
             "| proposals | width 0.25 ms | width 1.0 ms | 0.25 / 1.0 |", "|---|---|---|---|"]
    lines += [f"| {r['proposals']} | {r['width_0.25_ms']:.1f} | {r['width_1.0_ms']:.1f} | {r['ratio']:.2f} |"
              for r in targets["width_ratio_by_proposals"]]
    lines += ["", f"Fastest configuration with box AP >= width 0.25's ({cheap['width_0.25_box_ap']:.2f}) - {AP_WITHIN:g}: "
              f"width {c['width']:g}, scale {c['resolution_scale']:.3g}, {c['proposals']} proposals, box AP "
              f"{cheap['box_ap']:.2f}, {c['latency_ms']:.1f} ms = {cheap['fraction_of_width_1.0']:.2f} of width 1.0."]
    if targets.get("rounds"):
        lines += ["", f"Each configuration was timed in {len(targets['rounds'])} rounds, one after another (round robin); "
                  "its latency above is the median of its rounds' medians. Each round on its own:", "",
                  f"| round | width 0.25 / 1.0 ({targets['default_proposals']} proposals) | fastest within 1 AP | its fraction of width 1.0 |",
                  "|---|---|---|---|"]
        for index, r in enumerate(targets["rounds"], 1):
            c = r["cheap_configuration"]
            lines.append(f"| {index} | {r['width_ratio_default_proposals']:.3f} | width {c['width']:g}, scale "
                         f"{c['resolution_scale']:.3g}, {c['proposals']} proposals | {r['cheap_fraction']:.3f} |")
    calibrated = report.get("latency_table", {}).get("calibrated_for_timing")
    if calibrated:
        lines += ["", "BN statistics not in the checkpoint's bank, calibrated on the training set for this timing (as "
                  "the sweep's evaluation did): " + ", ".join(f"width {w:g} scale {s:.3g}" for w, s in calibrated) + "."]
    if targets.get("against_detectron2_postprocessing"):
        lines += ["", "Against Detectron2's own proposal selection and mask pasting (scale 1.0, the config's proposals):", "",
                  "| width | ms | with Detectron2's | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['width']:g} | {r['ms']:.1f} | {r['detectron2_ms']:.1f} | {r['ratio']:.2f} |"
                  for r in targets["against_detectron2_postprocessing"]]
    lines += ["", "Front (by GFLOPs) against the FLOPs-ideal latency:", "",
              "| width | scale | proposals | GFLOPs | box AP | ms | FLOPs-ideal ms | ms / ideal |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:g} | {r['resolution_scale']:.3g} | {r['proposals']} | {r['gflops']:.2f} | {r['box_ap']:.2f} | "
              f"{r['latency_ms']:.1f} | {r['flops_ideal_ms']:.1f} | {r['latency_ms'] / r['flops_ideal_ms']:.1f} |"
              for r in targets["front"]]
    return "\n".join(lines) + "\n"
