"""Detectron2's COCOEvaluator path (faster-coco-eval here) against pycocotools and a hand-worked AP."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from helpers import tiny_cfg

from mutualnet_det.evaluation.width_sweep import build_evaluator

SIZE = 64


def box_mask(x0, y0, x1, y1):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask))
    encoded["counts"] = encoded["counts"].decode()
    return encoded


GT = [(4, 4, 24, 24), (30, 30, 60, 50)]
# one exact hit (score 0.9), one false positive (0.8) far from both; the second object is missed
PREDICTIONS = [((4, 4, 24, 24), 0.9), ((40, 2, 60, 20), 0.8)]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinycoco")
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0, "segmentation": rle(box_mask(x0, y0, x1, y1))}
                   for i, (x0, y0, x1, y1) in enumerate(GT)]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}],
            "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    json_path = folder / "gt.json"
    json_path.write_text(json.dumps(coco))
    name = "tiny_hand_made_coco"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(json_file=str(json_path), thing_classes=["thing"],
                                      thing_dataset_id_to_contiguous_id={1: 0})
    return name, str(json_path)


def pycocotools_ap(json_path, iou_type):
    gt = COCO(json_path)
    results = []
    for (x0, y0, x1, y1), score in PREDICTIONS:
        entry = {"image_id": 1, "category_id": 1, "score": score}
        if iou_type == "bbox":
            entry["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        else:
            entry["segmentation"] = rle(box_mask(x0, y0, x1, y1))
        results.append(entry)
    evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats


def test_evaluator_ap_equals_pycocotools_and_the_hand_worked_value(tiny_dataset):
    name, json_path = tiny_dataset
    evaluator = build_evaluator(tiny_cfg(), name)
    evaluator.reset()
    boxes = torch.tensor([b for b, _ in PREDICTIONS], dtype=torch.float32)
    instances = Instances((SIZE, SIZE), pred_boxes=Boxes(boxes), scores=torch.tensor([s for _, s in PREDICTIONS]),
                          pred_classes=torch.tensor([0, 0]),
                          pred_masks=torch.stack([torch.from_numpy(box_mask(*b)).bool() for b, _ in PREDICTIONS]))
    evaluator.process([{"image_id": 1, "height": SIZE, "width": SIZE}], [{"instances": instances}])
    results = evaluator.evaluate()
    # By hand: ranked hits [TP, FP] of 2 objects -> recall 0.5 at precision 1, then nothing.
    # COCO's 101-point interpolated AP = 51 recall points (0.00 .. 0.50) of precision 1 / 101.
    hand_ap = 100 * 51 / 101
    for task in ("bbox", "segm"):
        reference = pycocotools_ap(json_path, task)
        assert results[task]["AP"] == pytest.approx(100 * reference[0], abs=1e-4)
        assert results[task]["AP50"] == pytest.approx(100 * reference[1], abs=1e-4)
        assert results[task]["AP"] == pytest.approx(hand_ap, abs=1e-4)
