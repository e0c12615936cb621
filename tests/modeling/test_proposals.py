"""Proposals as a test-time knob: a model set to N proposals gives what Detectron2 gives when
configured with N (MODEL.RPN.POST_NMS_TOPK_TEST, detections capped at N), the config's count
comes back with None, and the sweep records each count with its own cost and AP."""
import json

import pytest
import torch

from helpers import tiny_cfg
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.modeling.proposals import proposals_in_use, set_proposals
from mutualnet_det.runtime.latency import apply_configuration, configuration_of, describe
from mutualnet_det.runtime.stream import full_configuration
from mutualnet_det.width import get_width

IMAGES = [{"image": torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)}
          for i in range(2)]


def built(cfg):
    torch.manual_seed(0)
    return MutualNetTrainer.build_model(cfg).eval()


def outputs(model):
    with torch.no_grad():
        return [o["instances"] for o in model(IMAGES)]


def assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        assert len(a) == len(b)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)


def test_a_proposal_count_set_at_run_time_equals_detectron2_configured_with_it():
    base = {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 15}  # tiny_cfg: 20 proposals
    model = built(tiny_cfg(**base))
    default = outputs(model)
    assert proposals_in_use(model) == 20 and max(len(o) for o in default) == 15
    seen = []
    handle = model.roi_heads.register_forward_pre_hook(lambda m, args: seen.append([len(p) for p in args[2]]))
    assert set_proposals(model, 6) == 6
    six = outputs(model)
    handle.remove()
    assert seen == [[6, 6]]  # the RoI heads get 6 proposals per image
    configured = tiny_cfg(**{**base, "MODEL.RPN.POST_NMS_TOPK_TEST": 6, "TEST.DETECTIONS_PER_IMAGE": 6})
    assert_same(six, outputs(built(configured)))
    assert max(len(o) for o in six) == 6  # detections capped at the count
    set_proposals(model, 100)  # more proposals than the config: detections stay at the config's 15
    assert model.roi_heads.box_predictor.test_topk_per_image == 15
    set_proposals(model, None)
    assert proposals_in_use(model) == 20
    assert_same(outputs(model), default)
    for bad in (0, 2.5, -3):
        with pytest.raises(ValueError, match="whole number >= 1"):
            set_proposals(model, bad)


def test_configurations_carry_the_count_and_switches_set_it():
    model = built(tiny_cfg())
    model.bn_stats_bank.store(model, 1.0, 1.0)
    record = {"width": 1.0, "resolution_scale": 1.0, "proposals": 7}
    assert configuration_of(record) == (1.0, 1.0, 7) and describe(configuration_of(record)) == "width 1, scale 1, 7 proposals"
    assert configuration_of({"width": 0.5, "resolution_scale": 1}) == (0.5, 1.0, None)  # an older sweep's record
    apply_configuration(model, (1.0, 1.0, 7))
    assert proposals_in_use(model) == 7
    apply_configuration(model, (1.0, 1.0, None))
    assert proposals_in_use(model) == 20
    # the stream's fixed baseline is width 1, scale 1 with the most proposals profiled
    table = {"torch_threads": 1, "configurations": [dict(record, proposals=p, threads=1) for p in (50, 1000, 300)]}
    assert full_configuration(table, 1)["proposals"] == 1000


def test_the_sweep_records_each_count_with_its_cost(tmp_path):
    from mutualnet_det.evaluation.width_sweep import run_width_sweep, sweep_proposals

    from evaluation.test_width_sweep import two_image_dataset

    name = two_image_dataset(tmp_path)
    cfg = tiny_cfg(**{"OUTPUT_DIR": str(tmp_path), "DATASETS.TEST": (name,), "MUTUALNET.TEST.WIDTHS": (1.0,), "MUTUALNET.TEST.RESOLUTION_SCALES": (1.0,),
                      "MUTUALNET.TEST.PROPOSALS": (5, 20), "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    assert sweep_proposals(cfg) == [20, 5] and sweep_proposals(tiny_cfg()) == [20]
    model = built(cfg)
    model.bn_stats_bank.store(model, 1.0, 1.0)
    records = run_width_sweep(cfg, model)[name]
    assert [(r["width"], r["proposals"]) for r in records] == [(1.0, 20), (1.0, 5)]
    assert records[0]["gflops"] > records[1]["gflops"] and records[0]["gflops_backbone"] == records[1]["gflops_backbone"]
    assert proposals_in_use(model) == 20  # the config's count after the sweep
    assert json.load(open(tmp_path / "inference" / name / "width_sweep.json"))[1]["proposals"] == 5
    # what Detectron2's hooks get: one result per count (not the last count under the (width, scale) key)
    results = MutualNetTrainer.test(cfg, model)
    assert sorted(results) == [f"{name}/w1_s1_p20", f"{name}/w1_s1_p5"]
    with pytest.raises(ValueError, match="MUTUALNET.TEST.PROPOSALS"):
        MutualNetTrainer.build_model(tiny_cfg(**{"MUTUALNET.TEST.PROPOSALS": (0,)}))


def test_the_latency_table_times_each_count_and_its_front_spans_them():
    """profile_latency runs each record at its own count (a simulated timer reads the count the
    model holds when timed), and the front by milliseconds mixes counts as their times say."""
    import numpy as np

    from mutualnet_det.runtime.latency import profile_latency

    model = built(tiny_cfg())
    for width in (1.0, 0.5):
        model.bn_stats_bank.store(model, width, 1.0)
    # milliseconds by (width, count) and box AP: fewer proposals are cheaper and a little worse
    ms = {(1.0, 20): 100.0, (1.0, 5): 60.0, (0.5, 20): 80.0, (0.5, 5): 40.0}
    ap = {(1.0, 20): 40.0, (1.0, 5): 38.0, (0.5, 20): 30.0, (0.5, 5): 20.0}
    sweep = [{"width": w, "resolution_scale": 1.0, "proposals": p, "gflops": 1.0, "gflops_backbone": 1.0,
              "bbox": {"AP": ap[(w, p)]}} for (w, p) in ms]

    def timer(function, device, warmup, repeats):
        function()
        value = ms[(get_width(model), proposals_in_use(model))]
        return {"median_ms": value, "iqr_ms": 0.0, "min_ms": value, "max_ms": value, "repeats": repeats}

    images = [np.zeros((64, 64, 3), dtype=np.uint8)]
    table = profile_latency(tiny_cfg(), model, sweep, images, timer=timer, progress=False)
    assert [(r["width"], r["proposals"], r["latency_ms"]) for r in table["configurations"]] == \
        [(w, p, ms[(w, p)]) for (w, p) in ms]
    # front by ms, fastest first: 40/20 kept, 60/38 kept, 80/30 dominated, 100/40 kept
    assert [(r["width"], r["proposals"]) for r in table["front"]] == [(0.5, 5), (1.0, 5), (1.0, 20)]
