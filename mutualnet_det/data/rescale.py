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


def _coverage_matrix(old_size: int, new_size: int, device) -> torch.Tensor:
    """new_size x old_size: the fraction of each new pixel (along one axis) that each old pixel
    covers, when [0, old_size) is stretched onto [0, new_size)."""
    pixel = old_size / new_size  # a new pixel spans this many old pixels
    starts = torch.arange(new_size, device=device, dtype=torch.float32)[:, None] * pixel
    old = torch.arange(old_size, device=device, dtype=torch.float32)[None, :]
    overlap = (torch.minimum(starts + pixel, old + 1) - torch.maximum(starts, old)).clamp(min=0)
    return overlap / pixel


def _resize_bitmasks(masks: torch.Tensor, new_height: int, new_width: int) -> torch.Tensor:
    """N x H x W boolean masks resized by area: a new pixel is set when at least half of its area
    is covered by set pixels (exact coverage, separable in rows and columns)."""
    rows = _coverage_matrix(masks.shape[-2], new_height, masks.device)
    columns = _coverage_matrix(masks.shape[-1], new_width, masks.device)
    coverage = torch.einsum("oh,nhw,pw->nop", rows, masks.float(), columns)
    return coverage >= 0.5 - 1e-6


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


def rescale_batch(batched_inputs: List[Dict], scale: float) -> List[Dict]:
    """The same batch with every image (and its ground truth) resized by `scale`.

    Scale 1.0 returns the batch itself. Other keys ("height", "width": the original size that
    predictions are mapped back to) are kept.
    """
    if scale == 1.0:
        return batched_inputs
    rescaled = []
    for item in batched_inputs:
        image = item["image"]
        new_height, new_width = scaled_size(image.shape[-2], image.shape[-1], scale)
        new_item = copy.copy(item)
        new_item["image"] = resize_image(image, new_height, new_width)
        if "instances" in item:
            new_item["instances"] = rescale_instances(item["instances"], new_height, new_width)
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
