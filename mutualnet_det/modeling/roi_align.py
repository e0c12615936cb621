"""ROIAlign (Detectron2's ROIAlignV2) computed as a weighted gather on CPU, for speed.

Every member of a sandwich pays the RoI heads in full, and on CPU torchvision's `roi_align`
kernel (a scalar loop per RoI, channel and sample point) was 18% of a MutualNet iteration in
backward alone. ROIAlign is linear in the features: each output value is a fixed weighted sum of
at most 4 x sampling_ratio^2 feature-map pixels (bilinear taps, averaged over the bin's samples).
`GatherROIAlign` builds those taps once per call and lets `F.embedding_bag` (a vectorised,
well-kept op on every device) do the weighted sum, so forward and backward cost a few
vectorised passes over (RoIs x bins x taps x channels). The taps follow torchvision's
`bilinear_interpolate` exactly (aligned=True: a -0.5 pixel shift, no minimum RoI size; samples
beyond one pixel outside the map count as zero; coordinates clamped at the borders), so the
numbers are torchvision's up to float rounding (tests/modeling/test_roi_align.py). Pooling runs
in float32 at least: under autocast as torchvision's autocast rule does, and also for half-precision
features outside autocast (where torchvision's kernel pools in half).

Only aligned poolers with a fixed sampling ratio on CPU take this path; anything else (CUDA,
sampling_ratio 0, the legacy aligned=False) runs torchvision's kernel unchanged. Frozen models
(freeze.py) get plain ROIAligns back, as their config rebuilds them.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn
from torch.nn.modules.utils import _pair


def _axis_taps(start: torch.Tensor, bin_size: torch.Tensor, num_bins: int, sampling_ratio: int, length: int):
    """Sample points along one axis of every RoI (num_rois, num_bins, sampling_ratio): the lower and
    upper pixel index and their bilinear weights (zero for samples outside [-1, length])."""
    offsets = (torch.arange(num_bins * sampling_ratio, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio
    coord = start[:, None] + offsets[None, :] * bin_size[:, None]
    inside = ((coord >= -1.0) & (coord <= length)).to(coord.dtype)
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=length - 1)
    high = (low + 1).clamp(max=length - 1)  # past the last pixel's centre both taps are that pixel
    frac = coord - low
    shape = (-1, num_bins, sampling_ratio)
    return ((low.long().view(shape), (1 - frac).mul(inside).view(shape)),
            (high.long().view(shape), frac.mul(inside).view(shape)))


def roi_align_taps(rois: torch.Tensor, spatial_scale: float, output_size: Tuple[int, int], sampling_ratio: int,
                   height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each output value of aligned ROIAlign over a batch of (height, width) maps: the flat
    pixel indices (image, y, x) it reads and their weights, both (num_rois x out_h x out_w, taps)."""
    out_h, out_w = output_size
    boxes = rois[:, 1:] * spatial_scale - 0.5
    rows = _axis_taps(boxes[:, 1], (boxes[:, 3] - boxes[:, 1]) / out_h, out_h, sampling_ratio, height)
    cols = _axis_taps(boxes[:, 0], (boxes[:, 2] - boxes[:, 0]) / out_w, out_w, sampling_ratio, width)
    image_offset = (rois[:, 0].long() * height * width).view(-1, 1, 1, 1, 1)
    indices, weights = [], []
    for row_index, row_weight in rows:
        for col_index, col_weight in cols:
            # (roi, bin_y, sample_y, bin_x, sample_x) -> (roi, bin_y, bin_x, sample_y, sample_x)
            index = image_offset + row_index[:, :, :, None, None] * width + col_index[:, None, None, :, :]
            weight = row_weight[:, :, :, None, None] * col_weight[:, None, None, :, :]
            indices.append(index.permute(0, 1, 3, 2, 4))
            weights.append(weight.permute(0, 1, 3, 2, 4))
    num_taps = 4 * sampling_ratio * sampling_ratio
    indices = torch.stack(indices, dim=-1).reshape(-1, num_taps)
    weights = torch.stack(weights, dim=-1).reshape(-1, num_taps) / (sampling_ratio * sampling_ratio)
    return indices, weights


def roi_align_by_gather(features: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                        output_size: Tuple[int, int], sampling_ratio: int) -> torch.Tensor:
    """torchvision's `roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned=True)` as an embedding_bag over the feature pixels. Gradients flow to `features`
    only (as in torchvision). Computed in float32 at least, returned in the features' dtype (as
    torchvision's autocast rule does)."""
    num_images, channels, height, width = features.shape
    if rois.shape[0] == 0:  # a pyramid level no RoI is assigned to
        return features.new_zeros(0, channels, *output_size)
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.no_grad():
        indices, weights = roi_align_taps(rois.to(dtype), spatial_scale, output_size, sampling_ratio, height, width)
    pixels = features.to(dtype).permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
    with torch.autocast(features.device.type, enabled=False):
        pooled = F.embedding_bag(indices, pixels, per_sample_weights=weights, mode="sum")
    return pooled.view(-1, *output_size, channels).permute(0, 3, 1, 2).to(features.dtype).contiguous()


class GatherROIAlign(ROIAlign):
    """Detectron2's ROIAlign whose aligned, fixed-sampling-ratio CPU case runs
    `roi_align_by_gather` (see the module docstring) when a gradient will flow to the features
    (training); every other case is ROIAlign's. Forward only (inference, BN calibration),
    torchvision's kernel is the faster one: 1.4-2.5x at the poolers' sizes of the embedded and
    COCO configs on one CPU thread (1,000 boxes at 7 x 7, 100 at 14 x 14), where the gather wins by
    its backward."""

    def forward(self, input, rois):
        gradient = torch.is_grad_enabled() and input.requires_grad
        if not (gradient and input.device.type == "cpu" and self.aligned and self.sampling_ratio > 0):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        if input.is_quantized:
            input = input.dequantize()
        # Detectron2 rounds the boxes to the features' dtype before pooling; so do we
        return roi_align_by_gather(input, rois.to(input.dtype), self.spatial_scale, _pair(self.output_size),
                                   self.sampling_ratio)


def swap_roi_align(model: nn.Module, gather: bool) -> int:
    """Swap, in place, every ROIAlign of the model's ROIPoolers for a GatherROIAlign with the same
    arguments (gather=True) or back to Detectron2's ROIAlign (gather=False); no parameters change.
    Returns how many were swapped."""
    new_type, old_type = (GatherROIAlign, ROIAlign) if gather else (ROIAlign, GatherROIAlign)
    swapped = 0
    for pooler in (m for m in model.modules() if isinstance(m, ROIPooler)):
        for level, align in enumerate(pooler.level_poolers):
            if type(align) is old_type:
                pooler.level_poolers[level] = new_type(align.output_size, align.spatial_scale,
                                                       align.sampling_ratio, align.aligned)
                swapped += 1
    return swapped
