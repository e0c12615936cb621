"""Fixed-width deployment: a slimmable model turned into an ordinary Detectron2 model at one
(width, resolution scale), with physically sliced weights and no width logic left.

Each slimmable layer becomes its plain twin (Detectron2 `Conv2d`, `nn.Linear`,
`nn.ConvTranspose2d`) holding the weight slice it runs on at that width (found by running the
model once with hooks; with MUTUALNET.SLIMMABLE_HEADS that includes the FPN outputs and the
heads), and each slimmable norm a plain one:
BN and SyncBN -> `nn.BatchNorm2d` with the configuration's calibrated statistics (from the BN
stats bank; SyncBN and BN are the same at inference), FrozenBN -> `FrozenBatchNorm2d`, GN ->
`nn.GroupNorm` with the groups used at that width.
"""
import copy
import math
import os

import torch
import torch.nn as nn
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, GeneralizedRCNN
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..bn_calibration import use_configuration
from ..flops import evaluating
from ..modeling.backbone import build_slimmable_resnet_backbone, build_slimmable_resnet_fpn_backbone
from ..modeling.roi_align import swap_roi_align
from ..modeling.slimmable_ops import (
    SlimmableConv2d,
    SlimmableConvTranspose2d,
    SlimmableGroupNorm,
    SlimmableLinear,
    used_channels,
)
from ..width import SlimmableLayer, set_width


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
    return Conv2d(in_channels, out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                  norm=_plain_norm(conv.norm, out_channels), activation=conv.activation)


def _plain_linear(linear: SlimmableLinear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=linear.bias is not None)


def _plain_conv_transpose(deconv: SlimmableConvTranspose2d, in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=deconv.kernel_size, stride=deconv.stride,
                              padding=deconv.padding, output_padding=deconv.output_padding,
                              bias=deconv.bias is not None, dilation=deconv.dilation)


PLAIN_TWINS = ((SlimmableConv2d, _plain_conv), (SlimmableLinear, _plain_linear),
               (SlimmableConvTranspose2d, _plain_conv_transpose))


def _plain_layer(layer: SlimmableLayer, in_channels: int, out_channels: int) -> nn.Module:
    """The plain layer computing what `layer` computes on `in_channels` inputs at its width."""
    make_plain = next(make for kind, make in PLAIN_TWINS if isinstance(layer, kind))
    plain = make_plain(layer, in_channels, out_channels)
    with torch.no_grad():
        plain.weight.copy_(layer.active_weight(in_channels))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias[:out_channels])
    return plain.to(layer.weight.device)


def _plain_copy(modules, used: dict):
    """Deep copies of `modules` with every slimmable layer replaced by its plain twin (plain
    lists holding layers, such as FPN's lateral/output convs, are copied through the memo too)."""
    replacements = {id(layer): _plain_layer(layer, *channels) for layer, channels in used.items()}
    return copy.deepcopy(modules, memo=replacements)


def _finish_backbone(frozen: nn.Module, example: torch.Tensor) -> nn.Module:
    """Drop the width range and record the ResNet's actual output channels."""
    for module in frozen.modules():
        module.__dict__.pop("width_range", None)
        if hasattr(module, "_out_feature_channels") and hasattr(module, "stages"):  # ResNet
            with evaluating(module):
                outputs = module(example)
            module._out_feature_channels = {k: v.shape[1] for k, v in outputs.items()}
    return frozen


@torch.no_grad()
def freeze_backbone(backbone: nn.Module, width: float, example: torch.Tensor) -> nn.Module:
    """The backbone (already set to `width` with its statistics) with every slimmable layer
    replaced by a plain one of the channels it uses; `example` is a (1, 3, H, W) input."""
    with evaluating(backbone):
        used = used_channels(backbone, example)
    return _finish_backbone(_plain_copy(backbone, used), example)


@torch.no_grad()
def freeze_width(model: nn.Module, width: float, resolution_scale: float = 1.0) -> GeneralizedRCNN:
    """An ordinary GeneralizedRCNN computing what `model` computes at (width, resolution_scale).

    The configuration's BN statistics must be in the model's bank (or the model has no BN)."""
    use_configuration(model, width, resolution_scale)
    inputs = [{"image": torch.zeros(3, 64, 64, device=model.pixel_mean.device)}]
    with evaluating(model):  # heads run even without detections (on empty RoI batches)
        used = used_channels(model, inputs)
    not_run = [name for name, m in model.named_modules() if isinstance(m, SlimmableLayer) and m not in used]
    if not_run:
        raise RuntimeError(f"slimmable layers {not_run} did not run on the example input; cannot freeze them")
    backbone, proposal_generator, roi_heads = _plain_copy(
        (model.backbone, model.proposal_generator, model.roi_heads), used)
    frozen = GeneralizedRCNN(
        backbone=_finish_backbone(backbone, model.preprocess_image(inputs).tensor),
        proposal_generator=proposal_generator, roi_heads=roi_heads,
        pixel_mean=model.pixel_mean.flatten().tolist(), pixel_std=model.pixel_std.flatten().tolist(),
        input_format=model.input_format, vis_period=0)
    swap_roi_align(frozen, gather=False)  # Detectron2's own poolers, as the frozen config rebuilds them
    return frozen.to(model.pixel_mean.device).train(model.training)


@BACKBONE_REGISTRY.register()
def build_frozen_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The slimmable ResNet-FPN of this config frozen at MUTUALNET.FROZEN_WIDTH (plain modules).

    Used by the configs tools/freeze_width.py writes: weights come from the frozen checkpoint.
    With MUTUALNET.SLIMMABLE_HEADS the frozen config already holds the FPN and head sizes of that
    width (`modeling.head_channels_at`): the frozen ResNet under Detectron2's FPN of that size."""
    width = cfg.MUTUALNET.FROZEN_WIDTH
    example = torch.zeros(1, input_shape.channels, 64, 64)
    if not cfg.MUTUALNET.SLIMMABLE_HEADS:
        slimmable = build_slimmable_resnet_fpn_backbone(cfg, input_shape)
        set_width(slimmable, width)
        return freeze_backbone(slimmable, width, example)
    slimmable = build_slimmable_resnet_backbone(cfg, input_shape)
    set_width(slimmable, width)
    return FPN(bottom_up=freeze_backbone(slimmable, width, example), in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def frozen_config(cfg, width: float, resolution_scale: float):
    """A config that rebuilds `freeze_width(model, width, resolution_scale)` without the slimmable
    machinery: GeneralizedRCNN with build_frozen_resnet_fpn_backbone at MUTUALNET.FROZEN_WIDTH,
    the test resize already multiplied by the resolution scale (so the frozen model runs at scale
    1.0), Detectron2's own RoI pooling, and with MUTUALNET.SLIMMABLE_HEADS the FPN and head sizes
    of that width. Not frozen; MODEL.WEIGHTS is left to the caller."""
    from ..data.rescale import scaled_test_cfg
    from ..modeling.heads import head_channels_at

    frozen = scaled_test_cfg(cfg, resolution_scale)
    frozen.defrost()
    frozen.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    frozen.MODEL.BACKBONE.NAME = "build_frozen_resnet_fpn_backbone"
    frozen.MUTUALNET.FROZEN_WIDTH = width
    frozen.MUTUALNET.CPU_ROI_ALIGN = "torchvision"  # what a stock GeneralizedRCNN pools with
    frozen.MUTUALNET.TEST.WIDTHS = (width,)
    frozen.MUTUALNET.TEST.RESOLUTION_SCALES = (1.0,)
    if cfg.MUTUALNET.SLIMMABLE_HEADS:  # the stock FPN and heads of that width
        for key, value in head_channels_at(cfg, width).items():
            frozen.merge_from_list([key, value])
    return frozen


def save_frozen(frozen: nn.Module, cfg, width: float, resolution_scale: float, output: str):
    """Write <output>/model_frozen_<name>.pth (Detectron2 checkpoint of `frozen`) and
    <output>/config_frozen_<name>.yaml (`frozen_config` pointing at it); <name> is w<width>, with
    _s<scale> when the scale is not 1.0. Returns (weights path, config path)."""
    from detectron2.checkpoint import DetectionCheckpointer

    os.makedirs(output, exist_ok=True)
    name = f"w{width:g}" + (f"_s{resolution_scale:g}" if resolution_scale != 1.0 else "")
    DetectionCheckpointer(frozen, output).save(f"model_frozen_{name}")
    config = frozen_config(cfg, width, resolution_scale)
    config.MODEL.WEIGHTS = os.path.join(output, f"model_frozen_{name}.pth")
    config_path = os.path.join(output, f"config_frozen_{name}.yaml")
    with open(config_path, "w") as f:
        f.write(config.dump())
    return config.MODEL.WEIGHTS, config_path
