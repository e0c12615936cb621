"""Slimmable FPN outputs and detection heads (MUTUALNET.SLIMMABLE_HEADS).

The paper's setting slims only the backbone: FPN outputs, RPN and RoI heads run at full width for
every width, so they dominate the cost of narrow configurations. With slimmable heads, the
detector built by Detectron2 is converted after it is built (same parameter names and shapes, so
stock Mask R-CNN checkpoints load strictly), and at width w, with one rounding rule
(`ChannelRule`, `round_channels(C, w, MUTUALNET.CHANNEL_DIVISOR)`):
- FPN output convs (and RetinaNet's P6/P7) keep round_channels(FPN.OUT_CHANNELS, w);
- the RPN head's 3x3 conv(s), the box head's convs and FCs, the mask head's convs and deconv keep
  round_channels(C, w) of their C output channels;
- predictors (RPN objectness and anchor deltas, box class logits and deltas, mask logits) keep
  all their outputs and read the (narrower) channels they are given.
Every other layer reads its width from its input tensor. Norms in heads (ROI_*_HEAD.NORM) are
sliced like the backbone's and calibrated with it. At width w the detector computes exactly what
a stock Detectron2 Mask R-CNN with those channel counts computes (tests/modeling/test_heads.py).
"""
import dataclasses
from typing import Dict

import torch.nn as nn
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

from ..width import ChannelRule, round_channels
from .slimmable_ops import (
    slimmable_conv_like,
    slimmable_conv_transpose_like,
    slimmable_linear_like,
)


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    """setattr, and the same swap in the plain lists Detectron2 heads iterate (conv_norm_relus, fcs)."""
    old = getattr(module, name)
    setattr(module, name, new)
    for value in vars(module).values():
        if isinstance(value, list):
            value[:] = [new if item is old else item for item in value]


def _unsupported(part: str, module: nn.Module, supported: str):
    return NotImplementedError(f"MUTUALNET.SLIMMABLE_HEADS: {part} {type(module).__name__} has no slimmable "
                               f"version (supported: {supported}); set MUTUALNET.SLIMMABLE_HEADS False")


def make_fpn_outputs_slimmable(fpn: FPN, divisor: int = 8) -> None:
    """FPN output convs (and P6/P7) of a slimmable FPN follow the width instead of staying full."""
    if not isinstance(fpn, FPN) or not hasattr(fpn, "width_range"):
        raise ValueError("MUTUALNET.SLIMMABLE_HEADS needs the slimmable ResNet-FPN backbone "
                         f"(build_slimmable_resnet_fpn_backbone), got {type(fpn).__name__}")
    convs = list(fpn.output_convs)
    if isinstance(fpn.top_block, LastLevelP6P7):
        convs += [fpn.top_block.p6, fpn.top_block.p7]
    for conv in convs:
        conv.out_rule = dataclasses.replace(conv.out_rule, divisor=divisor, fixed=False)
        conv.set_active_width(conv.width)


def make_rpn_head_slimmable(head: nn.Module, divisor: int = 8) -> None:
    if not isinstance(head, StandardRPNHead):
        raise _unsupported("RPN head", head, "StandardRPNHead")
    if isinstance(head.conv, nn.Sequential):
        for name, conv in list(head.conv.named_children()):
            _replace(head.conv, name, slimmable_conv_like(conv, ChannelRule(conv.out_channels, divisor)))
    else:
        _replace(head, "conv", slimmable_conv_like(head.conv, ChannelRule(head.conv.out_channels, divisor)))
    for name in ("objectness_logits", "anchor_deltas"):  # predictors: full outputs
        conv = getattr(head, name)
        _replace(head, name, slimmable_conv_like(conv, ChannelRule(conv.out_channels, fixed=True)))


def make_box_head_slimmable(head: nn.Module, predictor: nn.Module, divisor: int = 8) -> None:
    if not isinstance(head, FastRCNNConvFCHead):
        raise _unsupported("box head", head, "FastRCNNConvFCHead")
    if type(predictor) is not FastRCNNOutputLayers:
        raise _unsupported("box predictor", predictor, "FastRCNNOutputLayers")
    for k, conv in enumerate(list(head.conv_norm_relus)):
        _replace(head, f"conv{k + 1}", slimmable_conv_like(conv, ChannelRule(conv.out_channels, divisor)))
    # fc1 reads the flattened (C, 7, 7) map channel-major: its first c channels are its first
    # c * 49 inputs, so slicing the leading input features is slicing whole channels
    for k, fc in enumerate(list(head.fcs)):
        _replace(head, f"fc{k + 1}", slimmable_linear_like(fc, ChannelRule(fc.out_features, divisor)))
    for name in ("cls_score", "bbox_pred"):  # predictors: full outputs
        fc = getattr(predictor, name)
        _replace(predictor, name, slimmable_linear_like(fc, ChannelRule(fc.out_features, fixed=True)))


def make_mask_head_slimmable(head: nn.Module, divisor: int = 8) -> None:
    if type(head) is not MaskRCNNConvUpsampleHead:
        raise _unsupported("mask head", head, "MaskRCNNConvUpsampleHead")
    for name, layer in list(head.named_children()):
        if name.startswith("mask_fcn"):
            _replace(head, name, slimmable_conv_like(layer, ChannelRule(layer.out_channels, divisor)))
    head.deconv = slimmable_conv_transpose_like(head.deconv, ChannelRule(head.deconv.out_channels, divisor))
    head.predictor = slimmable_conv_like(head.predictor, ChannelRule(head.predictor.out_channels, fixed=True))


def make_heads_slimmable(backbone: nn.Module, proposal_generator: nn.Module, roi_heads: nn.Module,
                         *, divisor: int = 8) -> None:
    """Convert, in place, a Detectron2 (Mask/Faster) R-CNN's FPN outputs, RPN head and RoI heads
    (see the module docstring). The model's width is then set with `width.set_width` as before."""
    make_fpn_outputs_slimmable(backbone, divisor)
    make_rpn_head_slimmable(proposal_generator.rpn_head, divisor)
    if type(roi_heads) is not StandardROIHeads:
        raise _unsupported("RoI heads", roi_heads, "StandardROIHeads")
    if roi_heads.keypoint_on:
        raise _unsupported("keypoint head", roi_heads.keypoint_head, "none")
    make_box_head_slimmable(roi_heads.box_head, roi_heads.box_predictor, divisor)
    if roi_heads.mask_on:
        make_mask_head_slimmable(roi_heads.mask_head, divisor)


def head_channels_at(cfg, width: float) -> Dict[str, object]:
    """Config values (KEY: value) of the stock Detectron2 heads a slimmable-heads model runs at
    `width` (used to write the config of a frozen model)."""
    def at(channels):
        return round_channels(channels, width, cfg.MUTUALNET.CHANNEL_DIVISOR)

    values = {"MODEL.FPN.OUT_CHANNELS": at(cfg.MODEL.FPN.OUT_CHANNELS),
              "MODEL.ROI_BOX_HEAD.CONV_DIM": at(cfg.MODEL.ROI_BOX_HEAD.CONV_DIM),
              "MODEL.ROI_BOX_HEAD.FC_DIM": at(cfg.MODEL.ROI_BOX_HEAD.FC_DIM),
              "MODEL.ROI_MASK_HEAD.CONV_DIM": at(cfg.MODEL.ROI_MASK_HEAD.CONV_DIM)}
    values["MODEL.RPN.CONV_DIMS"] = [d if d == -1 else at(d) for d in cfg.MODEL.RPN.CONV_DIMS]
    return values

