"""Proposals as a test-time knob: how many RPN proposals per image reach the RoI heads (and how
many detections they may keep), set on a built model like its width.

At narrow widths the backbone is cheap and the per-proposal work (RoI pooling, box head, NMS,
mask head and pasting for the kept detections) is most of the time; Detectron2 fixes it by the
config (MODEL.RPN.POST_NMS_TOPK_TEST, 1,000 for COCO; TEST.DETECTIONS_PER_IMAGE, 100). A count
chosen at run time, swept beside width and scale (MUTUALNET.TEST.PROPOSALS), trades that cost
against AP like the other two knobs. Detections per image are capped at the proposal count.
"""
import torch.nn as nn


def _defaults(model: nn.Module):
    """The config's test-time counts, remembered on the model the first time it is changed."""
    if not hasattr(model, "_config_test_counts"):
        model._config_test_counts = (model.proposal_generator.post_nms_topk[False],
                                     model.roi_heads.box_predictor.test_topk_per_image)
    return model._config_test_counts


def set_proposals(model: nn.Module, count: int = None) -> int:
    """Keep `count` proposals per image at test time (None: the config's) and at most as many
    detections as the config allows and `count`; returns the proposal count in use."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    proposals, detections = _defaults(model)
    if count is not None:
        if int(count) != count or count < 1:
            raise ValueError(f"a proposal count must be a whole number >= 1, got {count!r}")
        proposals, detections = int(count), min(detections, int(count))
    model.proposal_generator.post_nms_topk[False] = proposals
    model.roi_heads.box_predictor.test_topk_per_image = detections
    return proposals


def proposals_in_use(model: nn.Module) -> int:
    return getattr(model, "module", model).proposal_generator.post_nms_topk[False]
