"""Proposal selection at inference on CPU, with Detectron2's result and less NMS.

Detectron2's `find_top_rpn_proposals` takes the `pre_nms_topk` best anchors of every FPN level,
runs NMS on each level in full (torchvision's per-level loop on CPU, as there are more than 1,000
boxes), then keeps the `post_nms_topk` best survivors over all levels. Greedy NMS decides each box
from the boxes scored above it only, so the survivors among a level's k best boxes are exactly
the survivors of NMS on those k; and a level can contribute at most `post_nms_topk` boxes to the
result. NMS on each level's 2 x post_nms_topk best boxes therefore gives the same result whenever
it keeps at least post_nms_topk of them (otherwise the level runs in full). With few proposals
(the proposals knob, `modeling/proposals.py`) most of the NMS work is skipped: the per-level NMS
is what a narrow width pays in proposal generation.

`TopProposalsRPN` is Detectron2's RPN with that selection at inference on CPU; training, CUDA
(one batched NMS kernel there) and tracing (export) take Detectron2's function unchanged. At
inference it also decodes the anchors of all levels in one `apply_deltas` call (Detectron2 calls
it once per level; the arithmetic is row by row, so the boxes are the same), and its anchor
generator (`CachedAnchorGenerator`) keeps the anchors of the grid sizes it has seen instead of
rebuilding them for every image. Together these are fixed costs of every image at every width,
a few percent of a narrow one's time.
`SlimmableRCNN` gives its RPN these classes; their parameters and state are Detectron2's.
"""
from typing import List, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from .inference_cache import tensors_key

HEAD_FACTOR = 2  # each level's NMS first runs on its HEAD_FACTOR x post_nms_topk best boxes


def top_per_level_nms(boxes: torch.Tensor, scores: torch.Tensor, levels: torch.Tensor, iou_threshold: float,
                      keep_top: int) -> torch.Tensor:
    """`detectron2.layers.batched_nms(boxes, scores, levels, iou_threshold)[:keep_top]`: indices
    of the kept boxes, by descending score, NMS per level run only as far as the result needs."""
    kept = []
    for level in torch.unique(levels).tolist():
        order = torch.nonzero(levels == level).flatten()
        order = order[scores[order].argsort(descending=True)]
        head = order[:HEAD_FACTOR * keep_top]
        keep = nms(boxes[head], scores[head], iou_threshold)
        if len(keep) < keep_top and len(head) < len(order):  # too few survivors: the whole level
            head, keep = order, nms(boxes[order], scores[order], iou_threshold)
        kept.append(head[keep[:keep_top]])
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True)][:keep_top]


def find_top_proposals(proposals: List[torch.Tensor], logits: List[torch.Tensor], image_sizes: List[Tuple[int, int]],
                       nms_thresh: float, pre_nms_topk: int, post_nms_topk: int, min_box_size: float) -> List[Instances]:
    """Detectron2's `find_top_rpn_proposals(..., training=False)` (same arguments otherwise, same
    Instances) with `top_per_level_nms` for its per-level NMS."""
    results = []
    for n, image_size in enumerate(image_sizes):
        level_boxes, level_scores, level_ids = [], [], []
        for level, (proposals_i, logits_i) in enumerate(zip(proposals, logits)):
            scores, index = logits_i[n].topk(min(logits_i.shape[1], pre_nms_topk))
            level_boxes.append(proposals_i[n, index])
            level_scores.append(scores)
            level_ids.append(torch.full((len(scores),), level, dtype=torch.int64, device=scores.device))
        boxes, scores, levels = Boxes(cat(level_boxes)), cat(level_scores), cat(level_ids)
        finite = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes.clip(image_size)
        kept = boxes.nonempty(threshold=min_box_size)
        boxes, scores, levels = boxes[kept], scores[kept], levels[kept]
        keep = top_per_level_nms(boxes.tensor, scores, levels, nms_thresh, post_nms_topk)
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


def _traced() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting()


class CachedAnchorGenerator(DefaultAnchorGenerator):
    """Detectron2's DefaultAnchorGenerator that, in eval mode, keeps the anchors of each set of
    grid sizes (per device and cell anchors) and returns them again: the same tensors as
    `_grid_anchors` would rebuild (a few arange / meshgrid / add per level and image)."""

    MAX_ENTRIES = 32  # test images of many sizes: start over rather than grow without bound

    def forward(self, features: List[torch.Tensor]):
        if self.training or _traced():
            return super().forward(features)
        cells = [buffer for _, buffer in self.cell_anchors.named_buffers()]
        state = tensors_key(cells)
        if state is None:  # cell anchors made under torch.inference_mode: nothing to key on
            return super().forward(features)
        key = (tuple(tuple(f.shape[-2:]) for f in features), state)
        cache = self.__dict__.setdefault("_anchor_cache", {})
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= self.MAX_ENTRIES:
                cache.clear()
            entry = cache[key] = (self._grid_anchors([f.shape[-2:] for f in features]), cells)  # cells: keep their storage
        return [Boxes(anchors) for anchors in entry[0]]


class TopProposalsRPN(RPN):
    """Detectron2's RPN; at inference on CPU its proposals come from `find_top_proposals`, its
    anchors decoded by `_decode_all_levels`."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        if self.training or pred_anchor_deltas[0].device.type != "cpu" or _traced():
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        with torch.no_grad():
            return find_top_proposals(self._decode_all_levels(anchors, pred_anchor_deltas), pred_objectness_logits,
                                      image_sizes, self.nms_thresh, self.pre_nms_topk[False],
                                      self.post_nms_topk[False], self.min_box_size)

    def _decode_all_levels(self, anchors, pred_anchor_deltas) -> List[torch.Tensor]:
        """Detectron2's `_decode_proposals` (per level, N x (Hi * Wi * A) x B) with one
        `apply_deltas` over the levels' anchors concatenated instead of one call per level."""
        n, dim = pred_anchor_deltas[0].shape[0], anchors[0].tensor.size(1)
        deltas = cat([d.reshape(n, -1, dim) for d in pred_anchor_deltas], dim=1).reshape(-1, dim)
        boxes = cat([a.tensor for a in anchors]).unsqueeze(0).expand(n, -1, -1).reshape(-1, dim)
        proposals = self.box2box_transform.apply_deltas(deltas, boxes)
        return list(proposals.view(n, -1, dim).split([len(a) for a in anchors], dim=1))


def use_top_proposals(model, enabled: bool = True) -> bool:
    """Give the model's RPN `TopProposalsRPN`'s inference and `CachedAnchorGenerator` (enabled),
    or Detectron2's RPN and anchor generator back, in place: same modules, parameters and state.
    Returns whether the RPN has it now; a proposal generator other than Detectron2's RPN is left
    alone (False)."""
    generator = getattr(model, "proposal_generator", None)
    if type(generator) not in (RPN, TopProposalsRPN):
        return False
    generator.__class__ = TopProposalsRPN if enabled else RPN
    anchors = generator.anchor_generator
    if type(anchors) in (DefaultAnchorGenerator, CachedAnchorGenerator):
        anchors.__class__ = CachedAnchorGenerator if enabled else DefaultAnchorGenerator
        anchors.__dict__.pop("_anchor_cache", None)
    return enabled
