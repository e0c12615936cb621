"""Fixed-width deployment: a slimmable model turned into an ordinary Detectron2 model at one
(width, resolution scale), with physically sliced weights and no width logic left.

Each slimmable conv becomes a plain Detectron2 `Conv2d` holding the channel slice it runs on at
that width (found by running the backbone once with hooks), and each slimmable norm a plain one:
BN and SyncBN -> `nn.BatchNorm2d` with the configuration's calibrated statistics (from the BN
stats bank; SyncBN and BN are the same at inference), FrozenBN -> `FrozenBatchNorm2d`, GN ->
`nn.GroupNorm` with the groups used at that width.
"""
import copy
import math

import torch
import torch.nn as nn
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, GeneralizedRCNN

from .bn_calibration import use_configuration
from .flops import evaluating
from .modeling.backbone import build_slimmable_resnet_fpn_backbone
from .modeling.slimmable_ops import SlimmableConv2d, SlimmableGroupNorm, used_channels
from .width import set_width


def _plain_norm(norm, channels):
    if norm is None:
        return None
    if isinstance(norm, FrozenBatchNorm2d):
        plain = FrozenBatchNorm2d(channels, eps=norm.eps)
    elif isinstance(norm, nn.BatchNorm2d):
        plain = nn.BatchNorm2d(channels, eps=norm.eps, momentum=norm.momentum)
    elif isinstance(norm, SlimmableGroupNorm):
        groups = norm.num_groups if channels % norm.num_groups == 0 else math.gcd(channels, norm.num_groups)
        plain = nn.GroupNorm(groups, channels, eps=norm.eps)
    else:
        raise NotImplementedError(f"no plain version of {type(norm).__name__}")
    plain_state = plain.state_dict()
    for name, value in norm.state_dict().items():
        if name in plain_state:
            plain_state[name] = value[:channels].clone() if value.dim() else value.clone()
    plain.load_state_dict(plain_state)
    return plain


def _plain_conv(conv: SlimmableConv2d, in_channels: int, out_channels: int) -> Conv2d:
    plain = Conv2d(in_channels, out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                   padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                   norm=_plain_norm(conv.norm, out_channels), activation=conv.activation)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[:out_channels, :in_channels])
        if conv.bias is not None:
            plain.bias.copy_(conv.bias[:out_channels])
    return plain.to(conv.weight.device)


@torch.no_grad()
def freeze_backbone(backbone: nn.Module, width: float, example: torch.Tensor) -> nn.Module:
    """The backbone (already set to `width` with its statistics) with every slimmable conv
    replaced by a plain one of the channels it uses; `example` is a (1, 3, H, W) input."""
    with evaluating(backbone):
        used = used_channels(backbone, example)
    replacements = {id(conv): _plain_conv(conv, *channels) for conv, channels in used.items()}
    frozen = copy.deepcopy(backbone, memo=replacements)
    # plain lists (FPN's lateral/output convs) were copied through the memo as well
    for module in frozen.modules():
        module.__dict__.pop("width_range", None)
        if hasattr(module, "_out_feature_channels") and hasattr(module, "stages"):  # ResNet
            with evaluating(module):
                outputs = module(example)
            module._out_feature_channels = {k: v.shape[1] for k, v in outputs.items()}
    return frozen


def freeze_width(model: nn.Module, width: float, resolution_scale: float = 1.0) -> GeneralizedRCNN:
    """An ordinary GeneralizedRCNN computing what `model` computes at (width, resolution_scale).

    The configuration's BN statistics must be in the model's bank (or the model has no BN)."""
    use_configuration(model, width, resolution_scale)
    example = torch.zeros(1, 3, 64, 64, device=model.pixel_mean.device)
    backbone = freeze_backbone(model.backbone, width, example)
    frozen = GeneralizedRCNN(
        backbone=backbone, proposal_generator=copy.deepcopy(model.proposal_generator),
        roi_heads=copy.deepcopy(model.roi_heads), pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(), input_format=model.input_format, vis_period=0)
    return frozen.to(model.pixel_mean.device).train(model.training)


@BACKBONE_REGISTRY.register()
def build_frozen_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The slimmable ResNet-FPN of this config frozen at MUTUALNET.FROZEN_WIDTH (plain modules).

    Used by the configs tools/freeze_width.py writes: weights come from the frozen checkpoint."""
    slimmable = build_slimmable_resnet_fpn_backbone(cfg, input_shape)
    set_width(slimmable, cfg.MUTUALNET.FROZEN_WIDTH)
    return freeze_backbone(slimmable, cfg.MUTUALNET.FROZEN_WIDTH, torch.zeros(1, input_shape.channels, 64, 64))
