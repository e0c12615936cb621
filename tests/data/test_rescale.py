import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from mutualnet_det.data.rescale import rescale_batch, scaled_size


def make_item():
    image = torch.arange(3 * 100 * 200, dtype=torch.float32).reshape(3, 100, 200) % 256
    instances = Instances((100, 200))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 110.0, 60.0]]))
    instances.gt_classes = torch.tensor([1])
    instances.gt_masks = PolygonMasks([[np.array([10.0, 20.0, 110.0, 20.0, 110.0, 60.0])]])
    return {"image": image.to(torch.uint8), "instances": instances, "height": 100, "width": 200}


def test_scale_one_returns_the_batch_itself():
    batch = [make_item()]
    assert rescale_batch(batch, 1.0) is batch


def test_boxes_polygons_and_sizes_by_hand():
    item = make_item()
    (scaled,) = rescale_batch([item], 0.6)
    # 100 x 200 * 0.6 -> 60 x 120; factors 0.6 on both axes
    assert scaled["image"].shape == (3, 60, 120) and scaled["image"].dtype == torch.uint8
    assert scaled["instances"].image_size == (60, 120)
    assert scaled["instances"].gt_boxes.tensor.tolist() == [[6.0, 12.0, 66.0, 36.0]]
    assert np.allclose(scaled["instances"].gt_masks.polygons[0][0], [6.0, 12.0, 66.0, 12.0, 66.0, 36.0])
    assert scaled["instances"].gt_classes.tolist() == [1]
    assert (scaled["height"], scaled["width"]) == (100, 200)  # original size kept for outputs
    assert item["instances"].gt_boxes.tensor.tolist() == [[10.0, 20.0, 110.0, 60.0]]  # input untouched


def test_odd_sizes_use_per_axis_factors():
    assert scaled_size(101, 203, 0.4) == (40, 81)
    item = make_item()
    item["image"] = torch.zeros(3, 101, 203, dtype=torch.uint8)
    item["instances"] = Instances((101, 203), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 203.0, 101.0]])))
    (scaled,) = rescale_batch([item], 0.4)
    assert torch.allclose(scaled["instances"].gt_boxes.tensor, torch.tensor([[0.0, 0.0, 81.0, 40.0]]))


def test_bitmasks_follow_the_image():
    masks = torch.zeros(1, 40, 40, dtype=torch.bool)
    masks[0, 10:30, 20:40] = True
    item = {"image": torch.zeros(3, 40, 40), "instances": Instances((40, 40), gt_masks=BitMasks(masks))}
    (scaled,) = rescale_batch([item], 0.5)
    expected = torch.zeros(20, 20, dtype=torch.bool)
    expected[5:15, 10:20] = True
    assert torch.equal(scaled["instances"].gt_masks.tensor[0], expected)


def test_scale_factors_per_image_by_hand():
    from mutualnet_det.data.rescale import scale_factors

    original = [{"image": torch.zeros(3, 100, 200)}, {"image": torch.zeros(3, 101, 203)}]
    rescaled = rescale_batch(original, 0.4)  # 40 x 80 and 40 x 81
    assert scale_factors(original, rescaled) == [(80 / 200, 40 / 100), (81 / 203, 40 / 101)]
