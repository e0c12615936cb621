"""Slimmable FPN outputs and heads (MUTUALNET.SLIMMABLE_HEADS) against Detectron2's own models.

Width 1.0: the stock Mask R-CNN (same parameters, same outputs). Width w: a stock Detectron2 Mask
R-CNN (its FPN, RPN and RoI heads, built by Detectron2 from a config) with the channel counts
worked out by hand, over the plain reduced ResNet of reference_nets, weights copied by slicing.
"""
import pytest
import torch
from detectron2 import model_zoo
from detectron2.modeling import GeneralizedRCNN, build_model, build_proposal_generator, build_roi_heads
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.utils.events import EventStorage

import mutualnet_det
from mutualnet_det import set_width
from mutualnet_det.bn_calibration import bn_layers, calibrate_bn
from mutualnet_det.flops import active_parameters, model_gflops
from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d, SlimmableConvTranspose2d, SlimmableLinear

from .reference_nets import plain_resnet, randomize_bn_stats, slice_like
from .test_backbone import HAND_CHANNELS

POOL = 7  # ROI_BOX_HEAD.POOLER_RESOLUTION
# Full-width head sizes of the test models, and theirs at each width, worked out by hand with the
# rule (multiple of 8, nearest, never > 10% down): e.g. 64 * 0.3 = 19.2 -> 16 is > 10% down -> 24.
FULL = dict(fpn=64, fc=128, box_conv=32, mask_conv=32)
HAND_HEADS = {
    0.5: dict(fpn=32, fc=64, box_conv=16, mask_conv=16),
    0.3: dict(fpn=24, fc=40, box_conv=16, mask_conv=16),
}
# one box conv before the FCs and BN in FPN and heads; R-50: FCs straight after RoIAlign, no norm.
HEAD_SETTINGS = {18: dict(box_convs=1, norm="BN"), 50: dict(box_convs=0, norm="")}


def mask_rcnn_cfg(depth, *, slimmable=True, heads=FULL, norm="", box_convs=0):
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    mutualnet_det.add_mutualnet_config(cfg)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.FPN.OUT_CHANNELS", heads["fpn"], "MODEL.FPN.NORM", norm,
        "MODEL.ROI_BOX_HEAD.NUM_CONV", box_convs, "MODEL.ROI_BOX_HEAD.CONV_DIM", heads["box_conv"],
        "MODEL.ROI_BOX_HEAD.FC_DIM", heads["fc"], "MODEL.ROI_BOX_HEAD.NORM", norm,
        "MODEL.ROI_MASK_HEAD.NUM_CONV", 2, "MODEL.ROI_MASK_HEAD.CONV_DIM", heads["mask_conv"],
        "MODEL.ROI_MASK_HEAD.NORM", norm, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 10,
    ])
    if slimmable:
        cfg.MODEL.META_ARCHITECTURE = "SlimmableRCNN"
        cfg.MODEL.BACKBONE.NAME = "build_slimmable_resnet_fpn_backbone"
        cfg.MUTUALNET.SLIMMABLE_HEADS = True
        # compared with Detectron2's layers to float precision: no folded norms here (the fold is
        # tested against the unfolded layers in test_slimmable_ops.py)
        cfg.MUTUALNET.TEST.FOLD_NORMS = False
    return cfg


def randomized(model, seed=0):
    """Random BN statistics/affines and head biases, so that slicing errors show in the outputs."""
    randomize_bn_stats(model, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and not name.startswith("backbone.bottom_up"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def image_inputs(seed=0, height=96, width=128):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, height, width), generator=generator).float(), "height": height, "width": width}]


def assert_same_detections(expected, actual, tolerance=1e-4):
    assert len(expected) == len(actual) > 0
    assert (expected.pred_boxes.tensor - actual.pred_boxes.tensor).abs().max() <= tolerance
    assert (expected.scores - actual.scores).abs().max() <= tolerance
    assert torch.equal(expected.pred_classes, actual.pred_classes)
    assert (expected.pred_masks.float() - actual.pred_masks.float()).abs().mean() <= 1e-3


@pytest.mark.parametrize("depth", [18, 50])
def test_width_one_is_detectron2_mask_rcnn(depth):
    settings = HEAD_SETTINGS[depth]
    torch.manual_seed(0)
    stock = randomized(build_model(mask_rcnn_cfg(depth, slimmable=False, **settings)))
    ours = build_model(mask_rcnn_cfg(depth, **settings)).eval()
    # a stock checkpoint loads strictly: same names, same shapes (the bank is empty)
    assert {k: v.shape for k, v in stock.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(stock.state_dict(), strict=True)
    slimmable_types = (SlimmableConv2d, SlimmableLinear, SlimmableConvTranspose2d)
    head_layers = [m for part in (ours.proposal_generator, ours.roi_heads) for m in part.modules()
                   if isinstance(m, slimmable_types)]
    # RPN conv + 2 predictors; box convs + 2 FCs + 2 predictors; 2 mask convs + deconv + predictor
    assert len(head_layers) == 3 + settings["box_convs"] + 4 + 4
    inputs = image_inputs()
    with torch.no_grad():
        assert_same_detections(stock(inputs)[0]["instances"], ours(inputs)[0]["instances"], tolerance=1e-5)


def reference_at(depth, width, settings, backbone_channels=None, heads=None):
    """Stock Detectron2 Mask R-CNN with the hand-computed channel counts at `width` (by default
    those of divisor 8, HAND_CHANNELS and HAND_HEADS)."""
    backbone_channels = backbone_channels or HAND_CHANNELS[(depth, width)]
    heads = heads or HAND_HEADS[width]
    cfg = mask_rcnn_cfg(depth, slimmable=False, heads=heads, **settings)
    bottom_up = plain_resnet(depth, backbone_channels["stem"], backbone_channels["outs"], backbone_channels["inners"])
    fpn = FPN(bottom_up, ["res2", "res3", "res4", "res5"], heads["fpn"], norm=settings["norm"], top_block=LastLevelMaxPool())
    shapes = fpn.output_shape()
    return GeneralizedRCNN(backbone=fpn, proposal_generator=build_proposal_generator(cfg, shapes),
                           roi_heads=build_roi_heads(cfg, shapes), pixel_mean=cfg.MODEL.PIXEL_MEAN,
                           pixel_std=cfg.MODEL.PIXEL_STD, input_format=cfg.INPUT.FORMAT)


def load_sliced_detector(reference, full_state):
    """Every reference tensor is the leading slice of ours, except the first box FC's weight: its
    inputs are a flattened (C, 7, 7) map, so it takes the columns of the first C channels."""
    for name, tensor in reference.state_dict().items():
        full = full_state[name]
        if name == "roi_heads.box_head.fc1.weight":
            out_features, in_features = tensor.shape
            full = full.view(full.shape[0], -1, POOL * POOL)[:out_features, :in_features // (POOL * POOL)]
            tensor.copy_(full.reshape(out_features, in_features))
        else:
            tensor.copy_(slice_like(full, tensor.shape))


@pytest.mark.parametrize("depth", [18, 50])
def test_width_w_is_detectron2_mask_rcnn_with_reduced_channels(depth):
    settings = HEAD_SETTINGS[depth]
    torch.manual_seed(0)
    ours = randomized(build_model(mask_rcnn_cfg(depth, **settings)))
    inputs = image_inputs(seed=1)
    for width in (0.5, 0.3):
        reference = reference_at(depth, width, settings).eval()
        load_sliced_detector(reference, ours.state_dict())
        set_width(ours, width)
        with torch.no_grad():
            features, reference_features = ours.backbone(ours.preprocess_image(inputs).tensor), \
                reference.backbone(reference.preprocess_image(inputs).tensor)
            assert all(f.shape[1] == HAND_HEADS[width]["fpn"] for f in features.values())
            for name in reference_features:
                assert (features[name] - reference_features[name]).abs().max() <= 1e-4, name
            assert_same_detections(reference(inputs)[0]["instances"], ours(inputs)[0]["instances"])
        # fvcore's count of the whole stock reduced detector is ours at that width; so are its parameters
        assert model_gflops(ours, inputs[0]) == pytest.approx(model_gflops(reference, inputs[0]), rel=1e-9)
        assert active_parameters(ours, inputs[0]) == sum(p.numel() for p in reference.parameters())
        # training losses (same proposal/RoI sampling: same seed)
        batch = [dict(inputs[0], instances=_instances())]
        losses = []
        for model in (reference, ours):
            torch.manual_seed(3)
            with EventStorage():
                losses.append(model.train()(batch))
            model.eval()
        for name, value in losses[0].items():
            assert losses[1][name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-5), name


# MUTUALNET.CHANNEL_DIVISOR 1 (the official MutualNet rounding) at width 0.3, by hand (nearest
# integer): R-18 stem 64 -> 19, stages 64, 128, 256, 512 -> 19, 38, 77, 154; heads FPN 64 -> 19,
# FC 128 -> 38, box and mask convs 32 -> 10 (divisor 8 would give 24, 40, 16, 16).
DIVISOR_ONE_BACKBONE = dict(stem=19, outs=[19, 38, 77, 154], inners=None)
DIVISOR_ONE_HEADS = dict(fpn=19, fc=38, box_conv=10, mask_conv=10)


def test_channel_divisor_one_reaches_the_heads():
    """The heads round with the configured divisor, as the backbone does: with CHANNEL_DIVISOR 1
    the model at 0.3 is the stock Mask R-CNN with divisor-1 channel counts everywhere."""
    settings = HEAD_SETTINGS[18]
    cfg = mask_rcnn_cfg(18, **settings)
    cfg.MUTUALNET.CHANNEL_DIVISOR = 1
    torch.manual_seed(0)
    ours = randomized(build_model(cfg))
    reference = reference_at(18, 0.3, settings, DIVISOR_ONE_BACKBONE, DIVISOR_ONE_HEADS).eval()
    load_sliced_detector(reference, ours.state_dict())
    set_width(ours, 0.3)
    inputs = image_inputs(seed=1)
    with torch.no_grad():
        features = ours.backbone(ours.preprocess_image(inputs).tensor)
        assert all(f.shape[1] == 19 for f in features.values())
        assert_same_detections(reference(inputs)[0]["instances"], ours(inputs)[0]["instances"])
    assert active_parameters(ours, inputs[0]) == sum(p.numel() for p in reference.parameters())


def _instances():
    from detectron2.structures import BitMasks, Boxes, Instances

    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]])
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        mask[y0:y1, x0:x1] = True
    return Instances((96, 128), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))


def test_predictor_outputs_stay_full_and_default_heads_are_stock():
    torch.manual_seed(0)
    ours = build_model(mask_rcnn_cfg(18)).eval()
    set_width(ours, 0.25)
    inputs = image_inputs()
    with torch.no_grad():
        features = ours.backbone(ours.preprocess_image(inputs).tensor)
        logits, deltas = ours.proposal_generator.rpn_head([features["p2"]])
        assert features["p2"].shape[1] == 16  # 64 * 0.25
        assert logits[0].shape[1] == 3 and deltas[0].shape[1] == 12  # 3 anchors per position
        scores, box_deltas = ours.roi_heads.box_predictor(ours.roi_heads.box_head(torch.randn(5, 16, POOL, POOL)))
        assert scores.shape == (5, 4) and box_deltas.shape == (5, 12)
        assert ours.roi_heads.mask_head.layers(torch.randn(5, 16, 14, 14)).shape == (5, 3, 28, 28)
    cfg = mask_rcnn_cfg(18)
    cfg.MUTUALNET.SLIMMABLE_HEADS = False  # the default: stock heads, FPN outputs full
    backbone_only = build_model(cfg)
    assert not any(isinstance(m, (SlimmableConv2d, SlimmableLinear)) for m in backbone_only.roi_heads.modules())
    set_width(backbone_only, 0.25)
    with torch.no_grad():
        assert backbone_only.backbone(backbone_only.preprocess_image(inputs).tensor)["p2"].shape[1] == 64


def test_head_bn_calibration_equals_the_reduced_reference_statistics():
    """Calibrating at width 0.5 gives every FPN/head BN the statistics the stock reduced model
    accumulates over the same batches (same RoI sampling: same seed)."""
    settings = HEAD_SETTINGS[18]
    torch.manual_seed(0)
    ours = randomized(build_model(mask_rcnn_cfg(18, **settings)))
    reference = reference_at(18, 0.5, settings)
    load_sliced_detector(reference, ours.state_dict())
    batches = [[dict(image_inputs(seed=s)[0], instances=_instances())] for s in (4, 5)]
    torch.manual_seed(7)
    assert calibrate_bn(ours, iter(batches), 0.5, 1.0, num_batches=2)
    reference_bns = bn_layers(reference)
    for layer in reference_bns.values():
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average, as calibration does
    torch.manual_seed(7)
    reference.train()
    with torch.no_grad(), EventStorage():
        for batch in batches:
            reference(batch)
    head_names = [n for n in reference_bns if not n.startswith("backbone.bottom_up")]
    assert any(n.startswith("roi_heads.box_head") for n in head_names) and any("mask_head" in n for n in head_names)
    ours_bns = bn_layers(ours)
    for name in head_names:
        expected, actual = reference_bns[name], ours_bns[name]
        channels = expected.num_features
        assert actual.num_features > channels
        assert torch.allclose(actual.running_mean[:channels], expected.running_mean, atol=1e-4), name
        assert torch.allclose(actual.running_var[:channels], expected.running_var, rtol=1e-3, atol=1e-4), name
    assert (0.5, 1.0) in ours.bn_stats_bank


def test_unsupported_parts_are_refused_naming_the_part_and_the_switch():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from mutualnet_det.modeling.heads import (make_box_head_slimmable, make_fpn_outputs_slimmable,
                                              make_heads_slimmable, make_mask_head_slimmable, make_rpn_head_slimmable)

    def refused(part, module, supported):
        return (rf"^MUTUALNET.SLIMMABLE_HEADS: {part} {type(module).__name__} has no slimmable version "
                rf"\(supported: {supported}\); set MUTUALNET.SLIMMABLE_HEADS False$")

    stock_cfg = mask_rcnn_cfg(18, slimmable=False)
    stock = build_model(stock_cfg)
    with pytest.raises(ValueError, match=r"^MUTUALNET.SLIMMABLE_HEADS needs the slimmable ResNet-FPN backbone "
                                         r"\(build_slimmable_resnet_fpn_backbone\), got FPN$"):
        make_fpn_outputs_slimmable(stock.backbone)  # Detectron2's FPN: no width range
    plain_cfg = get_cfg()
    plain_cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    with pytest.raises(ValueError, match=r"got ResNet$"):
        make_fpn_outputs_slimmable(build_backbone(plain_cfg))
    other = torch.nn.Identity()
    with pytest.raises(NotImplementedError, match=refused("RPN head", other, "StandardRPNHead")):
        make_rpn_head_slimmable(other)
    with pytest.raises(NotImplementedError, match=refused("box head", other, "FastRCNNConvFCHead")):
        make_box_head_slimmable(other, stock.roi_heads.box_predictor)
    with pytest.raises(NotImplementedError, match=refused("box predictor", other, "FastRCNNOutputLayers")):
        make_box_head_slimmable(stock.roi_heads.box_head, other)
    with pytest.raises(NotImplementedError, match=refused("mask head", other, "MaskRCNNConvUpsampleHead")):
        make_mask_head_slimmable(other)
    ours = build_model(mask_rcnn_cfg(18))
    with pytest.raises(NotImplementedError, match=refused("RoI heads", other, "StandardROIHeads")):
        make_heads_slimmable(ours.backbone, ours.proposal_generator, other)
    stock.roi_heads.keypoint_on, stock.roi_heads.keypoint_head = True, other
    with pytest.raises(NotImplementedError, match=refused("keypoint head", other, "none")):
        make_heads_slimmable(ours.backbone, ours.proposal_generator, stock.roi_heads)


def test_head_channels_at_a_width_by_hand():
    """The stock heads' sizes a frozen model is written with; by hand with the rule (multiple of
    the divisor, nearest, never > 10% down): 64 * 0.3 = 19.2 -> 24, 32 * 0.3 = 9.6 -> 16 (8 is
    > 10% down), 128 * 0.3 = 38.4 -> 40; divisor 1: 19, 10, 38. RPN conv dims: -1 (= the input's) kept."""
    from mutualnet_det.modeling.heads import head_channels_at

    cfg = mask_rcnn_cfg(18)
    cfg.MODEL.RPN.CONV_DIMS = [64, -1]
    assert head_channels_at(cfg, 0.3) == {"MODEL.FPN.OUT_CHANNELS": 24, "MODEL.ROI_BOX_HEAD.CONV_DIM": 16,
                                          "MODEL.ROI_BOX_HEAD.FC_DIM": 40, "MODEL.ROI_MASK_HEAD.CONV_DIM": 16,
                                          "MODEL.RPN.CONV_DIMS": [24, -1]}
    cfg.MUTUALNET.CHANNEL_DIVISOR = 1
    assert head_channels_at(cfg, 0.3) == {"MODEL.FPN.OUT_CHANNELS": 19, "MODEL.ROI_BOX_HEAD.CONV_DIM": 10,
                                          "MODEL.ROI_BOX_HEAD.FC_DIM": 38, "MODEL.ROI_MASK_HEAD.CONV_DIM": 10,
                                          "MODEL.RPN.CONV_DIMS": [19, -1]}


def test_an_rpn_head_with_several_convs_becomes_slimmable_in_each():
    """RPN.CONV_DIMS with two entries: Detectron2 builds a Sequential of convs; each follows the
    width (64 and -1 = the input's channels), the predictors stay full."""
    from mutualnet_det.width import ChannelRule

    cfg = mask_rcnn_cfg(18)
    cfg.MODEL.RPN.CONV_DIMS = [64, -1]
    cfg.MUTUALNET.CHANNEL_DIVISOR = 1  # the config's divisor reaches each of them
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    head = model.proposal_generator.rpn_head
    assert isinstance(head.conv, torch.nn.Sequential)
    convs = list(head.conv.children())
    assert len(convs) == 2 and all(isinstance(c, SlimmableConv2d) and c.out_rule == ChannelRule(64, 1) for c in convs)
    set_width(model, 0.5)
    with torch.no_grad():
        features = model.backbone(model.preprocess_image(image_inputs()).tensor)
        assert head.conv(features["p2"]).shape[1] == 32  # 64 * 0.5
        logits, deltas = head([features["p2"]])
    assert logits[0].shape[1] == 3 and deltas[0].shape[1] == 12


def test_converted_heads_keep_detectron2s_layer_lists_in_step():
    """Detectron2's heads also list their layers in plain lists (conv_norm_relus, fcs): after the
    conversion the lists hold the slimmable layers, the same objects as the attributes."""
    model = build_model(mask_rcnn_cfg(18, **HEAD_SETTINGS[18]))
    box_head, mask_head = model.roi_heads.box_head, model.roi_heads.mask_head
    assert box_head.conv_norm_relus == [box_head.conv1] and isinstance(box_head.conv1, SlimmableConv2d)
    assert box_head.fcs == [box_head.fc1, box_head.fc2] and all(isinstance(fc, SlimmableLinear) for fc in box_head.fcs)
    assert mask_head.conv_norm_relus == [mask_head.mask_fcn1, mask_head.mask_fcn2]
    assert all(isinstance(conv, SlimmableConv2d) for conv in mask_head.conv_norm_relus)


def test_fpn_outputs_with_retinanet_p6_p7_follow_the_width():
    """A RetinaNet-style FPN (P6, P7 from res5): its output convs and P6/P7 get the plain
    width-following rule with the divisor given (here 1, the backbone's being 8), so every level
    has 64 x 0.5 = 32 channels."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone

    from mutualnet_det.modeling.backbone import make_fpn_slimmable
    from mutualnet_det.modeling.heads import make_fpn_outputs_slimmable
    from mutualnet_det.width import ChannelRule

    cfg = mask_rcnn_cfg(18, slimmable=False)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    fpn = make_fpn_slimmable(build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)), width_range=(0.25, 1.0))
    make_fpn_outputs_slimmable(fpn, divisor=1)
    levels = list(fpn.output_convs) + [fpn.top_block.p6, fpn.top_block.p7]
    assert len(levels) == 5 and all(conv.out_rule == ChannelRule(64, 1) for conv in levels)
    set_width(fpn, 0.5)
    with torch.no_grad():
        features = fpn(torch.randn(1, 3, 128, 128))
    assert sorted(features) == ["p3", "p4", "p5", "p6", "p7"] and all(f.shape[1] == 32 for f in features.values())


def test_each_converter_rounds_with_divisor_8_by_default_and_predictors_keep_full_rules():
    """Called alone (without the config's divisor) each converter uses the project's default
    divisor 8; predictors get fixed rules of their full size."""
    from mutualnet_det.modeling.heads import (make_box_head_slimmable, make_fpn_outputs_slimmable,
                                              make_heads_slimmable, make_mask_head_slimmable, make_rpn_head_slimmable)
    from mutualnet_det.width import ChannelRule

    def convert_separately(model):
        make_fpn_outputs_slimmable(model.backbone)
        make_rpn_head_slimmable(model.proposal_generator.rpn_head)
        make_box_head_slimmable(model.roi_heads.box_head, model.roi_heads.box_predictor)
        make_mask_head_slimmable(model.roi_heads.mask_head)

    def convert_together(model):
        make_heads_slimmable(model.backbone, model.proposal_generator, model.roi_heads)

    for convert in (convert_separately, convert_together):
        cfg = mask_rcnn_cfg(18, **HEAD_SETTINGS[18])
        cfg.MUTUALNET.SLIMMABLE_HEADS = False  # stock heads over the slimmable backbone, converted here
        model = build_model(cfg)
        convert(model)
        rpn, box, predictor, mask = (model.proposal_generator.rpn_head, model.roi_heads.box_head,
                                     model.roi_heads.box_predictor, model.roi_heads.mask_head)
        assert rpn.conv.out_rule == ChannelRule(64, 8) and box.conv1.out_rule == ChannelRule(32, 8)
        assert box.fc1.out_rule == ChannelRule(128, 8) and mask.mask_fcn1.out_rule == ChannelRule(32, 8)
        assert mask.deconv.out_rule == ChannelRule(32, 8) and model.backbone.fpn_output2.out_rule == ChannelRule(64, 8)
        assert predictor.cls_score.out_rule == ChannelRule(4, fixed=True)
        assert predictor.bbox_pred.out_rule == ChannelRule(12, fixed=True)
        assert rpn.objectness_logits.out_rule == ChannelRule(3, fixed=True)
        assert mask.predictor.out_rule == ChannelRule(3, fixed=True)
