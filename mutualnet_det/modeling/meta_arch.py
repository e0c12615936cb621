"""`SlimmableRCNN`: Detectron2's GeneralizedRCNN that carries its BN stats bank.

The forward pass is GeneralizedRCNN's; the additions are `bn_stats_bank`, a child module so
calibrated statistics per (width, resolution scale) are saved and loaded with the weights, and,
with MUTUALNET.SLIMMABLE_HEADS, the conversion of the stock FPN outputs and heads Detectron2
built into slimmable ones (`modeling/heads.py`; same parameter names and shapes), and, with
MUTUALNET.CPU_ROI_ALIGN "gather", RoI poolers that run faster on CPU (`modeling/roi_align.py`),
and, with MUTUALNET.TEST.MASK_PASTE "vectorized", masks pasted all at once (`modeling/mask_paste.py`),
and, with MUTUALNET.TEST.FOLD_NORMS, BatchNorms folded into the convolutions' weights at inference
(`modeling/slimmable_ops.py`).
Its RPN selects proposals at inference on CPU with less NMS and the same result
(`modeling/proposal_selection.py`).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..bn_calibration import BNStatsBank
from .heads import make_heads_slimmable
from .mask_paste import BoxPastedMasks
from .proposal_selection import use_top_proposals
from .roi_align import swap_roi_align
from .slimmable_ops import fold_norms


@META_ARCH_REGISTRY.register()
class SlimmableRCNN(GeneralizedRCNN):
    @configurable
    def __init__(self, *, slimmable_heads: bool = False, channel_divisor: int = 8, gather_roi_align: bool = False,
                 vectorized_mask_paste: bool = False, fold_norms_at_inference: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vectorized_mask_paste = vectorized_mask_paste
        use_top_proposals(self)
        if slimmable_heads:
            make_heads_slimmable(self.backbone, self.proposal_generator, self.roi_heads, divisor=channel_divisor)
        if gather_roi_align:
            swap_roi_align(self.roi_heads, gather=True)
        fold_norms(self, fold_norms_at_inference)
        self.bn_stats_bank = BNStatsBank()

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), "slimmable_heads": cfg.MUTUALNET.SLIMMABLE_HEADS,
                "channel_divisor": cfg.MUTUALNET.CHANNEL_DIVISOR,
                "gather_roi_align": cfg.MUTUALNET.CPU_ROI_ALIGN == "gather",
                "vectorized_mask_paste": cfg.MUTUALNET.TEST.MASK_PASTE == "vectorized",
                "fold_norms_at_inference": cfg.MUTUALNET.TEST.FOLD_NORMS}

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        """GeneralizedRCNN's; with vectorized_mask_paste, Detectron2's detector_postprocess pastes the
        masks through BoxPastedMasks, except when traced (fvcore's FLOP count, exports): pasting is
        not the model's compute, and Detectron2's paste is what its tracing tools expect."""
        if not (do_postprocess and self.vectorized_mask_paste) or torch.jit.is_tracing():
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        for result in results:
            if result.has("pred_masks"):
                result.pred_masks = BoxPastedMasks(result.pred_masks[:, 0])
        return GeneralizedRCNN._postprocess(results, batched_inputs, [r.image_size for r in results])
