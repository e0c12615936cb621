"""Runtime adaptation: keep to a latency budget by moving along a measured latency front.

`AdaptivePredictor` is used like Detectron2's `DefaultPredictor` (one BGR image in, the model's
outputs in original image coordinates out). Before each image it runs the configuration its
policy chose; it times the whole call (switch, resize, model; synchronised on CUDA) and tells the
policy. A switch sets the width and loads the banked BN statistics of that (width, scale): no
weights are reloaded and nothing is calibrated, so a switch costs about one BN state copy.

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
"""
import collections
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn

from .benchmark import synchronize
from .bn_calibration import use_configuration
from .data.rescale import scaled_test_input
from .evaluation.query_table import best_config, metric_of
from .latency import check_banked, configuration_of, describe, model_device, slimmable_setting

logger = logging.getLogger(__name__)


class BudgetPolicy:
    """Which configuration of a latency front (records with `latency_ms`) to run next.

    window: recent frames whose median is compared with the budget; a decision to go down needs
        at least window // 2 + 1 frames measured at the running configuration, so after a
        slowdown at most that many frames exceed the budget before the switch.
    patience: consecutive frames of room for the next configuration before stepping up.
    headroom: the next configuration must be predicted within headroom x budget to step up.
    """

    def __init__(self, front: Sequence[Dict], budget_ms: float, *, window: int = 5, patience: int = 10,
                 headroom: float = 0.85, metric=("bbox", "AP")):
        if not budget_ms > 0:
            raise ValueError(f"latency budget must be a positive number of milliseconds, got {budget_ms}")
        if window < 1 or patience < 1 or not 0 < headroom <= 1:
            raise ValueError(f"need window >= 1, patience >= 1 and 0 < headroom <= 1 "
                             f"(got {window}, {patience}, {headroom})")
        self.front = sorted(front, key=lambda r: r["latency_ms"])
        self.budget_ms, self.patience, self.headroom = float(budget_ms), patience, headroom
        self.min_samples = window // 2 + 1
        self.recent = collections.deque(maxlen=window)
        self.frames_with_room = 0
        # the best configuration under the budget at the table's own times (the device as loaded as when profiled)
        self.index = self.front.index(best_config(self.front, max_ms=budget_ms, metric=metric))

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
    latency_ms: float  # the whole call: switch (if any), resize, model
    switch_ms: float  # setting the width and loading banked BN statistics; 0 when already loaded
    switched: bool  # this frame runs another configuration than the previous one
    within_budget: bool
    metric_value: float  # the running configuration's metric (e.g. box AP) in the latency table


class AdaptivePredictor:
    """DefaultPredictor-like: `predictor(image_bgr)` -> the model's outputs (in original image
    coordinates) at the configuration its policy chose for a latency budget in milliseconds.

    latency_table: a table from `mutualnet_det.latency.profile_latency` (or load_latency_table),
        measured on the device the model runs on with the same model and weights.
    policy: defaults to `BudgetPolicy(table["front"], budget_ms)`; any object with `current`
        (a table record), `front` (every record it may choose) and `observe(ms)`.
    clock: seconds as a float; injectable so tests can simulate time.
    `frames` holds one `Frame` per call; `last` the latest.
    """

    def __init__(self, cfg, model: nn.Module, latency_table: Dict, budget_ms: float, *, policy=None,
                 clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.model = cfg, model.eval()
        self.input_format = cfg.INPUT.FORMAT
        self.budget_ms = float(budget_ms)
        self.metric = tuple(latency_table["metric"])
        self.policy = policy or BudgetPolicy(latency_table["front"], budget_ms, metric=self.metric)
        setting = slimmable_setting(model)
        if latency_table["setting"] != setting:
            raise ValueError(f"the latency table was measured with a {latency_table['setting']} slimmable model, "
                             f"this model is {setting}: profile it again (tools/profile_latency.py)")
        device = model_device(model)
        if latency_table["device"] != str(device):
            logger.warning(f"latency table measured on {latency_table['device']}, model runs on {device}: "
                           "its times may not hold; profile on this device")
        check_banked(model, [configuration_of(r) for r in self.policy.front])
        self.stopwatch = Stopwatch(device, clock)
        self.running = None  # (width, scale) whose width and BN statistics are loaded
        self.frames: List[Frame] = []

    @property
    def last(self) -> Frame:
        return self.frames[-1]

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray) -> Dict:
        record = self.policy.current
        width, scale = configuration_of(record)
        self.stopwatch.start()
        switch_ms, switched = 0.0, self.running is not None and self.running != (width, scale)
        if self.running != (width, scale):
            use_configuration(self.model, width, scale)  # banked statistics only (checked at start)
            switch_ms = self.stopwatch.elapsed_ms()
            if switched:
                logger.debug(f"switched to {describe((width, scale))} in {switch_ms:.2f} ms")
            self.running = (width, scale)
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        predictions = self.model([scaled_test_input(image, self.cfg, scale)])[0]
        latency_ms = self.stopwatch.elapsed_ms()
        self.frames.append(Frame(len(self.frames), width, scale, latency_ms, switch_ms, switched,
                                 latency_ms <= self.budget_ms, metric_of(record, self.metric)))
        self.policy.observe(latency_ms)
        return predictions
