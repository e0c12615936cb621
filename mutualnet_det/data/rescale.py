"""Input rescaling, in one place: a batch of mapped Detectron2 inputs at another resolution.

MutualNet trains narrow members on down-scaled inputs. Images are resized bilinearly with
antialiasing, as Detectron2's test-time resize (PIL bilinear in `ResizeTransform`) does, so a
member trains on the images evaluation will show it at that size (without antialiasing the
difference was 1.3-4.9 grey levels on average at scales 0.86-0.4). Boxes, polygons and image sizes
follow with the same per-axis factors; bitmasks are downscaled by area (a pixel is set when at
least half of it is covered), so a small object's mask stays where its box is; an object covering
less than half of every output pixel (about 1 pixel across at the new size) loses its mask but
keeps its box. Size divisibility is applied later by the model's own padding.
"""
import copy
import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks


def scaled_size(height: int, width: int, scale: float):
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def rescale_instances(instances: Instances, new_height: int, new_width: int) -> Instances:
    """Ground truth of an image of instances.image_size resized to (new_height, new_width)."""
    old_height, old_width = instances.image_size
    scale_x, scale_y = new_width / old_width, new_height / old_height
    result = Instances((new_height, new_width))
    for name, value in instances.get_fields().items():
        if isinstance(value, Boxes):
            boxes = value.clone()
            boxes.scale(scale_x, scale_y)
            boxes.clip((new_height, new_width))
            value = boxes
        elif isinstance(value, PolygonMasks):
            value = PolygonMasks([[poly * _xy_factors(poly, scale_x, scale_y) for poly in polys]
                                  for polys in value.polygons])
        elif isinstance(value, BitMasks):
            value = BitMasks(_resize_bitmasks(value.tensor, new_height, new_width))
        result.set(name, value)
    return result


def _overlaps(old_size: int, new_size: int, device):
    """When [0, old_size) is stretched onto [0, new_size), new pixel i overlaps at most
    K = ceil(old/new) + 1 old pixels, from floor(i * old / new) on: their indices (new_size x K,
    clamped into range) and the fraction of the new pixel each covers (0 past the end)."""
    pixel = old_size / new_size
    starts = torch.arange(new_size, device=device, dtype=torch.float64) * pixel
    span = int(math.ceil(pixel)) + 1
    old = starts.floor().long()[:, None] + torch.arange(span, device=device)[None, :]
    overlap = (torch.minimum(starts[:, None] + pixel, old + 1) - torch.maximum(starts[:, None], old.double())).clamp(min=0)
    overlap[old >= old_size] = 0
    return old.clamp(max=old_size - 1), (overlap / pixel).float()


def _mean_over_new_rows(values: torch.Tensor, new_size: int) -> torch.Tensor:
    """... x H x W -> ... x new_size x W: the mean of `values` over each new row, a weighted sum
    of the K old rows it overlaps (exact area weights): K row gathers of the output's size, so
    O(pixels) and no dense product; float32, on the values' device. (Rows, not columns: gathering
    whole rows is a contiguous copy, gathering columns is not.)"""
    index, weight = _overlaps(values.shape[-2], new_size, values.device)
    result = None
    for k in range(index.shape[1]):
        term = values.index_select(-2, index[:, k]).float().mul_(weight[:, k, None])
        result = term if result is None else result.add_(term)
    return result


def _resize_bitmasks(masks: torch.Tensor, new_height: int, new_width: int) -> torch.Tensor:
    """N x H x W boolean masks resized by area: a new pixel is set when at least half of its area
    is covered by set pixels. Exact coverage, separable: rows first, then (transposed) the
    columns of the row means; O(pixels), on the masks' device."""
    rows = _mean_over_new_rows(masks, new_height)
    coverage = _mean_over_new_rows(rows.transpose(-1, -2).contiguous(), new_width)
    return (coverage >= 0.5 - 1e-6).transpose(-1, -2)


def resize_image(image: torch.Tensor, new_height: int, new_width: int) -> torch.Tensor:
    """A C x H x W image resized like Detectron2's test-time resize (bilinear, antialiased);
    uint8 images are rounded back to uint8."""
    resized = F.interpolate(image[None].float(), size=(new_height, new_width), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else resized


def _xy_factors(poly, scale_x, scale_y):
    factors = poly.copy()
    factors[0::2], factors[1::2] = scale_x, scale_y
    return factors


def rescale_batch(batched_inputs: List[Dict], scale: float, device=None) -> List[Dict]:
    """The same batch with every image (and its ground truth) resized by `scale`, on `device`
    (the model's: the resize runs where the batch is used, not on the CPU while a GPU waits;
    the model would move the tensors there anyway).

    Scale 1.0 returns the batch itself. Other keys ("height", "width": the original size that
    predictions are mapped back to) are kept.
    """
    if scale == 1.0:
        return batched_inputs
    rescaled = []
    for item in batched_inputs:
        image = item["image"] if device is None else item["image"].to(device, non_blocking=True)
        new_height, new_width = scaled_size(image.shape[-2], image.shape[-1], scale)
        new_item = copy.copy(item)
        new_item["image"] = resize_image(image, new_height, new_width)
        if "instances" in item:
            instances = item["instances"] if device is None else item["instances"].to(device)
            new_item["instances"] = rescale_instances(instances, new_height, new_width)
        rescaled.append(new_item)
    return rescaled


def scale_factors(original: List[Dict], rescaled: List[Dict]):
    """Per image (scale_x, scale_y) from `original` inputs to their `rescaled` versions."""
    return [(r["image"].shape[-1] / o["image"].shape[-1], r["image"].shape[-2] / o["image"].shape[-2])
            for o, r in zip(original, rescaled)]


def scaled_test_cfg(cfg, scale: float):
    """A copy of `cfg` whose test-time resize (short and long side) is multiplied by `scale`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST = max(1, int(round(cfg.INPUT.MIN_SIZE_TEST * scale)))
    cfg.INPUT.MAX_SIZE_TEST = max(1, int(round(cfg.INPUT.MAX_SIZE_TEST * scale)))
    cfg.freeze()
    return cfg


def scaled_test_input(image, cfg, scale: float) -> Dict:
    """A model input for one HWC image (in cfg.INPUT.FORMAT) resized by the test-time resize times
    `scale`; "height"/"width" keep the original size, so outputs come back in its coordinates."""
    from detectron2.data import transforms as T

    scaled = scaled_test_cfg(cfg, scale)
    resize = T.ResizeShortestEdge(scaled.INPUT.MIN_SIZE_TEST, scaled.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": image.shape[0], "width": image.shape[1]}
