import math

import pytest
import torch

from mutualnet_det.width import ChannelRule, make_divisible, round_channels, set_width, using_width, get_width
from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d


def test_make_divisible_hand_values():
    assert make_divisible(76.8, 8) == 80  # nearest multiple of 8
    assert make_divisible(19.2, 8) == 24  # 16 would be more than 10% below 19.2
    assert make_divisible(3.0, 8) == 8  # never below the divisor
    assert make_divisible(76.8, 1) == 77  # the official MutualNet rule (divisor 1)


def test_round_channels_and_rules():
    assert round_channels(256, 1.0) == 256
    assert round_channels(256, 0.25) == 64
    assert round_channels(2048, 0.3) == 616  # 614.4 -> 616
    assert round_channels(64, 0.3, divisor=1) == 19
    # bottleneck inner width follows the block output: 256 * 0.3 -> 80, / 4 -> 20
    assert ChannelRule(64, 8, group=4).at(0.3) == 20
    assert ChannelRule(128, fixed=True).at(0.25) == 128


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SlimmableConv2d(3, 64, kernel_size=1)
        self.width_range = (0.25, 1.0)


@pytest.mark.parametrize("bad", [0.0, -0.5, 0.2, 1.01, float("nan"), "wide", None])
def test_bad_widths_rejected_with_range(bad):
    with pytest.raises(ValueError, match=r"\[0.25, 1.0\]"):
        set_width(_Model(), bad)


def test_set_width_and_context_manager():
    model = _Model()
    x = torch.randn(1, 3, 4, 4)
    assert set_width(model, 0.5) == 0.5
    assert model.conv(x).shape[1] == 32
    with using_width(model, 0.25):
        assert model.conv(x).shape[1] == 16
    assert get_width(model) == 0.5 and model.conv(x).shape[1] == 32
    assert not math.isnan(get_width(model))
