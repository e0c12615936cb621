"""The bitmask resize of the narrower MutualNet members, timed at COCO size: the O(pixels)
separable integral (data/rescale.py) against the dense product it replaced, on the same masks."""
from typing import Dict

import torch

from ..data.rescale import _resize_bitmasks, scaled_size
from .timing import peak_memory_mb, time_call


def dense_area_resize(masks: torch.Tensor, new_height: int, new_width: int) -> torch.Tensor:
    """The replaced implementation: coverage as einsum("oh,nhw,pw->nop") of the two axes'
    overlap matrices with the float32 masks (about new_height x H x W multiply-adds per mask)."""
    def overlap(old_size, new_size):
        pixel = old_size / new_size
        starts = torch.arange(new_size, device=masks.device, dtype=torch.float32)[:, None] * pixel
        old = torch.arange(old_size, device=masks.device, dtype=torch.float32)[None, :]
        return (torch.minimum(starts + pixel, old + 1) - torch.maximum(starts, old)).clamp(min=0) / pixel

    coverage = torch.einsum("oh,nhw,pw->nop", overlap(masks.shape[-2], new_height), masks.float(),
                            overlap(masks.shape[-1], new_width))
    return coverage >= 0.5 - 1e-6


def rescale_benchmark(device: str, height: int = 800, width: int = 1333, num_masks: int = 20,
                      scales=(192 / 224, 128 / 224), repeats: int = 3) -> Dict:
    """Milliseconds (median of `repeats`) of both resizes per scale, whether they agree, and the
    process's peak memory after each (CPU: max resident set; it only grows, so the dense one,
    run last, shows its own extra)."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(num_masks, height, width, dtype=torch.bool)
    for mask in masks:  # rectangles of COCO-like sizes
        y0, x0 = int(torch.randint(0, height - 40, (1,), generator=generator)), int(torch.randint(0, width - 40, (1,), generator=generator))
        h, w = int(torch.randint(8, min(400, height - y0), (1,), generator=generator)), int(torch.randint(8, min(400, width - x0), (1,), generator=generator))
        mask[y0:y0 + h, x0:x0 + w] = True
    masks = masks.to(device)
    rows = []
    for scale in scales:
        new_height, new_width = scaled_size(height, width, scale)
        separable = time_call(lambda: _resize_bitmasks(masks, new_height, new_width), device, warmup=1, repeats=repeats)
        separable_peak = peak_memory_mb(device)
        dense = time_call(lambda: dense_area_resize(masks, new_height, new_width), device, warmup=1, repeats=repeats)
        rows.append({"scale": scale, "size": [new_height, new_width], "separable": separable, "dense": dense,
                     "peak_mb_after_separable": separable_peak, "peak_mb_after_dense": peak_memory_mb(device),
                     "equal": bool(torch.equal(_resize_bitmasks(masks, new_height, new_width),
                                               dense_area_resize(masks, new_height, new_width)))})
    return {"height": height, "width": width, "num_masks": num_masks, "rows": rows}


def rescale_markdown(report: Dict) -> str:
    r = report["rescale"]
    lines = [f"# Bitmask resize benchmark ({report['date']}, {report['device_name']})", "",
             f"{r['num_masks']} masks of {r['height']} x {r['width']} (COCO's training size), resized by area to each "
             "scale: the separable integral (`data/rescale.py`) against the dense product it replaced "
             "(`mutualnet_det/benchmark/rescale.py`), median of the timed repeats.", "",
             "| scale | size | separable ms | dense ms | dense / separable | equal | peak MB after separable / dense |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        separable, dense = row["separable"]["median_ms"], row["dense"]["median_ms"]
        lines.append(f"| {row['scale']:.3f} | {row['size'][0]} x {row['size'][1]} | {separable:.1f} | {dense:.1f} | "
                     f"{dense / separable:.1f} | {row['equal']} | {row['peak_mb_after_separable']:.0f} / "
                     f"{row['peak_mb_after_dense']:.0f} |")
    return "\n".join(lines) + "\n"
