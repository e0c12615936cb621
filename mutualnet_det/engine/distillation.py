"""Inplace distillation for detection (optional; MutualNet does not need it, US-Net relies on it).

The widest member is the teacher. We capture, with forward hooks, the proposals it sampled in the
ROI heads (the boxes its box pooler received) and its box-classification logits on them. A
narrower member then classifies the same proposals, mapped to its own input scale, from its own
features, and is penalised by KL(teacher || member) of the class distributions.

How that term meets the member's ground-truth losses is the mode (MUTUALNET.TRAIN.DISTILL_MODE):
- "soft_labels": the teacher's class distributions replace the ground-truth class (the member's
  `loss_cls` is dropped), as in US-Net / MutualNet inplace distillation, where sub-networks learn
  from the full network's soft labels instead of the labels;
- "add": the KL is added to the member's full ground-truth loss.
Box regression, masks and the RPN stay on ground truth in both: only the class has a soft target.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes


@dataclass
class ForwardCapture:
    """What one member's forward pass exposed to the hooks."""

    features: Dict[str, torch.Tensor] = None  # backbone outputs
    proposal_boxes: List[Boxes] = None  # boxes the box pooler received (sampled proposals)
    class_logits: torch.Tensor = None  # box predictor scores on those boxes
    image_sizes: List = field(default_factory=list)


@contextlib.contextmanager
def capture_forward(model):
    """Record backbone features, sampled proposal boxes and box class logits of one forward."""
    roi_heads = model.roi_heads
    if not isinstance(roi_heads, StandardROIHeads) or not hasattr(roi_heads, "box_pooler"):
        raise NotImplementedError("inplace distillation supports StandardROIHeads-style heads only")
    captured = ForwardCapture()

    def on_backbone(module, inputs, outputs):
        captured.features = outputs

    def on_pooler(module, inputs, outputs):
        if captured.proposal_boxes is None:
            captured.proposal_boxes = [b.clone() for b in inputs[1]]

    def on_predictor(module, inputs, outputs):
        if captured.class_logits is None:
            captured.class_logits = outputs[0]

    handles = [model.backbone.register_forward_hook(on_backbone),
               roi_heads.box_pooler.register_forward_hook(on_pooler),
               roi_heads.box_predictor.register_forward_hook(on_predictor)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def box_class_logits(model, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
    """The model's box-classification logits for given boxes on given backbone features."""
    roi_heads = model.roi_heads
    pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
    scores, _ = roi_heads.box_predictor(roi_heads.box_head(pooled))
    return scores


def distillation_loss(model, teacher: ForwardCapture, student_features, scale_factors) -> torch.Tensor:
    """KL(teacher || student) of box class distributions on the teacher's sampled proposals.

    scale_factors: per image (scale_x, scale_y) from the teacher's input to the student's.
    """
    boxes = []
    for box, (scale_x, scale_y) in zip(teacher.proposal_boxes, scale_factors):
        box = box.clone()
        box.scale(scale_x, scale_y)
        boxes.append(box)
    student_logits = box_class_logits(model, student_features, boxes).float()  # float32 KL under autocast
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.softmax(teacher.class_logits.detach().float(), dim=1),
                    reduction="batchmean")


def add_to_ground_truth(loss_dict: Dict[str, torch.Tensor], distill: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Mode "add": every ground-truth loss plus the distillation term."""
    return {**loss_dict, "loss_distill": distill}


def soft_labels(loss_dict: Dict[str, torch.Tensor], distill: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Mode "soft_labels": the box classification learns from the teacher instead of the labels."""
    return {**{k: v for k, v in loss_dict.items() if k != "loss_cls"}, "loss_distill": distill}


DISTILL_MODES = {"add": add_to_ground_truth, "soft_labels": soft_labels}


class InplaceDistillation:
    """The widest member's class distributions taught to the narrower members, in one mode."""

    def __init__(self, mode: str = "soft_labels", weight: float = 1.0):
        if mode not in DISTILL_MODES:
            raise ValueError(f"distillation mode {mode!r} is unknown; accepted: {tuple(DISTILL_MODES)}")
        self.mode, self.weight, self._combine = mode, weight, DISTILL_MODES[mode]

    def member_losses(self, model, loss_dict, teacher: ForwardCapture, student: ForwardCapture,
                      scale_factors) -> Dict[str, torch.Tensor]:
        """A narrower member's losses with the teacher's soft targets, as the mode says."""
        distill = distillation_loss(model, teacher, student.features, scale_factors)
        return self._combine(loss_dict, self.weight * distill)
