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


def test_full_width_keeps_channels_that_are_not_multiples_of_the_divisor():
    assert round_channels(35, 1.0) == 35  # make_divisible(35) would give 32
    assert ChannelRule(64, divisor=1, group=4).at(0.3) == 19  # 256 * 0.3 -> 77 (divisor 1), / 4 -> 19


def test_make_divisible_default_divisor_and_the_ten_percent_edge():
    assert make_divisible(76.8) == 80  # divisor 8 by default (9 would give 81)
    assert make_divisible(20, 9) == 18  # 18 is exactly 10% below 20: allowed, not bumped to 27


def test_width_range_ends_tolerate_float_noise_and_zero_is_never_a_width():
    from mutualnet_det.width import validate_width

    assert validate_width(0.25 - 1e-9) == 0.25 - 1e-9  # 1e-9 of slack at both ends
    assert validate_width(1.0 + 1e-9) == 1.0 + 1e-9
    with pytest.raises(ValueError, match=r"\(MUTUALNET.WIDTH_RANGE\); choose a width inside it$"):
        validate_width(0.25 - 2e-9)
    with pytest.raises(ValueError, match="outside"):
        validate_width(0.0, (0.0, 1.0))  # even where a range starts at 0


@pytest.mark.parametrize("width_range", [(0.5, 0.5), (0.1, 1.0)])
def test_width_ranges_accepted(width_range):
    from mutualnet_det.width import validate_width_range

    assert validate_width_range(width_range) == width_range


@pytest.mark.parametrize("width_range", [(0.5, 0.25), (0, 1), (0.5, 1.5), (0.5, float("nan"))])
def test_width_ranges_rejected_naming_the_rule(width_range):
    from mutualnet_det.width import validate_width_range

    expected = rf"MUTUALNET.WIDTH_RANGE=\({width_range[0]}, {width_range[1]}\) is invalid: need 0 < narrowest <= widest <= 1.0"
    with pytest.raises(ValueError, match=expected):
        validate_width_range(width_range)
    with pytest.raises(ValueError, match=r"must be two numbers \(narrowest, widest\), got \('a', 'b'\)"):
        validate_width_range(("a", "b"))


def test_set_width_uses_the_models_own_range_and_needs_one():
    model = _Model()
    model.width_range = (0.1, 1.0)
    assert set_width(model, 0.2) == 0.2 and model.conv(torch.randn(1, 3, 2, 2)).shape[1] == 16  # 64 * 0.2 -> 16
    model.width_range = (0.5, 1.0)
    with pytest.raises(ValueError, match=r"\[0.5, 1.0\]"):
        set_width(model, 0.3)
    with pytest.raises(ValueError, match="Linear has no slimmable backbone"):
        set_width(torch.nn.Linear(2, 2), 0.5)
    assert get_width(torch.nn.Linear(2, 2)) == 1.0  # no slimmable layer: full width
