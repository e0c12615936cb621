"""The stage profile: each stage's time is attributed to it (a stage made 40 ms slower shows 40 ms
more there and nowhere else), the stages and the rest add up to the call, the model's outputs are
the same while timed, and every wrapper is gone afterwards."""
import time

import numpy as np
import torch
from detectron2.modeling.meta_arch import rcnn
from helpers import tiny_cfg

from mutualnet_det.benchmark.stages import STAGE_NAMES, profile_stages, stage_timers, stages_markdown
from mutualnet_det.bn_calibration import bn_layers
from mutualnet_det.engine.trainer import MutualNetTrainer


def banked_model(cfg, widths):
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    for width in widths:
        for layer in bn_layers(model).values():
            layer.running_var.fill_(1.0 + width)
        model.bn_stats_bank.store(model, width, 1.0)
    return model


def test_each_stage_gets_its_own_time_and_the_wrappers_are_removed(monkeypatch):
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = banked_model(cfg, (1.0, 0.25))
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    original_postprocess = rcnn.detector_postprocess

    baseline = profile_stages(cfg, model, images, [1.0, 0.25], warmup=1)
    assert "forward" not in vars(model.roi_heads.box_head) and "inference" not in vars(model.roi_heads.box_predictor)
    assert rcnn.detector_postprocess is original_postprocess
    for r in baseline:
        assert all(r["stages_ms"][name] > 0 for name in STAGE_NAMES), r
        assert abs(sum(r["stages_ms"].values()) + r["other_ms"] - r["total_ms"]) < 0.25 * r["total_ms"]
        assert r["calls"] == 2
    assert baseline[0]["gflops_backbone"] > 4 * baseline[1]["gflops_backbone"]  # width 1.0 vs 0.25

    head_forward = type(model.roi_heads.box_head).forward

    def slow_box_head(self, x):
        time.sleep(0.04)
        return head_forward(self, x)

    monkeypatch.setattr(type(model.roi_heads.box_head), "forward", slow_box_head)
    slowed = profile_stages(cfg, model, images, [1.0], warmup=1)[0]
    added = slowed["stages_ms"]["box head"] - baseline[0]["stages_ms"]["box head"]
    assert 38 < added < 60, slowed
    for name in STAGE_NAMES:
        if name != "box head":
            assert slowed["stages_ms"][name] < baseline[0]["stages_ms"][name] + 20, (name, slowed, baseline[0])

    report = {"date": "d", "device_name": "cpu", "config": "c", "weights": None, "num_images": 2,
              "repeats_per_image": 1, "resolution_scale": 1.0, "stages": baseline}
    text = stages_markdown(report)
    assert f"| {torch.get_num_threads()} | 0.25 |" in text and "paste (postprocess)" in text


def test_outputs_are_unchanged_while_timed():
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = banked_model(cfg, (1.0,))
    image = {"image": torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)}
    with torch.no_grad():
        expected = model([image])[0]["instances"]
        spent = {}
        with stage_timers(model, spent):
            got = model([image])[0]["instances"]
    assert set(spent) == set(STAGE_NAMES)
    assert len(got) == len(expected) > 0
    assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor) and torch.equal(got.pred_masks, expected.pred_masks)
