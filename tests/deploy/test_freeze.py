"""Frozen fixed-width models against the slimmable model they come from."""
import pytest
import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from helpers import tiny_cfg, toy_batch

from mutualnet_det import freeze_width
from mutualnet_det.bn_calibration import calibrate_bn, use_configuration
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.deploy.freeze import build_frozen_resnet_fpn_backbone, frozen_config  # noqa: F401 (registered)
from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d
from mutualnet_det.width import SlimmableLayer

WIDTHS = (1.0, 0.6, 0.25)


# slimmable heads, with BN in the FPN and heads (sliced, calibrated) and a conv in the box head
SLIM_HEADS = {"MUTUALNET.SLIMMABLE_HEADS": True, "MODEL.FPN.NORM": "BN", "MODEL.ROI_BOX_HEAD.NORM": "BN",
              "MODEL.ROI_MASK_HEAD.NORM": "BN", "MODEL.ROI_BOX_HEAD.NUM_CONV": 1, "MODEL.ROI_BOX_HEAD.CONV_DIM": 16}


def trained_like(depth, norm="BN", **extra):
    """A tiny model whose BN statistics were calibrated (so the bank has every width)."""
    settings = {"MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.NORM": norm, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
                "TEST.DETECTIONS_PER_IMAGE": 10, **extra}
    if depth >= 50:
        settings.update({"MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.RESNETS.STEM_OUT_CHANNELS": 16})
    cfg = tiny_cfg(**settings)
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg)
    batches = [toy_batch(seed=i) for i in range(2)]
    for width in WIDTHS:
        calibrate_bn(model, iter(batches), width, 1.0, 2)
    return cfg, model.eval()


def outputs(model, inputs):
    with torch.no_grad():
        return model(inputs)[0]["instances"]


def assert_same_detections(a, b):
    assert len(a) == len(b) > 0
    assert (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max() <= 1e-4
    assert (a.scores - b.scores).abs().max() <= 1e-4
    assert (a.pred_masks.float() - b.pred_masks.float()).abs().mean() <= 1e-3


@pytest.mark.parametrize("depth,extra", [(18, {}), (50, {}), (18, SLIM_HEADS)], ids=["R18", "R50", "R18-slim-heads"])
def test_frozen_equals_slimmable_at_three_widths(depth, extra):
    _, model = trained_like(depth, **extra)
    inputs = [{"image": toy_batch(1, seed=5)[0]["image"], "height": 64, "width": 64}]
    for width in WIDTHS:
        frozen = freeze_width(model, width).eval()
        assert not any(isinstance(m, SlimmableConv2d) for m in frozen.modules())
        assert not hasattr(frozen, "bn_stats_bank") and type(frozen).__name__ == "GeneralizedRCNN"
        if width < 1:
            assert sum(p.numel() for p in frozen.backbone.parameters()) < sum(p.numel() for p in model.backbone.parameters())
            heads_shrink = bool(extra)
            assert (sum(p.numel() for p in frozen.roi_heads.parameters())
                    < sum(p.numel() for p in model.roi_heads.parameters())) == heads_shrink
        model.eval()
        use_configuration(model, width, 1.0)
        assert_same_detections(outputs(model, inputs), outputs(frozen, inputs))


def test_frozen_group_norm_model_equals_slimmable_where_32_does_not_divide_the_channels():
    """GN backbone at width 0.3: stem and stages have 24, 40, 80, 152 channels, none a multiple of
    32, so both the slimmable GN and its frozen nn.GroupNorm must use gcd(32, c) groups."""
    _, model = trained_like(18, norm="GN", **{"MODEL.RESNETS.STEM_OUT_CHANNELS": 64})
    with torch.no_grad():  # a trained-looking affine (not 1 and 0)
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    frozen = freeze_width(model, 0.3).eval()
    groups = {(m.num_channels, m.num_groups) for m in frozen.backbone.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {(24, 8), (40, 8), (80, 16), (152, 8)}  # hand-computed gcd(32, c)
    inputs = [{"image": toy_batch(1, seed=5)[0]["image"], "height": 64, "width": 64}]
    use_configuration(model, 0.3, 1.0)
    assert_same_detections(outputs(model.eval(), inputs), outputs(frozen, inputs))


def test_traced_frozen_model_matches():
    _, model = trained_like(18)
    frozen = freeze_width(model, 0.6).eval()
    inputs = [{"image": toy_batch(1, seed=5)[0]["image"].float()}]
    adapter = TracingAdapter(frozen, inputs)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    with torch.no_grad():
        expected = adapter(*adapter.flattened_inputs)
        actual = traced(*adapter.flattened_inputs)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and (e.float() - a.float()).abs().max() <= 1e-4


def test_frozen_config_rebuilds_the_model_without_slimmable_modules():
    cfg, model = trained_like(18)
    frozen = freeze_width(model, 0.25).eval()
    rebuilt_cfg = cfg.clone()
    rebuilt_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    rebuilt_cfg.MODEL.BACKBONE.NAME = "build_frozen_resnet_fpn_backbone"
    rebuilt_cfg.MUTUALNET.FROZEN_WIDTH = 0.25
    rebuilt = build_model(rebuilt_cfg).eval()
    result = rebuilt.load_state_dict(frozen.state_dict(), strict=True)
    assert not result.missing_keys and not any(isinstance(m, SlimmableConv2d) for m in rebuilt.modules())
    inputs = [{"image": toy_batch(1, seed=5)[0]["image"], "height": 64, "width": 64}]
    assert_same_detections(outputs(frozen, inputs), outputs(rebuilt, inputs))


def test_frozen_slimmable_heads_config_rebuilds_stock_heads_of_that_width():
    cfg, model = trained_like(18, **SLIM_HEADS)
    frozen = freeze_width(model, 0.25).eval()
    rebuilt_cfg = frozen_config(cfg, 0.25, 1.0)
    # hand-computed: FPN 32 -> 8, box conv 16 -> 8, box FC 32 -> 8, mask conv 16 -> 8 (multiples of 8, >= 8)
    assert (rebuilt_cfg.MODEL.FPN.OUT_CHANNELS, rebuilt_cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, rebuilt_cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
            rebuilt_cfg.MODEL.ROI_MASK_HEAD.CONV_DIM) == (8, 8, 8, 8)
    rebuilt = build_model(rebuilt_cfg).eval()
    result = rebuilt.load_state_dict(frozen.state_dict(), strict=True)
    assert not result.missing_keys and not any(isinstance(m, SlimmableLayer) for m in rebuilt.modules())
    inputs = [{"image": toy_batch(1, seed=5)[0]["image"], "height": 64, "width": 64}]
    assert_same_detections(outputs(frozen, inputs), outputs(rebuilt, inputs))
    use_configuration(model, 0.25, 1.0)
    assert_same_detections(outputs(model.eval(), inputs), outputs(rebuilt, inputs))
