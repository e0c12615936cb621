"""Training cost: seconds per iteration and peak memory of a method, each measured in a fresh
Python process.

A fresh process per measurement keeps the peak memory clean (the CPU's peak is the process's
maximum resident set size, which never goes down, and the CUDA allocator's peak is per process)
and keeps one method's caches and allocator state out of the next one's time. `training_benchmark`
starts that process as

    python -m mutualnet_det.benchmark.training --config-file X --method M --iters N --device D [KEY VALUE ...]

which prints one JSON line: {"seconds_per_iter", "peak_memory_mb"}. The other functions here
repeat it over methods and settings (precision, RoI pooling, slimmable heads) for the reports of
tools/benchmark.py.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

METHODS = ("single", "usnet", "mutualnet")  # the order of every training table
WARMUP_ITERS = 2  # untimed iterations first: allocator growth, lazy initialisation, first-call overheads


def load_cfg(path: str, opts: Sequence = ()):
    """Detectron2's defaults with the MUTUALNET node, then the config file, then `opts` (KEY,
    VALUE, ... in order; later ones win). Neither validated nor frozen: the benchmarks change keys
    after loading."""
    from detectron2.config import get_cfg

    from ..config import add_mutualnet_config

    cfg = get_cfg()
    add_mutualnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def benchmark_overrides(method: str, device: str, opts: Sequence = ()) -> List:
    """The KEY, VALUE overrides of one training measurement: the method and device, a scratch
    OUTPUT_DIR per method, data loading in the timed process (no worker processes whose memory
    and time would not be counted), then `opts`."""
    return ["MUTUALNET.TRAIN.METHOD", method, "MODEL.DEVICE", device,
            "OUTPUT_DIR", os.path.join(tempfile.gettempdir(), f"mutualnet_benchmark_{method}"),
            "DATALOADER.NUM_WORKERS", 0, *opts]


def measure_training(cfg, iters: int) -> Dict[str, float]:
    """In this process: WARMUP_ITERS untimed training steps of `cfg`, then `iters` timed ones
    (synchronised on CUDA). Returns seconds per timed iteration and this process's peak memory
    in MB (see `timing.peak_memory_mb`; meaningful only in a process that ran nothing else)."""
    from detectron2.utils.events import EventStorage

    from ..engine.trainer import MutualNetTrainer
    from .timing import peak_memory_mb, synchronize

    step = MutualNetTrainer(cfg)._trainer  # the sandwich run_step, without the hooks (no checkpoints, no eval)
    device = cfg.MODEL.DEVICE
    with EventStorage(0):
        for iteration in range(WARMUP_ITERS):
            step.iter = iteration
            step.run_step()
        synchronize(device)
        start = time.perf_counter()
        for iteration in range(WARMUP_ITERS, WARMUP_ITERS + iters):
            step.iter = iteration
            step.run_step()
        synchronize(device)
    return {"seconds_per_iter": (time.perf_counter() - start) / iters, "peak_memory_mb": peak_memory_mb(device)}


def training_benchmark(config_file: str, method: str, iters: int, device: str, opts: Sequence = ()) -> Dict[str, float]:
    """Seconds per iteration and peak memory (MB) of one method, in a fresh process (clean peak);
    `opts`: further KEY, VALUE config overrides. Raises RuntimeError with the end of the child's
    stderr when it fails."""
    import mutualnet_det

    command = [sys.executable, "-m", "mutualnet_det.benchmark.training", "--config-file", config_file,
               "--method", method, "--iters", str(iters), "--device", device, *map(str, opts)]
    # the child imports the same mutualnet_det as this process, wherever it is started from
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mutualnet_det.__file__)))
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def precision_benchmark(config_file: str, iters: int, device: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{method: {"float32" | "amp": training_benchmark}}: each method with SOLVER.AMP.ENABLED off
    and on (bfloat16 on CPU, float16 on CUDA), each in a fresh process."""
    return {method: {precision: training_benchmark(config_file, method, iters, device,
                                                   ["SOLVER.AMP.ENABLED", precision != "float32"])
                     for precision in ("float32", "amp")}
            for method in METHODS}


def roi_align_benchmark(config_file: str, iters: int, device: str, rounds: int = 2) -> Dict[str, Dict[str, List[Dict]]]:
    """{method: {MUTUALNET.CPU_ROI_ALIGN: [training_benchmark per round]}}: each method with each
    RoI pooling, each in a fresh process, the implementations alternated `rounds` times (a noisy
    machine slows neighbouring measurements alike, so alternation keeps the comparison fair)."""
    from ..config import CPU_ROI_ALIGNS

    report = {method: {impl: [] for impl in CPU_ROI_ALIGNS} for method in METHODS}
    for method, rounds_of in report.items():
        for _ in range(rounds):
            for impl, times in rounds_of.items():
                times.append(training_benchmark(config_file, method, iters, device, ["MUTUALNET.CPU_ROI_ALIGN", impl]))
    return report


def heads_training_benchmark(config_file: str, iters: int, device: str) -> Dict[str, Dict[str, float]]:
    """Single-width and MutualNet iterations with slimmable heads (MUTUALNET.SLIMMABLE_HEADS), and
    MutualNet with backbone-only slimming, each in a fresh process."""
    heads = ["MUTUALNET.SLIMMABLE_HEADS", "True"]
    return {"single": training_benchmark(config_file, "single", iters, device, heads),
            "mutualnet_slimmable_heads": training_benchmark(config_file, "mutualnet", iters, device, heads),
            "mutualnet_backbone_only": training_benchmark(config_file, "mutualnet", iters, device)}


def main(argv=None) -> None:
    """The child process of `training_benchmark`: prints the measurement as one JSON line."""
    parser = argparse.ArgumentParser(description="one training-cost measurement (see the module docstring)")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--iters", type=int, required=True, help="timed iterations, after the warm-up ones")
    parser.add_argument("--device", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_cfg(args.config_file, benchmark_overrides(args.method, args.device, args.opts))
    print(json.dumps(measure_training(cfg, args.iters)))


if __name__ == "__main__":
    main()
