"""The vectorised mask paste against Detectron2's own paste_masks_in_image on the same inputs:
boxes inside, across and outside the image, tiny and image-sized, both of Detectron2's regions
(CPU: around each box; CUDA: the whole image), binary and uint8 output; and the model's outputs
with either paste."""
import pytest
import torch
from detectron2.layers.mask_ops import _do_paste_mask, paste_masks_in_image

from helpers import tiny_cfg
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.modeling.mask_paste import paste_masks_in_boxes


def random_case(seed, count=40, height=97, width=130, size=28):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(count, size, size, generator=generator)
    # boxes as detector_postprocess gives them: clipped to the image, not empty
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])
    extent = torch.rand(count, 2, generator=generator) ** 2 * torch.tensor([width, height]) + 0.3
    boxes = torch.cat([corner, torch.minimum(corner + extent, torch.tensor([width, height]))], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole image
    boxes[1] = torch.tensor([0.0, 20.5, 60.3, height])  # on two borders
    boxes[2] = torch.tensor([50.2, 40.7, 50.9, 41.1])  # under a pixel
    boxes[3], masks[3] = torch.tensor([10.2, 5.0, 120.0, 90.0]), 1.0  # a full mask: 0.5 exactly on its edges
    return masks, boxes, (height, width)


def detectron2_values(masks, boxes, shape):
    """Detectron2's sampled mask values over the whole image (its CUDA region), before the threshold."""
    values, _ = _do_paste_mask(masks[:, None], boxes, *shape, skip_empty=False)
    return values


@pytest.mark.parametrize("skip_empty", [True, False], ids=["cpu_region", "cuda_region"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_detectron2_paste_up_to_float_rounding(seed, skip_empty):
    masks, boxes, shape = random_case(seed)
    if skip_empty:
        expected = paste_masks_in_image(masks, boxes, shape)  # on CPU: one by one, around each box
    else:  # Detectron2's CUDA path on this CPU: chunks over the whole image
        expected = torch.zeros(len(masks), *shape, dtype=torch.bool)
        expected[:] = detectron2_values(masks, boxes, shape) >= 0.5
    got = paste_masks_in_boxes(masks, boxes, shape, skip_empty=skip_empty)
    assert got.dtype == torch.bool and got.shape == expected.shape
    differ = got != expected
    # only where the sampled value is within float rounding of the threshold may they disagree
    near = (detectron2_values(masks, boxes, shape) - 0.5).abs() < 1e-5
    assert not (differ & ~near).any(), int((differ & ~near).sum())
    assert expected.sum() > 1000  # the case pastes something


def test_chunks_uint8_output_and_empty_input(monkeypatch):
    masks, boxes, shape = random_case(3)
    expected = paste_masks_in_image(masks, boxes, shape, threshold=-1)  # uint8 0-255
    monkeypatch.setattr("mutualnet_det.modeling.mask_paste.CHUNK_ELEMENTS", 5000)  # many chunks
    got = paste_masks_in_boxes(masks, boxes, shape, threshold=-1)
    assert got.dtype == torch.uint8
    assert (got.int() - expected.int()).abs().max() <= 1  # truncation of x * 255 after rounding
    empty = paste_masks_in_boxes(masks[:0], boxes[:0], shape)
    assert empty.shape == (0, *shape) and empty.dtype == torch.bool
    with pytest.raises(ValueError, match="square"):
        paste_masks_in_boxes(masks[:, :, :20], boxes, shape)


def test_the_model_pastes_as_detectron2_with_either_setting():
    images = [{"image": torch.randint(0, 256, (3, 64, 80), generator=torch.Generator().manual_seed(i),
                                      dtype=torch.uint8), "height": 100, "width": 125} for i in range(2)]
    outputs = {}
    for paste in ("vectorized", "detectron2"):
        cfg = tiny_cfg(**{"MUTUALNET.TEST.MASK_PASTE": paste, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
        torch.manual_seed(0)
        model = MutualNetTrainer.build_model(cfg).eval()
        with torch.no_grad():
            outputs[paste] = [o["instances"] for o in model(images)]
    for ours, theirs in zip(outputs["vectorized"], outputs["detectron2"]):
        assert len(ours) == len(theirs) > 0 and ours.image_size == (100, 125)
        assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
        assert (ours.pred_masks != theirs.pred_masks).float().mean() < 1e-4
        assert ours.pred_masks.any()
