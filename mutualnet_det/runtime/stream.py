"""A stream of images under a latency budget, with a background CPU load started part-way.

`run_stream` feeds images to a predictor (AdaptivePredictor, with a budget or a fixed policy) and
starts a `BackgroundLoad` (another process doing matrix multiplications) before a chosen frame;
`summarize_stream` counts the frames within the budget and the mean metric (e.g. box AP, from the
latency table) of the configurations used, over the whole stream and before / after the load, and
the configurations and torch thread counts used.
"""
import collections
import multiprocessing
import statistics
from dataclasses import asdict
from typing import Dict, Iterable, List, Sequence

from tqdm import tqdm


def _multiply_until_stopped(stop, ready, threads: int, size: int) -> None:
    import torch

    torch.set_num_threads(threads)
    matrix = torch.randn(size, size)
    ready.set()
    while not stop.is_set():
        matrix @ matrix


class BackgroundLoad:
    """Another process multiplying `size` x `size` float32 matrices on `threads` threads until
    stopped (a context manager; `start()` returns once the process is multiplying)."""

    def __init__(self, threads: int = 1, size: int = 512):
        context = multiprocessing.get_context("spawn")
        self.stop_event, self.ready_event = context.Event(), context.Event()
        self.process = context.Process(target=_multiply_until_stopped, daemon=True,
                                       args=(self.stop_event, self.ready_event, threads, size))

    def start(self) -> None:
        self.process.start()
        if not self.ready_event.wait(timeout=120):
            self.stop()
            raise RuntimeError("the background load process did not start within 120 s")

    def stop(self) -> None:
        self.stop_event.set()
        if self.process.pid is not None:
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def run_stream(predictor, images: Iterable, load: BackgroundLoad = None, load_from_frame: int = None,
               progress: bool = True) -> List:
    """Run `predictor` on each image; start `load` just before frame `load_from_frame` (its start-up
    is not inside any frame's time) and stop it at the end. Returns the predictor's frames."""
    try:
        for index, image in enumerate(tqdm(images, desc="stream", disable=not progress)):
            if load is not None and index == load_from_frame:
                load.start()
            predictor(image)
    finally:
        if load is not None:
            load.stop()
    return predictor.frames


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize_stream(frames: Sequence, budget_ms: float, load_from_frame: int) -> Dict:
    """Share of frames within the budget and mean metric of the configurations used: overall,
    before the load and with it; switches and their median cost; frames with the load until the
    first one within the budget; frames per torch thread count and per configuration."""
    parts = {"all": list(frames), "before_load": [f for f in frames if f.index < load_from_frame],
             "with_load": [f for f in frames if f.index >= load_from_frame]}
    summary = {"budget_ms": budget_ms, "frames": len(frames), "load_from_frame": load_from_frame}
    for name, part in parts.items():
        summary[name] = {"frames": len(part),
                         "within_budget": _share([f.within_budget for f in part]),
                         "mean_metric": _mean([f.metric_value for f in part]),
                         "median_ms": statistics.median([f.latency_ms for f in part]) if part else float("nan")}
    switches = [f for f in frames if f.switched]
    summary["switches"] = len(switches)
    summary["median_switch_ms"] = statistics.median([f.switch_ms for f in switches]) if switches else None
    first_within = next((i for i, f in enumerate(parts["with_load"]) if f.within_budget), None)
    summary["frames_with_load_before_first_within"] = first_within
    threads_used = collections.Counter(f.threads for f in frames)
    summary["threads_used"] = dict(sorted(threads_used.items()))
    # keys name the thread count only when it changed during the stream
    summary["configurations_used"] = dict(collections.Counter(
        f"w{f.width:g}_s{f.resolution_scale:g}" + (f"_t{f.threads}" if len(threads_used) > 1 else "") for f in frames))
    return summary


def frame_rows(frames: Sequence) -> List[Dict]:
    return [asdict(f) for f in frames]
