"""GatherROIAlign against torchvision's roi_align kernel and Detectron2's own ROIPooler."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from mutualnet_det.config import validate_mutualnet_config
from mutualnet_det.modeling.roi_align import GatherROIAlign, roi_align_by_gather, swap_roi_align

from helpers import tiny_cfg


def random_rois(num_rois, num_images, image_size, generator):
    """Boxes (batch index, x0, y0, x1, y1) of many sizes, plus the awkward ones by hand: partly
    and wholly outside the image, zero-sized, the whole image, on the right / bottom border."""
    corner = torch.rand(num_rois, 2, generator=generator) * image_size
    size = torch.rand(num_rois, 2, generator=generator) ** 2 * image_size
    boxes = torch.cat([corner, corner + size], dim=1)
    edge = float(image_size)
    boxes[:6] = torch.tensor([[-30.0, -20.0, 10.0, 12.0], [edge - 5, edge - 3, edge + 40, edge + 30],
                              [5.0, 7.0, 5.0, 7.0], [0.0, 0.0, edge, edge], [edge - 1, 0.0, edge, 4.0],
                              [edge + 20, edge + 20, edge + 50, edge + 60]])
    image_index = torch.randint(0, num_images, (num_rois, 1), generator=generator).float()
    return torch.cat([image_index, boxes], dim=1)


@pytest.mark.parametrize("output_size,sampling_ratio,spatial_scale,map_size", [
    ((7, 7), 2, 1 / 4, (40, 40)), ((14, 14), 1, 1 / 8, (20, 24)), ((5, 3), 3, 1 / 16, (7, 13)),
    ((7, 7), 2, 1 / 32, (1, 2)),
])
def test_gather_matches_torchvision_in_float64(output_size, sampling_ratio, spatial_scale, map_size):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, *map_size, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(60, 3, max(map_size) / spatial_scale, generator).double()
    expected = roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True)
    pooled = roi_align_by_gather(features, rois, spatial_scale, output_size, sampling_ratio)
    assert pooled.shape == expected.shape == (60, 5, *output_size)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-12)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected_grad, = torch.autograd.grad(expected, features, grad_output)
    grad, = torch.autograd.grad(pooled, features, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_module_in_float32_bfloat16_and_fallbacks():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 20, 20, generator=generator).requires_grad_()  # training: the gather runs
    rois = random_rois(40, 2, 80.0, generator)
    gather, stock = GatherROIAlign((7, 7), 1 / 4, 2, aligned=True), ROIAlign((7, 7), 1 / 4, 2, aligned=True)
    # float32: sample coordinates rounded in another order, so agreement to ~1e-5 of values ~N(0, 1)
    torch.testing.assert_close(gather(features, rois), stock(features, rois), rtol=1e-4, atol=1e-4)
    assert gather(features, rois).is_contiguous()
    # no RoIs (a pyramid level nobody is assigned to)
    assert gather(features, rois[:0]).shape == stock(features, rois[:0]).shape == (0, 8, 7, 7)
    # bfloat16 autocast: both pool in float32 and return bfloat16 (equal but for the last bit
    # where the float32 results round to neighbouring bfloat16 values), gradients alike
    low = features.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled, expected = gather(low, rois), stock(low, rois)
    assert pooled.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), expected.float(), rtol=2 ** -7, atol=1e-3)
    grad_output = torch.randn(pooled.shape, generator=generator).bfloat16()
    grad, = torch.autograd.grad(pooled, low, grad_output)
    expected_grad, = torch.autograd.grad(expected, low, grad_output)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=2 ** -7, atol=1e-3)
    # adaptive sampling (0) and the legacy aligned=False are torchvision's kernel, bit for bit
    for args in [((7, 7), 1 / 4, 0, True), ((7, 7), 1 / 4, 2, False)]:
        assert torch.equal(GatherROIAlign(*args)(features, rois), ROIAlign(*args)(features, rois))


def test_swapped_pooler_matches_detectron2_pooler():
    """A four-level ROIPooler (boxes of 4 to 512 pixels, on every level) with its ROIAligns swapped
    pools what Detectron2's does."""
    generator = torch.Generator().manual_seed(2)
    scales, image_size = (1 / 4, 1 / 8, 1 / 16, 1 / 32), 512
    features = [torch.randn(2, 6, int(image_size * s), int(image_size * s), generator=generator, dtype=torch.float64,
                            requires_grad=True) for s in scales]  # training: the gather runs
    boxes = []
    for _ in range(2):
        size = 2 ** (2 + 7 * torch.rand(40, 2, generator=generator, dtype=torch.float64))
        corner = torch.rand(40, 2, generator=generator, dtype=torch.float64) * (image_size - size)
        whole_image = torch.tensor([[0.0, 0.0, image_size, image_size]], dtype=torch.float64)
        boxes.append(Boxes(torch.cat([torch.cat([corner, corner + size], dim=1), whole_image])))
    assert set(assign_boxes_to_levels(boxes, 2, 5, 224, 4).tolist()) == {0, 1, 2, 3}
    stock = ROIPooler((14, 14), scales, 2, "ROIAlignV2")
    swapped = ROIPooler((14, 14), scales, 2, "ROIAlignV2")
    assert swap_roi_align(swapped, gather=True) == 4
    assert all(type(align) is GatherROIAlign for align in swapped.level_poolers)
    torch.testing.assert_close(swapped(features, boxes), stock(features, boxes), rtol=0, atol=1e-12)
    assert swap_roi_align(swapped, gather=True) == 0  # already swapped
    assert swap_roi_align(swapped, gather=False) == 4
    assert all(type(align) is ROIAlign for align in swapped.level_poolers)


def test_the_gather_runs_only_where_a_gradient_flows(monkeypatch):
    """Forward only (inference, calibration) torchvision's kernel is faster on CPU: GatherROIAlign
    is then ROIAlign bit for bit, and the gather runs only with a gradient to the features."""
    import mutualnet_det.modeling.roi_align as module

    calls = []
    gather_function = module.roi_align_by_gather
    monkeypatch.setattr(module, "roi_align_by_gather", lambda *a: calls.append(1) or gather_function(*a))
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 8, 20, 20, generator=generator)
    rois = random_rois(30, 1, 80.0, generator)
    gather, stock = GatherROIAlign((7, 7), 1 / 4, 2, aligned=True), ROIAlign((7, 7), 1 / 4, 2, aligned=True)
    assert torch.equal(gather(features, rois), stock(features, rois)) and calls == []
    trainable = features.clone().requires_grad_()
    with torch.no_grad():
        assert torch.equal(gather(trainable, rois), stock(features, rois)) and calls == []
    pooled = gather(trainable, rois)
    assert calls == [1] and pooled.requires_grad
    torch.testing.assert_close(pooled, stock(features, rois), rtol=1e-4, atol=1e-4)


def test_config_key_chooses_the_poolers():
    model = build_model(tiny_cfg())
    poolers = [model.roi_heads.box_pooler, model.roi_heads.mask_pooler]
    assert {type(align) for pooler in poolers for align in pooler.level_poolers} == {GatherROIAlign}
    model = build_model(tiny_cfg(**{"MUTUALNET.CPU_ROI_ALIGN": "torchvision"}))
    assert {type(align) for align in model.roi_heads.box_pooler.level_poolers} == {ROIAlign}
    with pytest.raises(ValueError, match=r"MUTUALNET.CPU_ROI_ALIGN='cuda' is unknown; accepted: \('gather', 'torchvision'\)"):
        validate_mutualnet_config(tiny_cfg(**{"MUTUALNET.CPU_ROI_ALIGN": "cuda"}))
