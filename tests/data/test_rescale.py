import numpy as np
import torch
from detectron2.data import DatasetCatalog
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


PAPER_SCALES_AND_0P4 = (192 / 224, 160 / 224, 0.6, 0.4)


def test_downscaled_images_equal_detectron2_test_time_resize():
    """A down-scaled training image is what Detectron2's test resize (PIL bilinear) gives at that
    size: mean |difference| <= 0.5 grey level (plain bilinear without antialiasing: 1.3-4.8)."""
    from detectron2.data.detection_utils import read_image
    from detectron2.data.transforms import ResizeTransform

    records = DatasetCatalog.get("shapes_val")[:3]
    for scale in PAPER_SCALES_AND_0P4:
        for record in records:
            image = read_image(record["file_name"], format="BGR")
            height, width = image.shape[:2]
            (scaled,) = rescale_batch([{"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))}], scale)
            new_height, new_width = scaled_size(height, width, scale)
            reference = ResizeTransform(height, width, new_height, new_width).apply_image(image)
            ours = scaled["image"].numpy().transpose(1, 2, 0)
            assert ours.shape == reference.shape
            difference = np.abs(ours.astype(np.float32) - reference.astype(np.float32)).mean()
            assert difference <= 0.5, (scale, difference)


def test_small_object_mask_downscaled_by_area_keeps_its_box():
    """A 5 x 5 object at scale 0.4 covers parts of 3 x 3 output pixels; the ones it covers at
    least half of are set, so the mask lies where its box is."""
    masks = torch.zeros(1, 40, 40, dtype=torch.bool)
    masks[0, 11:16, 21:26] = True  # rows [11, 16), columns [21, 26)
    boxes = Boxes(torch.tensor([[21.0, 11.0, 26.0, 16.0]]))
    item = {"image": torch.zeros(3, 40, 40), "instances": Instances((40, 40), gt_masks=BitMasks(masks), gt_boxes=boxes)}
    (scaled,) = rescale_batch([item], 0.4)  # 16 x 16; output pixel k covers input [2.5 k, 2.5 k + 2.5)
    mask = scaled["instances"].gt_masks.tensor[0]
    # By hand, along rows: output 4 = [10, 12.5) is covered over [11, 12.5): 0.6; output 5 =
    # [12.5, 15): 1.0; output 6 = [15, 17.5) over [15, 16): 0.4. Columns 8, 9, 10 likewise 0.6,
    # 1.0, 0.4. Products >= 0.5: (4, 8) 0.36 no; (4, 9) 0.6; (5, 8) 0.6; (5, 9) 1.0; (5, 10) 0.4 no.
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4, 9] = expected[5, 8] = expected[5, 9] = True
    assert torch.equal(mask, expected)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = scaled["instances"].gt_boxes.tensor[0]  # 8.4, 4.4, 10.4, 6.4
    assert abs(xs.min() - box[0]) < 1 and abs(ys.min() - box[1]) < 1
    assert abs(xs.max() + 1 - box[2]) < 1 and abs(ys.max() + 1 - box[3]) < 1


def test_no_side_rounds_below_one_pixel():
    assert scaled_size(3, 200, 0.2) == (1, 40)  # 0.6 rounds to 1
    assert scaled_size(200, 3, 0.2) == (40, 1)
    assert scaled_size(2, 2, 0.1) == (1, 1)  # 0.2 rounds to 0: kept at 1


def test_bitmasks_of_a_wide_image_by_hand():
    """4 x 6 masks at scale 0.5 -> 2 x 3; each output pixel is a 2 x 2 block. A full block is set,
    a half-covered one (coverage exactly 0.5: "at least half") is set, a quarter is not."""
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # block (0, 0): 1.0
    masks[0, 2:4, 2] = True  # block (1, 1): 0.5
    masks[0, 0, 4] = True  # block (0, 2): 0.25
    item = {"image": torch.zeros(3, 4, 6), "instances": Instances((4, 6), gt_masks=BitMasks(masks))}
    (scaled,) = rescale_batch([item], 0.5)
    assert torch.equal(scaled["instances"].gt_masks.tensor[0], torch.tensor([[True, False, False], [False, True, False]]))


def test_mean_over_new_rows_by_hand_on_the_requested_device():
    """5 old pixels onto 2 new ones: a new pixel spans 2.5 old ones; old pixel 2 is split evenly."""
    from mutualnet_det.data.rescale import _mean_over_new_rows

    values = torch.tensor([[1, 2, 3, 4, 5]], dtype=torch.uint8).T  # 5 rows of one column
    expected = torch.tensor([[1 + 2 + 0.5 * 3], [0.5 * 3 + 4 + 5]]) / 2.5
    assert torch.allclose(_mean_over_new_rows(values, 2), expected, rtol=0, atol=1e-6)
    # "meta" stands in for a GPU here: the work is done where the masks are
    masks = torch.zeros(2, 4, 6, dtype=torch.bool, device="meta")
    import mutualnet_det.data.rescale as rescale
    assert rescale._resize_bitmasks(masks, 2, 3).device.type == "meta"


def dense_area_resize(masks, new_height, new_width):
    """The reference: coverage as a dense product of the two axes' overlap matrices, in float64
    (what the implementation replaced: O(new_height x H x W) per mask)."""
    def overlap(old_size, new_size):
        pixel = old_size / new_size
        starts = torch.arange(new_size, dtype=torch.float64)[:, None] * pixel
        old = torch.arange(old_size, dtype=torch.float64)[None, :]
        return (torch.minimum(starts + pixel, old + 1) - torch.maximum(starts, old)).clamp(min=0) / pixel

    coverage = torch.einsum("oh,nhw,pw->nop", overlap(masks.shape[-2], new_height), masks.double(),
                            overlap(masks.shape[-1], new_width))
    return coverage >= 0.5 - 1e-6


def test_bitmask_resize_equals_the_dense_area_product():
    """Random blobs and thin lines, odd sizes, the paper's scales and 0.4: the O(pixels) resize
    sets exactly the pixels the dense float64 product sets."""
    from mutualnet_det.data.rescale import _resize_bitmasks

    generator = torch.Generator().manual_seed(0)
    for height, width in ((97, 131), (64, 64), (33, 250)):
        masks = torch.rand(6, height, width, generator=generator) > 0.6
        masks[0] = False
        masks[0, 10:13, 5:40] = True  # a thin bar
        masks[1] = torch.rand(height, width, generator=generator) > 0.97  # sparse speckle
        for scale in PAPER_SCALES_AND_0P4:
            new_height, new_width = scaled_size(height, width, scale)
            ours = _resize_bitmasks(masks, new_height, new_width)
            assert torch.equal(ours, dense_area_resize(masks, new_height, new_width)), (height, width, scale)


def test_black_white_and_float_images_keep_their_values():
    """Antialiased bilinear averages with non-negative weights: a constant image stays constant.
    uint8 images come back as uint8 (0 and 255 exactly); float images are not rounded."""
    for value, dtype in ((0, torch.uint8), (255, torch.uint8), (0.25, torch.float32)):
        (scaled,) = rescale_batch([{"image": torch.full((3, 40, 60), value, dtype=dtype)}], 0.4)
        assert scaled["image"].dtype == dtype
        # float: the weights sum to 1 within float32 rounding; rounding to integers would give 0
        assert torch.allclose(scaled["image"].float(), torch.full((3, 16, 24), float(value)), rtol=0, atol=1e-6)


def test_test_time_input_at_a_scale_equals_detectron2_resize_by_hand():
    """scaled_test_input: Detectron2's test-time resize with both sides of the config times the
    scale; the model input is CHW float32 and "height"/"width" keep the original size."""
    from detectron2.config import get_cfg
    from detectron2.data.transforms import ResizeTransform

    from mutualnet_det.data.rescale import scaled_test_cfg, scaled_test_input

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 80, 200
    cfg.freeze()
    scaled = scaled_test_cfg(cfg, 0.5)
    assert (scaled.INPUT.MIN_SIZE_TEST, scaled.INPUT.MAX_SIZE_TEST) == (40, 100)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (80, 200)  # the original untouched
    tiny = scaled_test_cfg(cfg, 0.005)  # 0.4 and 1.0 pixels
    assert (tiny.INPUT.MIN_SIZE_TEST, tiny.INPUT.MAX_SIZE_TEST) == (1, 1)

    rng = np.random.default_rng(0)
    # short side 100 -> 40 (60 x 40 by hand: 150 * 0.4); 100 x 400 -> 40 x 160 exceeds the long
    # side 100, so both shrink by 100 / 160 -> 25 x 100
    for (height, width), (new_height, new_width) in (((150, 100), (60, 40)), ((100, 400), (25, 100))):
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        item = scaled_test_input(image, cfg, 0.5)
        reference = ResizeTransform(height, width, new_height, new_width).apply_image(image)
        assert item["image"].dtype == torch.float32
        assert torch.equal(item["image"], torch.as_tensor(reference.transpose(2, 0, 1).astype(np.float32)))
        assert (item["height"], item["width"]) == (height, width)


def test_a_batch_is_rescaled_on_the_models_device(monkeypatch):
    """rescale_batch(..., device) moves each image and its ground truth there first, so the resize
    runs where the model is ("meta" stands in for a GPU for an image; the instances' move is
    recorded); scale 1.0 leaves the batch as it is."""
    (scaled,) = rescale_batch([{"image": torch.zeros(3, 40, 40, dtype=torch.uint8)}], 0.5, device="meta")
    assert scaled["image"].device.type == "meta" and scaled["image"].shape == (3, 20, 20)
    masks = torch.zeros(1, 40, 40, dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    item = {"image": torch.zeros(3, 40, 40, dtype=torch.uint8),
            "instances": Instances((40, 40), gt_masks=BitMasks(masks), gt_boxes=Boxes(torch.tensor([[5.0, 5, 20, 20]])))}
    moved = []
    real_to = Instances.to
    monkeypatch.setattr(Instances, "to", lambda self, *args, **kwargs: moved.append(args) or real_to(self, *args, **kwargs))
    (on_device,) = rescale_batch([item], 0.5, device="cpu")
    (plain,) = rescale_batch([item], 0.5)
    assert moved == [("cpu",)]
    assert torch.equal(on_device["instances"].gt_masks.tensor, plain["instances"].gt_masks.tensor)
    assert rescale_batch([item], 1.0, device="meta")[0] is item


def test_row_overlaps_are_computed_on_the_masks_device(monkeypatch):
    """On a GPU, indices and weights made on the CPU would be copied over (or fail) at every
    gather; record the device each _overlaps call is asked for (masks on "meta", not the CPU)."""
    import mutualnet_det.data.rescale as rescale

    requested = []
    real_overlaps = rescale._overlaps
    monkeypatch.setattr(rescale, "_overlaps", lambda old_size, new_size, device: requested.append(
        (old_size, new_size, device)) or real_overlaps(old_size, new_size, device))
    masks = torch.zeros(2, 4, 6, dtype=torch.bool, device="meta")
    assert rescale._resize_bitmasks(masks, 2, 3).shape == (2, 2, 3)
    assert requested == [(4, 2, masks.device), (6, 3, masks.device)]
