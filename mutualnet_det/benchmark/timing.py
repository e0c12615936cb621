"""Latency and training-cost measurements (device-agnostic: synchronised timing, warm-up,
median and spread of repeats). Used by tools/benchmark.py; ratios, not absolute numbers, are
the point: they are measured in one run on one machine."""
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict

import torch


def cpu_description() -> str:
    """The CPU as reports name it (kind and core count): absolute timings compare only on one machine."""
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], object], device, warmup: int = 2, repeats: int = 7) -> Dict[str, float]:
    """Median and spread (min, max, interquartile range) of `function()` in milliseconds."""
    for _ in range(warmup):
        function()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "iqr_ms": quartiles[2] - quartiles[0], "repeats": repeats}


def peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA allocator peak on CUDA, max resident set size on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(report: Dict, output: str, prefix: str, to_markdown: Callable[[Dict], str]) -> str:
    """<output>/<prefix><device type>_<date>.{json,md} (report needs "device" and "date"); prints
    the Markdown and returns the stem."""
    os.makedirs(output, exist_ok=True)
    stem = os.path.join(output, f"{prefix}{report['device'].split(':')[0]}_{report['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = to_markdown(report)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"written to {stem}.json and {stem}.md")
    return stem
