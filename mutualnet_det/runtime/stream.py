"""A stream of images under a latency budget, with a background CPU load started part-way.

`run_stream` feeds images to a predictor (AdaptivePredictor, with a budget or a fixed policy) and
starts a `BackgroundLoad` (another process doing matrix multiplications) before a chosen frame;
`summarize_stream` counts the frames within the budget and the mean metric (e.g. box AP, from the
latency table) of the configurations used, over the whole stream and before / after the load, and
the configurations and torch thread counts used.

`stream_benchmark` runs that stream twice, with AdaptivePredictor under a budget and with the
fixed full configuration (width 1.0, scale 1.0 at the table's largest thread count: the usual
deployment), and `stream_markdown` reads its report (tools/adaptive_stream_benchmark.py).
"""
import collections
import datetime
import itertools
import math
import multiprocessing
import os
import statistics
from dataclasses import asdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from tqdm import tqdm

from ..benchmark.reports import shown_path
from .latency import configuration_of, fronts_by_threads, threads_of, validation_images

FULL_CONFIGURATION = (1.0, 1.0)  # (width, resolution scale) of the fixed baseline
BUDGET_HEADROOM = 1.2  # default budget: the full configuration's table time x this (20% headroom)
WARMUP_IMAGES = 5  # untimed frames per thread count before the streams


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


def full_configuration(table: Dict, threads: int) -> Optional[Dict]:
    """The table's width 1.0 / scale 1.0 record timed at `threads` torch threads, with the most
    proposals where several counts were profiled (the config's own when not a knob), or None."""
    full = [r for r in table["configurations"]
            if configuration_of(r)[:2] == FULL_CONFIGURATION and threads_of(r, table) == threads]
    return max(full, key=lambda r: r.get("proposals") or math.inf, default=None)


def default_budget_ms(table: Dict) -> float:
    """BUDGET_HEADROOM x the table's time (ms) of width 1.0 / scale 1.0 at its largest thread
    count, to 0.1 ms: a budget sized for the full model on an idle device."""
    return round(BUDGET_HEADROOM * fixed_baseline(table)["latency_ms"], 1)


def fixed_baseline(table: Dict, table_path: str = None) -> Dict:
    """The record the fixed stream runs: width 1.0 / scale 1.0 at the table's largest thread
    count. ValueError (naming `table_path` when given) when the table has none."""
    threads = list(fronts_by_threads(table))[-1]
    full = full_configuration(table, threads)
    if full is None:
        name = "the latency table" + (f" {table_path!r}" if table_path else "")
        raise ValueError(f"{name} has no width 1.0 / scale 1.0 configuration at {threads} threads to compare with")
    return full


def stream_benchmark(cfg, model, table: Dict, table_path: str, budget_ms: float = None, frames: int = 160,
                     load_threads: int = 1, load_size: int = 512,
                     make_load: Callable[[int, int], BackgroundLoad] = BackgroundLoad) -> Dict:
    """The adaptive stream report: `frames` validation images (cycled) through AdaptivePredictor
    (key "adaptive") and through the fixed full configuration at the table's largest thread count
    ("fixed_w1.0_s1.0"), each with `make_load(load_threads, load_size)` started before frame
    frames // 2; budget_ms defaults to `default_budget_ms`. Before the streams, WARMUP_IMAGES
    untimed frames at the full configuration of every thread count the streams may use.

    Returns {date, device, device_name, setting, table, weights, metric, table_threads, budget_ms,
    frames, load_from_frame, load_threads, load_size, summaries: {name: summarize_stream},
    per_frame: {name: frame_rows}, load_average_at_start: {name: os.getloadavg() (1, 5, 15 min)}}."""
    from .adaptive import AdaptivePredictor, FixedPolicy

    table_threads = list(fronts_by_threads(table))
    full = fixed_baseline(table, table_path)
    budget_ms = budget_ms or default_budget_ms(table)
    images = validation_images(cfg)
    stream = list(itertools.islice(itertools.cycle(images), frames))
    load_from_frame = frames // 2
    for threads in table_threads:  # untimed, at every thread count the streams may use
        warm_up = AdaptivePredictor(cfg, model, table, budget_ms, policy=FixedPolicy(full_configuration(table, threads) or full))
        for image in images[:WARMUP_IMAGES]:
            warm_up(image)
    runs = {"adaptive": AdaptivePredictor(cfg, model, table, budget_ms),
            "fixed_w1.0_s1.0": AdaptivePredictor(cfg, model, table, budget_ms, policy=FixedPolicy(full))}
    report = {"date": datetime.date.today().isoformat(), "device": table["device"], "device_name": table["device_name"],
              "setting": table["setting"],
              "table": shown_path(table_path), "weights": shown_path(cfg.MODEL.WEIGHTS),
              "metric": table["metric"], "table_threads": table_threads, "budget_ms": budget_ms, "frames": frames,
              "load_from_frame": load_from_frame, "load_threads": load_threads, "load_size": load_size}
    return {**report, **run_streams(runs, stream, budget_ms, load_from_frame, lambda: make_load(load_threads, load_size))}


def run_streams(runs: Dict, stream: Sequence, budget_ms: float, load_from_frame: int,
                make_load: Callable[[], BackgroundLoad]) -> Dict:
    """Each predictor of `runs` ({name: predictor}) over `stream`, a fresh load started before
    `load_from_frame`: {"summaries", "per_frame", "load_average_at_start"} by name."""
    result = {"summaries": {}, "per_frame": {}, "load_average_at_start": {}}
    for name, predictor in runs.items():
        tqdm.write(f"stream: {name}")
        result["load_average_at_start"][name] = os.getloadavg()  # other work on the machine (1, 5, 15 min)
        run = run_stream(predictor, stream, make_load(), load_from_frame)
        result["summaries"][name] = summarize_stream(run, budget_ms, load_from_frame)
        result["per_frame"][name] = frame_rows(run)
    return result


def exported_stream_benchmark(predictors: Dict, table: Dict, images: Sequence, budget_ms: float = None,
                              frames: int = 160, load_threads: int = 1, load_size: int = 512,
                              make_load: Callable[[int, int], BackgroundLoad] = BackgroundLoad) -> Dict:
    """stream_benchmark for exported configurations (runtime/exported.py): ExportedAdaptivePredictor
    under the budget ("adaptive") and the fixed width 1.0 / scale 1.0 export ("fixed_w1.0_s1.0"),
    on `images` cycled, with the same load, warm-up and report."""
    from .adaptive import FixedPolicy
    from .exported import ExportedAdaptivePredictor

    full = fixed_baseline(table)
    budget_ms = budget_ms or default_budget_ms(table)
    warm_up = ExportedAdaptivePredictor(predictors, table, budget_ms, policy=FixedPolicy(full))
    for image in images[:WARMUP_IMAGES]:
        warm_up(image)
    runs = {"adaptive": ExportedAdaptivePredictor(predictors, table, budget_ms),
            "fixed_w1.0_s1.0": ExportedAdaptivePredictor(predictors, table, budget_ms, policy=FixedPolicy(full))}
    report = {"date": datetime.date.today().isoformat(), "device": table["device"], "device_name": table["device_name"],
              "setting": table["setting"], "metric": table["metric"], "table_threads": list(fronts_by_threads(table)),
              "budget_ms": budget_ms, "frames": frames, "load_from_frame": frames // 2, "load_threads": load_threads,
              "load_size": load_size}
    stream = list(itertools.islice(itertools.cycle(images), frames))
    return {**report, **run_streams(runs, stream, budget_ms, frames // 2, lambda: make_load(load_threads, load_size))}


def _counts(counts: Dict) -> str:
    return ", ".join(f"{key}: {count}" for key, count in counts.items())


def stream_markdown(report: Dict) -> str:
    """The stream report as Markdown: the setting, one row per predictor (share of frames within
    the budget, mean metric, median ms with the load, switches, frames per thread count), the
    adaptive predictor's configurations, and the target (>= 90% within the budget where the fixed
    one keeps < 50%)."""
    what = report["setting"] if report["setting"].startswith("exported") else f"{report['setting']} slimmable model"
    lines = [f"# Adaptive stream {report['date']} on {report['device_name']} ({what})", "",
             f"{report['frames']} validation images (cycled); latency table profiled at torch thread count(s) "
             f"{', '.join(map(str, report['table_threads']))}; budget {report['budget_ms']:.1f} ms per frame; from frame "
             f"{report['load_from_frame']} another process multiplies {report['load_size']}x{report['load_size']} "
             f"matrices on {report['load_threads']} thread(s). AP: the {'.'.join(report['metric'])} of the configuration "
             "used, from the latency table (the sweep's value), averaged over frames. Load average (1, 5, 15 min) "
             f"when each stream started: "
             + ", ".join(f"{name} {' / '.join(f'{x:.2f}' for x in load)}" for name, load in report["load_average_at_start"].items())
             + ".", "",
             "| predictor | within budget (all) | before load | with load | mean AP (all) | before load | with load | median ms with load | switches | frames per thread count |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["summaries"].items():
        lines.append(f"| {name} | {s['all']['within_budget']:.1%} | {s['before_load']['within_budget']:.1%} | "
                     f"{s['with_load']['within_budget']:.1%} | {s['all']['mean_metric']:.2f} | "
                     f"{s['before_load']['mean_metric']:.2f} | {s['with_load']['mean_metric']:.2f} | "
                     f"{s['with_load']['median_ms']:.1f} | {s['switches']} | {_counts(s['threads_used'])} |")
    adaptive = report["summaries"]["adaptive"]
    lines += ["", f"Configurations used by the adaptive predictor: {_counts(adaptive['configurations_used'])}; median switch "
              f"{adaptive['median_switch_ms'] if adaptive['median_switch_ms'] is None else round(adaptive['median_switch_ms'], 2)} ms; "
              f"frames with the load before its first frame within the budget: {adaptive['frames_with_load_before_first_within']}.",
              "", "Target: >= 90% of frames within the budget for the adaptive predictor where the fixed one keeps < 50%: "
              f"{adaptive['all']['within_budget']:.1%} vs {report['summaries']['fixed_w1.0_s1.0']['all']['within_budget']:.1%}."]
    return "\n".join(lines) + "\n"
