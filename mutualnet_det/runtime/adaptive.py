"""Runtime adaptation: keep to a latency budget by moving along a measured latency front.

`AdaptivePredictor` is used like Detectron2's `DefaultPredictor` (one BGR image in, the model's
outputs in original image coordinates out). Before each image it runs the configuration its
policy chose; it times the whole call (switch, resize, model; synchronised on CUDA) and tells the
policy. A switch sets the width and loads the banked BN statistics of that (width, scale), and on
the CPU sets torch's thread count when the configuration was timed at another: no weights are
reloaded and nothing is calibrated, so a switch costs about one BN state copy. Two costs of a
switch land in the next model call and are counted in the frame's time, not in its switch_ms: the
thread pool's resize (in the first parallel region), and, with MUTUALNET.TEST.FOLD_NORMS, folding
the new statistics into the convolutions' cached weights (on the main job's model, one CPU thread:
about 7 ms at width 1.0, 2 ms at 0.25, some 5-9% of a call).

`BudgetPolicy` decides from the measured times alone. Its one estimate is the device's current
load: measured ms / the table's ms for the running configuration (1 when the device is as idle as
when the table was profiled). A configuration's predicted time is its table time x that load.
- Down, quickly: when the median of the recent frames exceeds the budget, jump to the best front
  configuration predicted within the budget (at least one step down).
- Up, cautiously: one step, after the recent median has predicted the next configuration within
  `headroom` x budget for `patience` consecutive frames.
The gap between `headroom` x budget (to go up) and the budget (to come down) is the hysteresis:
at a steady load a configuration reached by going up is predicted well inside the budget, and the
one reached by going down is the best predicted within it, whose successor is predicted over it,
so neither move is followed by its reverse.

On a CPU the torch thread count is a third knob. With every core running one of torch's threads,
another process busy on one core slows each parallel region to the pace of the thread sharing
that core (2.5-3x slower at 2 threads on the 2-core study machine, 1.0-1.4x at 1 thread); one
load factor over one front cannot see that. So with a table profiled at several thread counts,
`ThreadChoice` picks the count from how many cores other processes keep busy (`CpuContention`),
and the budget policy restarts on that count's front.
"""
import collections
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..benchmark.timing import synchronize
from .contention import CpuContention
from ..data.rescale import scaled_test_input
from ..evaluation.query_table import best_config, metric_of
from .latency import (apply_configuration, check_banked, configuration_of, describe, fronts_by_threads, model_device, slimmable_setting,
                      threads_of)

logger = logging.getLogger(__name__)


class BudgetPolicy:
    """Which configuration of a latency front (records with `latency_ms`) to run next.

    window: recent frames whose median is compared with the budget; a decision to go down needs
        at least window // 2 + 1 frames measured at the running configuration, so after a
        slowdown at most that many frames exceed the budget before the switch.
    patience: consecutive frames of room for the next configuration before stepping up.
    headroom: the next configuration must be predicted within headroom x budget to step up.
    start: the record to start at; default the best configuration under the budget at the table's
        own times (the device as loaded as when profiled).
    """

    def __init__(self, front: Sequence[Dict], budget_ms: float, *, window: int = 5, patience: int = 10,
                 headroom: float = 0.85, metric=("bbox", "AP"), start: Dict = None):
        if not budget_ms > 0:
            raise ValueError(f"latency budget must be a positive number of milliseconds, got {budget_ms}")
        if window < 1 or patience < 1 or not 0 < headroom <= 1:
            raise ValueError(f"need window >= 1, patience >= 1 and 0 < headroom <= 1 "
                             f"(got {window}, {patience}, {headroom})")
        self.front = sorted(front, key=lambda r: r["latency_ms"])
        self.budget_ms, self.window, self.patience, self.headroom = float(budget_ms), window, patience, headroom
        self.metric = metric
        self.min_samples = window // 2 + 1
        self.recent = collections.deque(maxlen=window)
        self.frames_with_room = 0
        if start is None:
            start = best_config(self.front, max_ms=budget_ms, metric=metric)
        self.index = self.front.index(start)

    def with_front(self, front: Sequence[Dict]) -> "BudgetPolicy":
        """A new policy with this budget and these parameters over another front (another torch
        thread count's), starting as a new policy does; when even the front's cheapest is over the
        budget at the table's times it starts there instead of refusing: the budget was accepted
        for the front the predictor started on, and the cheapest of a front that suits the device
        better is still the best move."""
        fitting = [r for r in front if r["latency_ms"] <= self.budget_ms]
        start = best_config(fitting, max_ms=self.budget_ms, metric=self.metric) if fitting \
            else min(front, key=lambda r: r["latency_ms"])
        return BudgetPolicy(front, self.budget_ms, window=self.window, patience=self.patience, headroom=self.headroom,
                            metric=self.metric, start=start)

    @property
    def current(self) -> Dict:
        return self.front[self.index]

    def load(self) -> float:
        """How much slower than in the table the device runs now (median of the recent frames)."""
        return statistics.median(self.recent) / self.current["latency_ms"]

    def observe(self, measured_ms: float) -> bool:
        """Record one frame's time at the current configuration; True when the next frame will run
        another configuration."""
        self.recent.append(measured_ms)
        if len(self.recent) < self.min_samples:
            return False
        load = self.load()
        if statistics.median(self.recent) > self.budget_ms and self.index > 0:
            fitting = [i for i in range(self.index) if self.front[i]["latency_ms"] * load <= self.budget_ms]
            return self._move_to(max(fitting, default=0))
        if self.index + 1 < len(self.front) and \
                self.front[self.index + 1]["latency_ms"] * load <= self.headroom * self.budget_ms:
            self.frames_with_room += 1
            if self.frames_with_room >= self.patience:
                return self._move_to(self.index + 1)
        else:
            self.frames_with_room = 0
        return False

    def _move_to(self, index: int) -> bool:
        self.index = index
        self.recent.clear()  # times measured at the old configuration say nothing about the new one
        self.frames_with_room = 0
        return True


class ThreadChoice:
    """Which of the profiled torch thread counts to run, from how many cores other processes keep busy.

    The choice for one reading: the largest profiled count <= max(1, cores - the others' busy cores
    rounded half up), or the smallest profiled count when none is that small. The running count
    `current` changes only after `frames_to_change` consecutive readings chose the same other
    count: one reading is coarse (clock ticks), and each change restarts the budget policy.
    """

    def __init__(self, thread_counts: Sequence[int], cores: int, current: int, *, frames_to_change: int = 3):
        if frames_to_change < 1 or cores < 1:
            raise ValueError(f"need frames_to_change >= 1 and cores >= 1 (got {frames_to_change}, {cores})")
        self.thread_counts = sorted(thread_counts)
        self.cores, self.current, self.frames_to_change = cores, current, frames_to_change
        self.candidate, self.frames_agreeing = current, 0

    def fitting(self, others_busy_cores: float) -> int:
        free_cores = max(1, self.cores - math.floor(others_busy_cores + 0.5))
        return max((count for count in self.thread_counts if count <= free_cores), default=self.thread_counts[0])

    def observe(self, others_busy_cores: float) -> bool:
        """Record one reading (before a frame); True when `current` changed, for this frame on."""
        choice = self.fitting(others_busy_cores)
        if choice == self.current:
            self.frames_agreeing = 0
            return False
        self.frames_agreeing = self.frames_agreeing + 1 if choice == self.candidate else 1
        self.candidate = choice
        if self.frames_agreeing < self.frames_to_change:
            return False
        self.current, self.frames_agreeing = choice, 0
        return True


def thread_adaptation_off_because(device: torch.device, policy, contention) -> str:
    """Why the thread count cannot follow other processes' load here ("" when it can)."""
    if device.type != "cpu":
        return f"the model runs on {device.type}, where torch's CPU threads do not set its speed"
    if not hasattr(policy, "with_front"):
        return f"a {type(policy).__name__} does not move between fronts"
    if contention is None:
        return "this system has no readable /proc/stat to measure other processes' load with"
    return ""


class FixedPolicy:
    """Always one configuration: the baseline a budget policy is compared with."""

    def __init__(self, record: Dict):
        self.current = record
        self.front = [record]

    def observe(self, measured_ms: float) -> bool:
        return False


class Stopwatch:
    """Milliseconds since `start()`, read after the device has finished its queued work."""

    def __init__(self, device, clock: Callable[[], float] = time.perf_counter):
        self.device, self.clock = device, clock
        self._started = None

    def start(self) -> None:
        synchronize(self.device)
        self._started = self.clock()

    def elapsed_ms(self) -> float:
        synchronize(self.device)
        return (self.clock() - self._started) * 1000


@dataclass
class Frame:
    index: int
    width: float
    resolution_scale: float
    threads: int  # torch intra-op threads the frame ran at
    latency_ms: float  # the whole call: switch (if any), resize, model
    switch_ms: float  # setting the thread count and width, loading banked BN statistics (re-folding them: in the model call); 0 when already set
    switched: bool  # this frame runs another configuration (width, scale or thread count) than the previous one
    within_budget: bool
    metric_value: float  # the running configuration's metric (e.g. box AP) in the latency table


class AdaptivePredictor:
    """DefaultPredictor-like: `predictor(image_bgr)` -> the model's outputs (in original image
    coordinates) at the configuration its policy chose for a latency budget in milliseconds.

    latency_table: a table from `mutualnet_det.runtime.latency.profile_latency` (or load_latency_table),
        measured on the device the model runs on with the same model and weights.
    policy: defaults to `BudgetPolicy(table["front"], budget_ms)`; any object with `current`
        (a table record), `front` (every record it may choose) and `observe(ms)`; to follow other
        processes' load across thread counts also `with_front(front)` (as BudgetPolicy).
    clock: seconds as a float; injectable so tests can simulate time.
    contention: an object with `cores` and `others_busy_cores()` (default: `CpuContention` of this
        machine); injectable so tests can simulate other processes.
    thread_change_frames: consecutive frames that must choose the same other thread count before
        it changes (`ThreadChoice`).
    `frames` holds one `Frame` per call; `last` the latest.

    Each record runs at the torch thread count it was timed at (`threads_of`), set with
    torch.set_num_threads. With a table profiled at several counts, a model on the CPU and a policy
    with `with_front`, the count also follows other processes' load: before each frame
    `ThreadChoice` reads `contention`, and when it changes the count the policy restarts on that
    count's front. torch's thread count is process-wide: the predictor owns it while it runs and
    does not restore it.
    """

    def __init__(self, cfg, model: nn.Module, latency_table: Dict, budget_ms: float, *, policy=None,
                 clock: Callable[[], float] = time.perf_counter, contention=None, thread_change_frames: int = 3):
        self.cfg, self.model = cfg, model.eval()
        self.input_format = cfg.INPUT.FORMAT
        self.budget_ms = float(budget_ms)
        self.table = latency_table
        self.metric = tuple(latency_table["metric"])
        self.policy = policy or BudgetPolicy(latency_table["front"], budget_ms, metric=self.metric)
        setting = slimmable_setting(model)
        if latency_table["setting"] != setting:
            raise ValueError(f"the latency table was measured with a {latency_table['setting']} slimmable model, "
                             f"this model is {setting}: profile it again (tools/profile_latency.py)")
        device = model_device(model)
        self.on_cpu = device.type == "cpu"  # elsewhere torch's CPU thread count is left alone
        if latency_table["device"] != str(device):
            logger.warning(f"latency table measured on {latency_table['device']}, model runs on {device}: "
                           "its times may not hold; profile on this device")
        self.thread_fronts = fronts_by_threads(latency_table)
        if contention is None and device.type == "cpu" and len(self.thread_fronts) > 1:
            contention = CpuContention.on_this_system()
        self.contention = contention
        self.thread_choice = self._thread_choice(device, thread_change_frames)
        runnable = self.policy.front + ([r for front in self.thread_fronts.values() for r in front]
                                        if self.thread_choice else [])
        check_banked(model, list(dict.fromkeys(configuration_of(r) for r in runnable)))
        self.stopwatch = Stopwatch(device, clock)
        self.running = None  # (configuration, threads) whose width, BN statistics, proposals and threads are set
        self.frames: List[Frame] = []

    def _thread_choice(self, device, frames_to_change: int) -> Optional[ThreadChoice]:
        """The thread count chooser, or None when the table has one count or the count cannot
        follow other processes' load here (the reason is logged)."""
        if len(self.thread_fronts) == 1:
            return None
        counts = list(self.thread_fronts)
        off_because = thread_adaptation_off_because(device, self.policy, self.contention)
        if off_because:
            logger.info(f"thread adaptation off: {off_because}; each frame runs at its record's thread count")
            return None
        logger.info(f"thread adaptation on: torch thread counts {counts} on {self.contention.cores} cores; "
                    f"a change after {frames_to_change} frames agreeing")
        return ThreadChoice(counts, self.contention.cores, threads_of(self.policy.current, self.table),
                            frames_to_change=frames_to_change)

    @property
    def last(self) -> Frame:
        return self.frames[-1]

    def _follow_contention(self) -> None:
        """Move the policy to another thread count's front when other processes' load asks for it."""
        if self.thread_choice is None or not self.thread_choice.observe(self.contention.others_busy_cores()):
            return
        threads = self.thread_choice.current
        self.policy = self.policy.with_front(self.thread_fronts[threads])
        logger.info(f"other processes' load changed: {threads} torch thread(s) from here, "
                    f"starting at {describe(configuration_of(self.policy.current))}")

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray) -> Dict:
        self.stopwatch.start()
        self._follow_contention()
        record = self.policy.current
        configuration = configuration_of(record)
        width, scale, _ = configuration
        threads = threads_of(record, self.table)
        switch_ms, switched = 0.0, self.running is not None and self.running != (configuration, threads)
        if self.running != (configuration, threads):
            switch_started_ms = self.stopwatch.elapsed_ms()
            if self.on_cpu and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)  # the pool resizes in the next parallel region: model time
            apply_configuration(self.model, configuration)  # banked statistics only (checked at start)
            switch_ms = self.stopwatch.elapsed_ms() - switch_started_ms
            if switched:
                logger.debug(f"switched to {describe(configuration)}, {threads} thread(s), in {switch_ms:.2f} ms")
            self.running = (configuration, threads)
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        predictions = self.model([scaled_test_input(image, self.cfg, scale)])[0]
        latency_ms = self.stopwatch.elapsed_ms()
        self.frames.append(Frame(len(self.frames), width, scale, threads, latency_ms, switch_ms, switched,
                                 latency_ms <= self.budget_ms, metric_of(record, self.metric)))
        self.policy.observe(latency_ms)
        return predictions
