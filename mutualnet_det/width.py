"""The width machinery, in one place: channel rounding, width validation, setting the width.

A slimmable network is an ordinary network whose layers can run on their first k channels. The
active width is one float in (0, 1] shared by every slimmable layer of a model; it is set only by
`set_width` (or the `using_width` context manager), never read from global state.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch.nn as nn

# Default (narrowest, widest) width of a slimmable model; the config key MUTUALNET.WIDTH_RANGE.
DEFAULT_WIDTH_RANGE = (0.25, 1.0)


def make_divisible(value: float, divisor: int = 8, min_value: int = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below `min_value` (default
    `divisor`) and never more than 10% below `value` (the MobileNet/slimmable-networks rule)."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Number of channels a layer with `channels` channels at width 1.0 keeps at `width`.

    The one rounding rule of the project. Width 1.0 keeps every channel. The official MutualNet
    ResNet rounds with divisor 1 (`MUTUALNET.CHANNEL_DIVISOR 1` reproduces it at any width); the
    default 8 agrees with it wherever channels * width is already a multiple of 8 (e.g. R-50 at
    widths 1.0, 0.75, 0.5 and 0.25), and keeps tensors aligned for fast kernels.
    """
    if width >= 1.0:
        return channels
    return min(channels, make_divisible(channels * width, divisor))


def validate_width(width: float, width_range: Tuple[float, float] = DEFAULT_WIDTH_RANGE) -> float:
    """Return `width` as a float, or raise ValueError naming the accepted range."""
    low, high = width_range
    try:
        width = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"width must be a number in [{low}, {high}], got {width!r}") from None
    if math.isnan(width) or width <= 0 or not (low - 1e-9 <= width <= high + 1e-9):
        raise ValueError(
            f"width {width} is outside this model's width range [{low}, {high}] "
            "(MUTUALNET.WIDTH_RANGE); choose a width inside it"
        )
    return width


def validate_width_range(width_range) -> Tuple[float, float]:
    """Return a (narrowest, widest) pair with 0 < narrowest <= widest <= 1, or raise ValueError."""
    try:
        low, high = (float(v) for v in width_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"MUTUALNET.WIDTH_RANGE must be two numbers (narrowest, widest), got {width_range!r}"
        ) from None
    if not (0 < low <= high <= 1.0) or math.isnan(low) or math.isnan(high):
        raise ValueError(
            f"MUTUALNET.WIDTH_RANGE={tuple(width_range)} is invalid: "
            "need 0 < narrowest <= widest <= 1.0"
        )
    return low, high


@dataclass(frozen=True)
class ChannelRule:
    """How many output channels a slimmable layer keeps at a width.

    `group` > 1 ties the layer to a wider one: the bottleneck inner width is the block's output
    width / 4 (official MutualNet ResNet, `ratio=0.25`), so it is computed as
    round_channels(channels * group, width) // group.
    """

    channels: int
    divisor: int = 8
    group: int = 1
    fixed: bool = False  # True: the layer always outputs `channels` (e.g. FPN output convs)

    def at(self, width: float) -> int:
        if self.fixed:
            return self.channels
        return round_channels(self.channels * self.group, width, self.divisor) // self.group


class SlimmableLayer:
    """Mixin for layers whose output channels depend on the model's width.

    Layers whose width only depends on their *input* (norms, convs' input channels) read it from
    the input tensor and need no state; only output channels need `out_rule` and this mixin.
    """

    out_rule: ChannelRule
    width: float = 1.0

    def set_active_width(self, width: float) -> None:
        self.width = width
        self.active_out_channels = self.out_rule.at(width)


def slimmable_layers(model: nn.Module) -> Iterator[SlimmableLayer]:
    return (m for m in model.modules() if isinstance(m, SlimmableLayer))


def width_range_of(model: nn.Module) -> Tuple[float, float]:
    """The width range a model was built for (held by its slimmable backbone)."""
    for module in model.modules():
        if hasattr(module, "width_range"):
            return tuple(module.width_range)
    raise ValueError(f"{type(model).__name__} has no slimmable backbone (no width_range)")


def set_width(model: nn.Module, width: float) -> float:
    """Set the active width of every slimmable layer of `model`; return the validated width."""
    width = validate_width(width, width_range_of(model))
    for layer in slimmable_layers(model):
        layer.set_active_width(width)
    return width


def get_width(model: nn.Module) -> float:
    """The active width of `model` (1.0 for a model with no slimmable layer)."""
    return next((layer.width for layer in slimmable_layers(model)), 1.0)


@contextlib.contextmanager
def using_width(model: nn.Module, width: float):
    """Run a block at `width`, then restore the width the model had before."""
    previous = get_width(model)
    set_width(model, width)
    try:
        yield model
    finally:
        set_width(model, previous)
