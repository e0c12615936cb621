"""The COCO cost on paper: expected GFLOPs per iteration of each method and of a sweep, on a
toy cost table (10 x width x scale GFLOPs per forward) worked out by hand."""
import pytest

from mutualnet_det.benchmark.coco_cost import method_costs, sweep_cost

WIDTHS, SCALES = (1.0, 0.75, 0.5, 0.25), (1.0, 0.5)
COSTS = {(w, s): 10 * w * s for w in WIDTHS for s in SCALES}


def test_method_costs_by_hand():
    """Per image: single 10; US-Net 10 + 2.5 + 2 x 6.25 (the mean of 10w over [0.25, 1]) = 25;
    MutualNet 10 + (2.5 + 1.25) / 2 + 2 x (6.25 + 3.125) / 2 = 21.25; x 3 (forward + backward)
    x 16 images."""
    costs = method_costs(COSTS, WIDTHS, SCALES)
    assert costs == pytest.approx({"single": 480.0, "usnet": 1200.0, "mutualnet": 1020.0})


def test_sweep_cost_by_hand():
    sweep = sweep_cost(COSTS, (1.0, 0.5), SCALES)  # 10 + 5 + 5 + 2.5 = 22.5 per image
    assert sweep == pytest.approx({"configurations": 4, "gflops": 22.5 * 5000, "full_width_passes": 2.25})
