"""The GPU check (tools/gpu_check.sh): one command that runs what only a CUDA machine can show.

    python -m mutualnet_det.benchmark.gpu_check [--dry-run] [--iters 30] [--steps ...]

Steps, in order (each recorded, a failed one does not stop the others; the exit status is 1 if
any failed):
  cuda_tests   pytest -m cuda: the CUDA tests (float16 step, skipped inf step, torchvision's
               ROIAlign, peak memory of 4 members vs 1, synchronisations, rescaling on the GPU)
  suite        the rest of the suite (-m "not cuda"; with pytest-xdist where it is installed)
  training     seconds/iteration and peak GPU memory of single, US-Net and MutualNet on the
               embedded set (the main job's config) in float32, float16 (GradScaler) and
               bfloat16, each in a fresh process; MutualNet / single and MutualNet / US-Net
  sweep        tools/train_net.py as a user runs it (no MODEL.DEVICE given: the device follows
               the machine): MutualNet for --iters iterations, then its in-training sweep over
               4 configurations (widths 1.0 / 0.25 x scales 1.0 / 0.571)
  inference    latency (synchronised) of the trained model at widths 1.0 / 0.75 / 0.5 / 0.25 and
               scales 1.0 / 0.6, slimmable and frozen, against stock Detectron2 at width 1.0

Writes benchmarks/results/gpu_<date>.{json,md}. `--dry-run` prints this plan with the commands
and settings and runs nothing (any machine).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join("configs", "Shapes", "mutualnet_slimheads_mask_rcnn_R_18_FPN.yaml")
PRECISIONS = {"float32": [], "float16": ["SOLVER.AMP.ENABLED", "True", "MUTUALNET.TRAIN.AMP_DTYPE", "float16"],
              "bfloat16": ["SOLVER.AMP.ENABLED", "True", "MUTUALNET.TRAIN.AMP_DTYPE", "bfloat16"]}
SWEEP = ["MUTUALNET.TEST.WIDTHS", "(1.0, 0.25)", "MUTUALNET.TEST.RESOLUTION_SCALES", "(1.0, 0.571)"]
STEPS = ("cuda_tests", "suite", "training", "sweep", "inference")


def pytest_command(marker: str) -> List[str]:
    """The suite's own command (tools/run_tests.sh) restricted to `marker`; in parallel workers
    when pytest-xdist is installed (GPU images usually have it)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
               "-W", "ignore::FutureWarning", "-m", marker, "tests"]
    if marker == "not cuda":  # it builds a wheelhouse with pip download: an offline node has no index (the
        command += ["--ignore", os.path.join("tests", "test_offline_setup.py")]  # check's own set-up did that for real)
    try:
        import xdist  # noqa: F401
    except ImportError:
        return command
    return command + ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]


def sweep_command(iters: int, output_dir: str) -> List[str]:
    return [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", CONFIG,
            "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters), "OUTPUT_DIR", output_dir, *SWEEP]


def plan(iters: int, output_dir: str) -> List[str]:
    """One line per step: what it runs."""
    shown = lambda command: " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in command)  # noqa: E731
    return [
        f"cuda_tests: {shown(pytest_command('cuda'))}",
        f"suite: {shown(pytest_command('not cuda'))}",
        f"training: {CONFIG}, {iters} iterations after 2 untimed, methods single/usnet/mutualnet x "
        f"precisions {'/'.join(PRECISIONS)}, each in a fresh process on cuda (s/iteration, peak GPU memory)",
        f"sweep: {shown(sweep_command(iters, output_dir))}",
        f"inference: the sweep's model_final.pth at widths 1.0/0.75/0.5/0.25 x scales 1.0/0.6, slimmable, frozen "
        f"and stock Detectron2 (width 1.0), synchronised, 20 repeats",
    ]


def run_pytest(marker: str) -> Dict:
    start = time.perf_counter()
    # one thread per process, as tools/run_tests.sh: the tests' tensors are small, and workers share the cores
    result = subprocess.run(pytest_command(marker), cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    counts = {key: int(number) for number, key in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {"ok": result.returncode == 0, "summary": summary, "seconds": time.perf_counter() - start, **counts,
            "failures": [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]}


def training_step(iters: int, device: str) -> Dict:
    from .training import METHODS, training_benchmark

    on_cuda = device.startswith("cuda")  # float16 autocast is CUDA's (a CPU trial of this code skips it)
    table = {precision: {method: training_benchmark(os.path.join(REPO, CONFIG), method, iters, device, opts)
                         for method in METHODS}
             for precision, opts in PRECISIONS.items() if on_cuda or precision != "float16"}
    ratios = {precision: {name: {"time": rows["mutualnet"]["seconds_per_iter"] / rows[other]["seconds_per_iter"],
                                 "memory": rows["mutualnet"]["peak_memory_mb"] / rows[other]["peak_memory_mb"]}
                          for name, other in (("mutualnet/single", "single"), ("mutualnet/usnet", "usnet"))}
              for precision, rows in table.items()}
    return {"ok": True, "iters": iters, "seconds_per_iter_and_peak_mb": table, "ratios": ratios}


def sweep_step(iters: int, output_dir: str, device: str) -> Dict:
    """train_net.py as a user runs it; ok when it ran on `device`'s type (nobody named it) and
    swept the 4 configurations."""
    shutil.rmtree(output_dir, ignore_errors=True)  # a fresh training, not one resumed or mixed with an earlier check's
    start = time.perf_counter()
    result = subprocess.run(sweep_command(iters, output_dir), cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"ok": False, "seconds": seconds, "error": result.stderr[-3000:]}
    with open(os.path.join(output_dir, "inference", "shapes_val", "width_sweep.json")) as f:
        records = json.load(f)
    with open(os.path.join(output_dir, "config.yaml")) as f:
        model_device = yaml.safe_load(f)["MODEL"]["DEVICE"]  # as train_net.py resolved it
    return {"ok": model_device.split(":")[0] == device.split(":")[0] and len(records) == 4, "seconds": seconds,
            "model_device": model_device,
            "configurations": [{"width": r["width"], "resolution_scale": r["resolution_scale"], "gflops": r.get("gflops"),
                                "box_ap": r["bbox"]["AP"], "mask_ap": r.get("segm", {}).get("AP")} for r in records]}


def inference_step(output_dir: str, device: str) -> Dict:
    from .inference import inference_benchmark
    from .training import load_cfg

    cfg = load_cfg(os.path.join(REPO, CONFIG), ["MODEL.DEVICE", device, "OUTPUT_DIR", output_dir])
    rows, backbone = inference_benchmark(cfg, os.path.join(output_dir, "model_final.pth"), device, repeats=20)
    return {"ok": True, "rows": rows, "backbone": backbone}


def run_steps(steps, iters: int, device: str, output_dir: str, log: Callable[[str], None] = print,
              after_each: Callable[[Dict], None] = lambda results: None) -> Dict:
    """Each step's record (with "ok" and "seconds"); an exception becomes the step's error.
    `after_each(results so far)` runs after every step (the report is written each time: a check
    stopped half-way keeps what it measured)."""
    actions = {"cuda_tests": lambda: run_pytest("cuda"), "suite": lambda: run_pytest("not cuda"),
               "training": lambda: training_step(iters, device), "sweep": lambda: sweep_step(iters, output_dir, device),
               "inference": lambda: inference_step(output_dir, device)}
    results = {}
    for name in steps:
        log(f"[gpu_check] {name} ...")
        start = time.perf_counter()
        try:
            results[name] = actions[name]()
        except Exception as error:  # recorded; the other steps still run
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        results[name].setdefault("seconds", time.perf_counter() - start)
        log(f"[gpu_check] {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']:.0f} s")
        after_each(results)
    return results


def gpu_check_markdown(report: Dict) -> str:
    steps = report["steps"]
    lines = [f"# GPU check, {report['date']}", "",
             f"{report['device_name']}; torch {report['torch']}, CUDA {report['cuda']}; total {report['seconds']:.0f} s.", "",
             "| step | result | seconds |", "|---|---|---|"]
    for name, record in steps.items():
        error = (record.get("error") or "failed").strip().splitlines() or ["failed"]
        result = record.get("summary") or ("ok" if record["ok"] else error[-1][:200])  # one line: a table cell
        lines.append(f"| {name} | {result} | {record['seconds']:.0f} |")
    training = steps.get("training", {})
    if training.get("ok"):
        lines += ["", f"Training, {training['iters']} timed iterations (s/iteration, peak memory MiB: the CUDA allocator's on a GPU):", "",
                  "| precision | single | US-Net | MutualNet | MutualNet / single (time, memory) | MutualNet / US-Net (time, memory) |",
                  "|---|---|---|---|---|---|"]
        for precision, rows in training["seconds_per_iter_and_peak_mb"].items():
            cells = [f"{rows[m]['seconds_per_iter']:.3f} s, {rows[m]['peak_memory_mb']:.0f}" for m in ("single", "usnet", "mutualnet")]
            ratio = training["ratios"][precision]
            cells += [f"{ratio[k]['time']:.2f}, {ratio[k]['memory']:.2f}" for k in ("mutualnet/single", "mutualnet/usnet")]
            lines.append(f"| {precision} | " + " | ".join(cells) + " |")
    sweep = steps.get("sweep", {})
    if sweep.get("configurations"):
        lines += ["", f"Sweep after {report['iters']} MutualNet iterations (model on {sweep['model_device']}):", "",
                  "| width | scale | GFLOPs | box AP | mask AP |", "|---|---|---|---|---|"]
        lines += [f"| {c['width']:g} | {c['resolution_scale']:g} | {c['gflops']:.2f} | {c['box_ap']:.1f} | {c['mask_ap']:.1f} |"
                  for c in sweep["configurations"]]
    inference = steps.get("inference", {})
    if inference.get("ok"):
        lines += ["", "Inference, median ms (synchronised):", "",
                  "| width | scale | GFLOPs | slimmable | frozen | stock Detectron2 |", "|---|---|---|---|---|---|"]
        for row in inference["rows"]:
            stock = f"{row['stock_detectron2']['median_ms']:.1f}" if "stock_detectron2" in row else ""
            lines.append(f"| {row['width']:g} | {row['resolution_scale']:g} | {row['gflops']:.2f} | "
                         f"{row['slimmable']['median_ms']:.1f} | {row['frozen']['median_ms']:.1f} | {stock} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--iters", type=int, default=30, help="training iterations per measurement and for the sweep")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="a subset, in this order")
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to try the check's code")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args(argv)
    output_dir = os.path.join(tempfile.gettempdir(), "mutualnet_gpu_check")
    if args.dry_run:
        print(f"[gpu_check] plan (device {args.device}; report: {os.path.relpath(args.output, REPO)}/gpu_<date>.{{json,md}}):")
        for line in plan(args.iters, output_dir):
            if line.split(":")[0] in args.steps:
                print("  " + line)
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: the GPU check needs one (--dry-run prints its plan anywhere)")
    from .reports import new_report

    start = time.perf_counter()
    report = new_report(args.device, CONFIG, torch=torch.__version__, cuda=torch.version.cuda, iters=args.iters,
                        seconds=0.0, steps={})
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.join(args.output, f"gpu_{report['date']}" + ("" if args.device.startswith("cuda") else f"_{args.device}"))

    def write(steps):
        report.update(steps=steps, seconds=time.perf_counter() - start)
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(gpu_check_markdown(report))

    steps = run_steps(args.steps, args.iters, args.device, output_dir, after_each=write)
    print(gpu_check_markdown(report) + f"written to {os.path.relpath(stem, REPO)}.{{json,md}}")
    return 0 if all(record["ok"] for record in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
