"""Proposal selection with less NMS against Detectron2's find_top_rpn_proposals on the same inputs."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.proposal_generator.rpn import RPN
from helpers import tiny_cfg, toy_batch

from mutualnet_det.modeling.proposal_selection import (CachedAnchorGenerator, TopProposalsRPN, find_top_proposals,
                                                       use_top_proposals)


def rpn_outputs(seed, num_images=2, sizes=(1200, 300, 75, 20, 6)):
    """Decoded proposals and logits of a 5-level RPN on 2 images of 96 x 128: clustered boxes (so
    NMS suppresses many), some outside the image, some tiny, one NaN logit and one inf box."""
    generator = torch.Generator().manual_seed(seed)
    proposals, logits = [], []
    for size in sizes:
        centres = torch.rand(num_images, size, 2, generator=generator) * torch.tensor([140.0, 110.0]) - 6
        centres = centres.div(12).round().mul(12) + torch.randn(num_images, size, 2, generator=generator) * 3
        half = torch.rand(num_images, size, 2, generator=generator) * 20 + 0.2
        proposals.append(torch.cat([centres - half, centres + half], dim=2))
        logits.append(torch.randn(num_images, size, generator=generator))
    logits[0][0, 5] = float("nan")
    proposals[1][1, 7, 2] = float("inf")
    return proposals, logits


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pre_nms_topk, post_nms_topk", [(500, 100), (500, 10), (50, 20), (1000, 1000), (500, 1)])
def test_equals_detectron2s_selection(seed, pre_nms_topk, post_nms_topk):
    proposals, logits = rpn_outputs(seed)
    image_sizes = [(96, 128), (80, 128)]
    expected = find_top_rpn_proposals(proposals, logits, image_sizes, 0.7, pre_nms_topk, post_nms_topk, 1.0, False)
    actual = find_top_proposals(proposals, logits, image_sizes, 0.7, pre_nms_topk, post_nms_topk, 1.0)
    for a, e in zip(actual, expected):
        assert a.image_size == e.image_size and len(a) == len(e) > 0
        assert torch.equal(a.proposal_boxes.tensor, e.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, e.objectness_logits)


def test_a_level_with_too_few_survivors_in_its_head_runs_in_full(monkeypatch):
    """Boxes in 4 tight clusters: NMS on a level's 2 x 10 best keeps fewer than 10, so that level's
    NMS runs over all its boxes (seen by the NMS call sizes), and the result is still Detectron2's."""
    import mutualnet_det.modeling.proposal_selection as module

    generator = torch.Generator().manual_seed(5)
    centres = torch.tensor([[20.0, 20.0], [60.0, 30.0], [90.0, 70.0], [40.0, 80.0]])
    picks = torch.randint(0, 4, (1, 800), generator=generator)
    jitter = torch.randn(1, 800, 2, generator=generator) * torch.linspace(0.1, 12, 800)[None, :, None]
    boxes = torch.cat([centres[picks] + jitter - 10, centres[picks] + jitter + 10], dim=2)
    logits = torch.linspace(5, -5, 800)[None] + torch.rand(1, 800, generator=generator) * 1e-3  # the tightest first
    sizes = []
    nms = module.nms
    monkeypatch.setattr(module, "nms", lambda b, s, t: sizes.append(len(b)) or nms(b, s, t))
    actual = find_top_proposals([boxes], [logits], [(100, 110)], 0.7, 500, 10, 0.0)[0]
    expected = find_top_rpn_proposals([boxes], [logits], [(100, 110)], 0.7, 500, 10, 0.0, False)[0]
    assert sizes == [20, 500]
    assert torch.equal(actual.proposal_boxes.tensor, expected.proposal_boxes.tensor) and len(actual) == 10


def test_a_slimmable_model_selects_with_it_at_inference_and_its_detections_are_detectron2s():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})).eval()
    assert type(model.proposal_generator) is TopProposalsRPN
    stock = copy.deepcopy(model)
    assert use_top_proposals(stock, enabled=False) is False and type(stock.proposal_generator) is RPN
    assert type(model.proposal_generator.anchor_generator) is CachedAnchorGenerator
    assert type(stock.proposal_generator.anchor_generator) is DefaultAnchorGenerator
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in toy_batch(num_images=2, size=64, seed=3)]
    with torch.no_grad():
        ours, theirs = model(batch), stock(batch)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert set(model.state_dict()) == set(stock.state_dict())


def level_features(sizes, channels=4):
    return [torch.zeros(2, channels, h, w) for h, w in sizes]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decoding_every_level_at_once_equals_detectron2s_decoding_per_level(seed):
    torch.manual_seed(0)
    rpn = build_model(tiny_cfg()).eval().proposal_generator
    generator = torch.Generator().manual_seed(seed)
    sizes = [(24, 31), (12, 16), (6, 8), (3, 4), (2, 2)][:len(rpn.anchor_generator.strides)]
    anchors = rpn.anchor_generator(level_features(sizes))
    deltas = [torch.randn(2, len(a), 4, generator=generator) * 3 for a in anchors]
    deltas[0][0, :5, 2:] = 40.0  # beyond the scale clamp
    expected = RPN._decode_proposals(rpn, anchors, deltas)
    actual = rpn._decode_all_levels(anchors, deltas)
    assert len(actual) == len(expected) == len(sizes)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and torch.equal(a, e)


def test_cached_anchors_are_detectron2s_for_each_grid_and_rebuilt_only_for_a_new_one(monkeypatch):
    torch.manual_seed(0)
    generator = build_model(tiny_cfg()).eval().proposal_generator.anchor_generator
    assert type(generator) is CachedAnchorGenerator
    builds = []
    grid_anchors = generator._grid_anchors
    monkeypatch.setattr(generator, "_grid_anchors", lambda sizes: builds.append(len(sizes)) or grid_anchors(sizes))
    small, large = [(8, 10), (4, 5), (2, 3)], [(16, 20), (8, 10), (4, 5)]
    for sizes in (small, large, small, large):
        got = generator(level_features(sizes))
        expected = DefaultAnchorGenerator.forward(generator, level_features(sizes))  # Detectron2's, rebuilt
        assert [tuple(g.tensor.shape) for g in got] == [tuple(e.tensor.shape) for e in expected]
        assert all(torch.equal(g.tensor, e.tensor) for g, e in zip(got, expected))
    assert len(builds) == 2 + 4  # two grids built once each by the cache, four by Detectron2's forward
    generator.train()
    generator(level_features(small))
    assert len(builds) == 7  # training rebuilds every time
    generator.eval()
    monkeypatch.setattr(CachedAnchorGenerator, "MAX_ENTRIES", 2)
    generator(level_features([(5, 5)]))  # a third grid: the cache starts over
    assert len(generator._anchor_cache) == 1


def test_anchors_made_under_inference_mode_are_detectron2s_and_not_cached():
    """Cell anchors made under torch.inference_mode have no version counter to key the cache on."""
    torch.manual_seed(0)
    with torch.inference_mode():
        generator = build_model(tiny_cfg()).eval().proposal_generator.anchor_generator
        sizes = [(8, 10), (4, 5), (2, 3)]
        got = generator(level_features(sizes))
        expected = DefaultAnchorGenerator.forward(generator, level_features(sizes))
    assert all(torch.equal(g.tensor, e.tensor) for g, e in zip(got, expected))
    assert not generator.__dict__.get("_anchor_cache")
