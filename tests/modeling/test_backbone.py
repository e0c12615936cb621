"""The slimmable ResNet-FPN against Detectron2's own modules."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2 import model_zoo
from fvcore.nn import FlopCountAnalysis

import mutualnet_det
from mutualnet_det import set_width
from mutualnet_det.flops import backbone_gflops
from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d

from .reference_nets import PlainFPN, load_sliced, plain_resnet, randomize_bn_stats

# Channel counts worked out by hand (round to a multiple of 8, never > 10% down; bottleneck
# inner = output / 4; the stem follows the first stage the same way).
HAND_CHANNELS = {
    (50, 0.5): dict(stem=32, outs=[128, 256, 512, 1024], inners=[32, 64, 128, 256], fpn=128),
    (50, 0.3): dict(stem=20, outs=[80, 152, 304, 616], inners=[20, 38, 76, 154], fpn=80),
    (18, 0.5): dict(stem=32, outs=[32, 64, 128, 256], inners=None, fpn=128),
    (18, 0.3): dict(stem=24, outs=[24, 40, 80, 152], inners=None, fpn=80),
}


def backbone_cfg(depth, slimmable=True, norm="BN"):
    cfg = get_cfg()
    mutualnet_det.add_mutualnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_slimmable_resnet_fpn_backbone" if slimmable else "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def build_pair(depth, norm="BN"):
    torch.manual_seed(0)
    reference = build_backbone(backbone_cfg(depth, slimmable=False, norm=norm))
    slim = build_backbone(backbone_cfg(depth, norm=norm))
    randomize_bn_stats(reference)
    slim.load_state_dict(reference.state_dict())
    return reference.eval(), slim.eval()


@pytest.mark.parametrize("depth", [18, 50])
def test_width_one_equals_detectron2_resnet_fpn(depth):
    reference, slim = build_pair(depth)
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in slim.state_dict().items()}
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = reference(x), slim(x)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert (expected[name] - actual[name]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("depth,width", sorted(HAND_CHANNELS))
def test_width_w_equals_plain_reduced_network(depth, width):
    _, slim = build_pair(depth)
    channels = HAND_CHANNELS[(depth, width)]
    reference = PlainFPN(plain_resnet(depth, channels["stem"], channels["outs"], channels["inners"]),
                         channels["outs"], channels["fpn"], 256).eval()
    full_state = slim.state_dict()
    # map the plain FPN's names onto Detectron2's
    renamed = dict(full_state)
    for level in range(4):
        for kind, d2 in (("laterals", "fpn_lateral"), ("outputs", "fpn_output")):
            for p in ("weight", "bias"):
                renamed[f"{kind}.{level}.{p}"] = full_state[f"{d2}{level + 2}.{p}"]
    load_sliced(reference, renamed)
    set_width(slim, width)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        expected, actual = reference(x), slim(x)
    for name in expected:
        assert expected[name].shape == actual[name].shape
        assert (expected[name] - actual[name]).abs().max().item() <= 1e-4, name
    # FLOPs: fvcore's count of the plain reduced network is ours at that width
    assert backbone_gflops(_holder(slim), x) \
        == pytest.approx(FlopCountAnalysis(reference, (x,)).unsupported_ops_warnings(False).total() / 1e9, rel=1e-9)


def _holder(backbone):
    holder = torch.nn.Module()
    holder.backbone = backbone
    return holder


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN", "SyncBN", ""])
def test_every_norm_runs_at_every_width(norm):
    slim = build_backbone(backbone_cfg(18, norm=norm))
    x = torch.randn(2, 3, 64, 64)
    for train in (True, False):
        slim.train(train)
        for width in (1.0, 0.77, 0.5, 0.3, 0.25):
            set_width(slim, width)
            outputs = slim(x)
            assert all(o.shape[1] == 256 and torch.isfinite(o).all() for o in outputs.values())


def gn_with_whole_groups(channels):
    """Plain GroupNorm as the slimmable one should be at `channels`: 32 groups when 32 divides
    the channels, otherwise gcd(32, channels) (24 -> 8, 40 -> 8, 80 -> 16, 152 -> 8)."""
    return torch.nn.GroupNorm(math.gcd(32, channels), channels)


@pytest.mark.parametrize("norm,width", [("FrozenBN", 0.5), ("GN", 0.5), ("GN", 0.3)])
def test_norm_slicing_matches_plain_network(norm, width):
    reference_full, slim = build_pair(18, norm=norm)
    with torch.no_grad():  # a trained-looking GN affine (not 1 and 0), so that slicing it wrongly shows
        for module in slim.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    channels = HAND_CHANNELS[(18, width)]
    # at 0.3 no channel count (24, 40, 80, 152) is a multiple of 32: GN falls back to gcd groups
    plain_norm = gn_with_whole_groups if norm == "GN" else norm
    reference = plain_resnet(18, channels["stem"], channels["outs"], norm=plain_norm).eval()
    load_sliced(reference, {k[len("bottom_up."):]: v for k, v in slim.state_dict().items() if k.startswith("bottom_up.")})
    set_width(slim, width)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = reference(x), slim.bottom_up(x)
    for name in expected:
        assert (expected[name] - actual[name]).abs().max().item() <= 1e-4


def test_flops_fall_monotonically_with_width():
    _, slim = build_pair(50)
    x = torch.randn(1, 3, 128, 128)
    gflops = []
    for width in (1.0, 0.75, 0.5, 0.35, 0.25):
        set_width(slim, width)
        gflops.append(backbone_gflops(_holder(slim), x))
    assert all(a > b for a, b in zip(gflops, gflops[1:])), gflops


def test_detectron2_mask_rcnn_r50_fpn_state_dict_loads_unchanged():
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    d2_model = build_model(cfg)
    mutualnet_det.add_mutualnet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SlimmableRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_slimmable_resnet_fpn_backbone"
    ours = build_model(cfg)
    result = ours.load_state_dict(d2_model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(isinstance(m, SlimmableConv2d) for m in ours.backbone.modules()) == 1 + 16 * 3 + 4 + 8


def test_the_stem_pools_at_inference_exactly_as_detectron2s_including_ties():
    from detectron2.modeling.backbone.resnet import BasicStem

    from mutualnet_det.modeling.backbone import ChannelsLastPoolStem

    reference, slim = build_pair(18)
    assert type(slim.bottom_up.stem) is ChannelsLastPoolStem
    stock = BasicStem(3, 64, norm="BN").eval()
    stock.load_state_dict(reference.bottom_up.stem.state_dict())
    generator = torch.Generator().manual_seed(9)
    for width, shape in ((1.0, (1, 3, 55, 73)), (0.5, (2, 3, 64, 96)), (0.3, (1, 3, 33, 47))):
        set_width(slim, width)
        x = torch.randn(*shape, generator=generator)
        channels = slim.bottom_up.stem.conv1.active_out_channels
        with torch.no_grad():  # the channels-last pool; ReLU leaves many tied zeros
            got = slim.bottom_up.stem(x)
            expected = torch.nn.functional.max_pool2d(torch.relu(stock.conv1(x))[:, :channels], 3, 2, 1) \
                if width == 1.0 else None
        assert got.is_contiguous()
        if expected is not None:
            assert torch.equal(got, expected) and (got == 0).any()
        # with gradients: Detectron2's forward, the same values
        torch.testing.assert_close(slim.bottom_up.stem(x), got, rtol=0, atol=0)
