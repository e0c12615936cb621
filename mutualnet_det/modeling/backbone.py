"""Slimmable ResNet and ResNet-FPN backbones, registered in Detectron2's BACKBONE_REGISTRY.

They are Detectron2's own ResNet/FPN (same modules, forward code, parameter names and shapes, so
Detectron2 and MSRA checkpoints load unchanged) with every convolution replaced by its slimmable
twin. At width w (official MutualNet ResNet rule, one rounding function `round_channels`):
- a block's output keeps round_channels(C_out, w) channels, a bottleneck's inner width is that
  divided by C_out / C_inner (4), and the stem follows the first stage the same way;
- the RGB input of the stem is never slimmed;
- FPN lateral convs and the top-down path keep round_channels(FPN.OUT_CHANNELS, w); FPN output
  convs always return FPN.OUT_CHANNELS so every Detectron2 head works unchanged.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7, build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, build_resnet_backbone

from ..width import ChannelRule, validate_width_range
from .slimmable_ops import slimmable_conv_like


class ChannelsLastPoolStem(BasicStem):
    """Detectron2's BasicStem; at inference on CPU its 3 x 3 max pool runs on a channels-last copy
    of the activation. A max is exact, so the values are the same; torch's CPU kernel for NCHW
    pooling is the slow one (2-6x slower than channels-last at the stem's sizes on one thread,
    including both copies; up to a tenth of a narrow width's backbone). Training keeps
    Detectron2's forward, so gradients go where they always went when values tie."""

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        if x.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        pooled = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel_size=3, stride=2, padding=1)
        return pooled.contiguous()


def _slim(module: nn.Module, name: str, rule: ChannelRule) -> None:
    setattr(module, name, slimmable_conv_like(getattr(module, name), rule))


def make_resnet_slimmable(resnet: ResNet, *, width_range: Tuple[float, float], divisor: int = 8) -> ResNet:
    """Make a Detectron2 ResNet slimmable in place (see module docstring) and return it."""
    if resnet.num_classes is not None:
        raise NotImplementedError("slimmable ResNet classifiers are not supported (num_classes)")
    first_block = resnet.stages[0][0]
    first_out = first_block.out_channels
    stem_out = resnet.stem.out_channels
    stem_group = first_out // stem_out if first_out % stem_out == 0 else 1
    _slim(resnet.stem, "conv1", ChannelRule(stem_out, divisor, stem_group))
    if type(resnet.stem) is BasicStem:
        resnet.stem.__class__ = ChannelsLastPoolStem
    for stage in resnet.stages:
        for block in stage:
            out_rule = ChannelRule(block.out_channels, divisor)
            if isinstance(block, BottleneckBlock):
                inner = block.conv1.out_channels
                if block.out_channels % inner:
                    raise ValueError(f"bottleneck output {block.out_channels} is not a multiple of its inner width {inner}")
                inner_rule = ChannelRule(inner, divisor, block.out_channels // inner)
                _slim(block, "conv1", inner_rule)
                _slim(block, "conv2", inner_rule)
                _slim(block, "conv3", out_rule)
            elif isinstance(block, BasicBlock):
                _slim(block, "conv1", out_rule)
                _slim(block, "conv2", out_rule)
            else:
                raise NotImplementedError(f"{type(block).__name__} has no slimmable version "
                                          "(supported: BasicBlock, BottleneckBlock)")
            if block.shortcut is not None:
                _slim(block, "shortcut", out_rule)
    resnet.width_range = validate_width_range(width_range)
    return resnet


def make_fpn_slimmable(fpn: FPN, *, width_range: Tuple[float, float], divisor: int = 8) -> FPN:
    """Make a Detectron2 FPN over a ResNet slimmable in place (see module docstring)."""
    make_resnet_slimmable(fpn.bottom_up, width_range=width_range, divisor=divisor)
    for name, conv in list(fpn.named_children()):
        if not name.startswith(("fpn_lateral", "fpn_output")):
            continue
        rule = ChannelRule(conv.out_channels, divisor, fixed=name.startswith("fpn_output"))
        slim = slimmable_conv_like(conv, rule)
        setattr(fpn, name, slim)
        for convs in (fpn.lateral_convs, fpn.output_convs):  # plain lists, in top-down order
            convs[:] = [slim if c is conv else c for c in convs]
    if isinstance(fpn.top_block, LastLevelP6P7):  # RetinaNet's P6 may read (slimmed) res5
        for name in ("p6", "p7"):
            _slim(fpn.top_block, name, ChannelRule(getattr(fpn.top_block, name).out_channels, fixed=True))
    fpn.width_range = validate_width_range(width_range)
    return fpn


@BACKBONE_REGISTRY.register()
def build_slimmable_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet (MODEL.RESNETS.*), slimmable over MUTUALNET.WIDTH_RANGE."""
    return make_resnet_slimmable(
        build_resnet_backbone(cfg, input_shape),
        width_range=cfg.MUTUALNET.WIDTH_RANGE,
        divisor=cfg.MUTUALNET.CHANNEL_DIVISOR,
    )


@BACKBONE_REGISTRY.register()
def build_slimmable_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet-FPN (MODEL.RESNETS.*, MODEL.FPN.*), slimmable over MUTUALNET.WIDTH_RANGE."""
    return make_fpn_slimmable(
        build_resnet_fpn_backbone(cfg, input_shape),
        width_range=cfg.MUTUALNET.WIDTH_RANGE,
        divisor=cfg.MUTUALNET.CHANNEL_DIVISOR,
    )
