"""Cost of a configuration, in one place: GFLOPs (fvcore) and parameters actually used.

FLOPs are fvcore's count (one fused multiply-add = one flop, fvcore's convention), through
Detectron2's `FlopCountAnalysis` wrapper for the whole model (list-of-dict inputs, inference mode)
and fvcore's directly for the backbone on the preprocessed image tensor.
"""
import contextlib
from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn
from detectron2.utils.analysis import FlopCountAnalysis as ModelFlopCountAnalysis
from fvcore.nn import FlopCountAnalysis

from .modeling.slimmable_ops import used_channels


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode for the block (BN uses, and never updates, its running statistics)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _quiet(analysis):
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


@torch.no_grad()
def backbone_gflops(model: nn.Module, image_tensor: torch.Tensor) -> float:
    """GFLOPs of `model.backbone` (at its current width) on a preprocessed (1, 3, H, W) tensor."""
    with evaluating(model):
        return _quiet(FlopCountAnalysis(model.backbone, (image_tensor,))).total() / 1e9


@torch.no_grad()
def model_gflops(model: nn.Module, inputs: Dict) -> float:
    """GFLOPs of one inference pass of a Detectron2 model on one input dict (eval mode)."""
    with evaluating(model):
        return _quiet(ModelFlopCountAnalysis(model, [inputs])).total() / 1e9


@torch.no_grad()
def active_parameters(model: nn.Module, inputs: Dict) -> int:
    """Parameters used at the current width on one input dict: slimmable layers (and their norms)
    count only the weight slice they ran on; every other parameter counts fully."""
    with evaluating(model):
        used = used_channels(model, [inputs])
    counted = set()
    total = 0
    for layer, (in_channels, out_channels) in used.items():
        total += layer.active_weight(in_channels).numel()
        total += out_channels if layer.bias is not None else 0
        counted.update(id(p) for p in layer.parameters())
        if getattr(layer, "norm", None) is not None:
            total += sum(out_channels for p in layer.norm.parameters())
    return total + sum(p.numel() for p in model.parameters() if id(p) not in counted)


def configuration_cost(model: nn.Module, inputs_list: List[Dict]) -> Dict[str, float]:
    """Mean GFLOPs (whole model, backbone) over `inputs_list`, and parameters used, at the model's
    current width, for inputs already resized to the configuration's scale."""
    gflops, gflops_backbone = [], []
    for inputs in inputs_list:
        gflops.append(model_gflops(model, inputs))
        image_tensor = model.preprocess_image([inputs]).tensor
        gflops_backbone.append(backbone_gflops(model, image_tensor))
    return {"gflops": float(np.mean(gflops)), "gflops_backbone": float(np.mean(gflops_backbone)),
            "params": int(active_parameters(model, inputs_list[-1]))}
