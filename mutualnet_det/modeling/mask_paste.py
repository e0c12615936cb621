"""Pasting predicted masks into the image in one vectorised pass per chunk, with Detectron2's result.

Detectron2's `paste_masks_in_image` samples each 28 x 28 mask with `grid_sample` over the pixels
around its box; on a CPU it does so one mask at a time (a Python loop over up to 100 detections),
which at narrow widths costs more than the backbone. The sampling grid is separable (a pixel's
x sample position depends on its column only, its y on its row), so bilinear sampling with zero
padding is two one-dimensional interpolations: along x (two taps per column), then along y (two
taps per row), each a batched matrix product with an interpolation matrix of two taps per row.
`paste_masks_in_boxes` does that for many masks at once over each box's region
([floor(x0) - 1, ceil(x1) + 1], as Detectron2 on CPU; the whole image as Detectron2 on CUDA), in
chunks of masks with similar region sizes (padding to a chunk's largest region is then cheap) that
bound memory, and thresholds as Detectron2 does.

`BoxPastedMasks` makes Detectron2's own `detector_postprocess` use it on a CPU: Detectron2 pastes
an `ROIMasks` through its `to_bitmasks`. On a GPU it leaves the paste to Detectron2, which already
samples all masks at once there, and whose `grid_sample` is not subject to TF32 matrix products
(`torch.backends.cuda.matmul.allow_tf32` would round the interpolation matrices' products here).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, ROIMasks

CHUNK_ELEMENTS = 2 ** 24  # region values per chunk at most (64 MB of float32)
SMALL_CHUNK = 2 ** 16  # below this many values a chunk takes the next mask whatever the padding


def _taps(centres: torch.Tensor, low: torch.Tensor, high: torch.Tensor, size: int):
    """grid_sample's (bilinear, zeros padding, align_corners=False) two taps and the second's
    weight at pixel centres (n, K) of boxes spanning [low, high) (n, 1), with the grid normalised
    as Detectron2 computes it. Taps index the mask padded by one zero on each side."""
    grid = (centres - low) / (high - low) * 2 - 1
    position = ((grid + 1) * size - 1) / 2  # grid_sample's unnormalisation
    left = position.floor()
    first = (left.long() + 1).clamp(0, size + 1)  # 0 and size + 1: the zero padding
    second = (left.long() + 2).clamp(0, size + 1)
    return first, second, position - left


def _tap_matrix(first: torch.Tensor, second: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """The taps as an interpolation matrix (n, K, size + 2): row k holds 1 - weight at `first` and
    weight at `second` (summed where they coincide), so interpolating is a matrix product (one
    batched GEMM instead of gathers, which cost several times more per value on a CPU)."""
    matrix = torch.zeros(*first.shape, size + 2, dtype=weight.dtype, device=weight.device)
    matrix.scatter_add_(2, first[..., None], (1 - weight)[..., None])
    return matrix.scatter_add_(2, second[..., None], weight[..., None])


def _chunks(heights: torch.Tensor, widths: torch.Tensor) -> List[torch.Tensor]:
    """Masks grouped by region size (ascending area), each group padded to its largest region:
    a group grows while its padded size stays within 1.5x its masks' own (or under SMALL_CHUNK)
    and CHUNK_ELEMENTS, so one large box does not make every small one pay for its size."""
    order = torch.argsort(heights * widths).tolist()
    heights, widths = heights.tolist(), widths.tolist()
    groups, current, own, tallest, widest = [], [], 0, 0, 0
    for index in order:
        h, w = max(tallest, heights[index]), max(widest, widths[index])
        padded = (len(current) + 1) * h * w
        if current and padded > SMALL_CHUNK and (padded > 1.5 * (own + heights[index] * widths[index])
                                                 or padded > CHUNK_ELEMENTS):
            groups.append(current)
            current, own, h, w = [], 0, heights[index], widths[index]
        current.append(index)
        own += heights[index] * widths[index]
        tallest, widest = h, w
    return [torch.tensor(group) for group in groups + [current]]


def paste_masks_in_boxes(masks: torch.Tensor, boxes: torch.Tensor, image_shape: Tuple[int, int],
                         threshold: float = 0.5, skip_empty: bool = None) -> torch.Tensor:
    """Detectron2's `paste_masks_in_image` (same arguments, same result up to float rounding of
    the sampled values), vectorised: (N, M, M) masks in [0, 1], (N, 4) boxes -> (N, H, W) bool
    (uint8 0-255 when threshold < 0). skip_empty: sample only around each box (default: on CPU,
    as Detectron2)."""
    if masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"only square mask predictions are supported, got {tuple(masks.shape[-2:])}")
    height, width = int(image_shape[0]), int(image_shape[1])
    count, size, device = len(masks), masks.shape[-1], masks.device
    out = torch.zeros(count, height, width, device=device, dtype=torch.bool if threshold >= 0 else torch.uint8)
    if count == 0:
        return out
    if skip_empty is None:
        skip_empty = device.type == "cpu"
    boxes = boxes.to(device=device, dtype=torch.float32)
    if skip_empty:  # Detectron2's region around each box, clamped to the image
        x_start = (boxes[:, 0].floor() - 1).clamp(min=0).long()
        y_start = (boxes[:, 1].floor() - 1).clamp(min=0).long()
        x_end = (boxes[:, 2].ceil() + 1).clamp(max=width).long()
        y_end = (boxes[:, 3].ceil() + 1).clamp(max=height).long()
    else:
        x_start = y_start = torch.zeros(count, dtype=torch.long, device=device)
        x_end, y_end = torch.full_like(x_start, width), torch.full_like(x_start, height)
    padded = F.pad(masks.float(), (1, 1, 1, 1))  # (N, M + 2, M + 2): the zero padding as taps
    for chunk in _chunks((y_end - y_start).clamp(min=0).cpu(), (x_end - x_start).clamp(min=0).cpu()):
        chunk = chunk.to(device)
        span_y, span_x = int((y_end - y_start)[chunk].max()), int((x_end - x_start)[chunk].max())
        if span_y <= 0 or span_x <= 0:
            continue
        xs = x_start[chunk, None] + torch.arange(span_x, device=device)  # (n, span_x) pixel columns
        ys = y_start[chunk, None] + torch.arange(span_y, device=device)
        x_taps = _tap_matrix(*_taps(xs.float() + 0.5, boxes[chunk, 0:1], boxes[chunk, 2:3], size), size)
        y_taps = _tap_matrix(*_taps(ys.float() + 0.5, boxes[chunk, 1:2], boxes[chunk, 3:4], size), size)
        region = torch.bmm(y_taps, torch.bmm(padded[chunk], x_taps.transpose(1, 2)))  # along x, then y
        values = region >= threshold if threshold >= 0 else (region * 255).to(torch.uint8)
        # each region into its place: slice copies (an index_put over every pixel costs more)
        for j, (i, y0, y1, x0, x1) in enumerate(zip(chunk.tolist(), y_start[chunk].tolist(), y_end[chunk].tolist(),
                                                    x_start[chunk].tolist(), x_end[chunk].tolist())):
            if y1 > y0 and x1 > x0:
                out[i, y0:y1, x0:x1] = values[j, :y1 - y0, :x1 - x0]
    return out


class BoxPastedMasks(ROIMasks):
    """Detectron2's ROIMasks, pasted by `paste_masks_in_boxes` on a CPU (by Detectron2's
    `paste_masks_in_image` elsewhere) when Detectron2's `detector_postprocess` turns them into
    image masks; indexing keeps the type."""

    def to(self, device) -> "BoxPastedMasks":
        return BoxPastedMasks(self.tensor.to(device))

    def __getitem__(self, item) -> "BoxPastedMasks":
        return BoxPastedMasks(super().__getitem__(item).tensor)

    def to_bitmasks(self, boxes, height, width, threshold=0.5):
        if self.tensor.device.type != "cpu":
            return super().to_bitmasks(boxes, height, width, threshold)
        boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
        return BitMasks(paste_masks_in_boxes(self.tensor, boxes, (height, width), threshold=threshold))
