"""The side-by-side demo on two small random-weight models."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from helpers import REPO, tiny_cfg

from mutualnet_det.bn_calibration import calibration_batches
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.evaluation.visualization import TITLE_HEIGHT, SlimmablePredictor, render_comparison, size_class

CONFIG_OVERRIDES = {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 8,
                    "MUTUALNET.BN_CALIB.NUM_BATCHES": 1}


@pytest.fixture(scope="module")
def predictors():
    made = []
    for seed, method in ((0, "MutualNet"), (1, "US-Net")):
        cfg = tiny_cfg(**CONFIG_OVERRIDES)
        torch.manual_seed(seed)
        model = MutualNetTrainer.build_model(cfg)
        made.append(SlimmablePredictor(cfg, model, method, calibration_batches(cfg)))
    return made


def test_comparison_grid_layout_titles_and_size_counts(predictors):
    dataset_dict = DatasetCatalog.get("shapes_val")[0]
    image = read_image(dataset_dict["file_name"], format="BGR")
    metadata = MetadataCatalog.get("shapes_val")
    canvas, rows = render_comparison(image, predictors, [1.0, 0.25], 1.0, metadata, 0.0, dataset_dict)
    assert len(rows) == 2 and all(len(row) == 3 for row in rows)  # widths x (2 models + ground truth)
    height, width = image.shape[:2]
    assert canvas.shape == (2 * (height + TITLE_HEIGHT), 3 * width, 3)
    titles = [panel.title for row in rows for panel in row]
    assert titles[0].startswith("MutualNet  width 1  scale 1") and "GFLOPs" in titles[0]
    assert titles[1].startswith("US-Net  width 1") and titles[2] == "ground truth"
    assert titles[3].startswith("MutualNet  width 0.25")
    # the title bar is drawn (dark text pixels on white) above each panel
    for column in range(3):
        bar = canvas[:TITLE_HEIGHT, column * width:(column + 1) * width]
        assert (bar < 100).any() and (bar == 255).mean() > 0.5
    for panel in (p for row in rows for p in row[:2]):
        areas = panel.instances.pred_masks.flatten(1).sum(1).numpy()
        assert len(areas) > 0
        expected = {k: int(sum(size_class(a) == k for a in areas)) for k in ("small", "medium", "large")}
        assert panel.counts == expected
    coco = json.load(open(MetadataCatalog.get("shapes_val").json_file))  # areas as written by the generator
    gt_areas = [a["area"] for a in coco["annotations"] if a["image_id"] == dataset_dict["image_id"]]
    assert len(gt_areas) == len(dataset_dict["annotations"])
    assert rows[0][2].counts["small"] == sum(a < 32 ** 2 for a in gt_areas)
    assert rows[0][2].counts["large"] == sum(a > 96 ** 2 for a in gt_areas)


def test_gflops_in_titles_fall_with_width(predictors):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    _, rows = render_comparison(image, predictors[:1], [1.0, 0.25], 1.0, MetadataCatalog.get("shapes_val"), 0.0)
    wide, narrow = (float(row[0].title.split()[-2]) for row in rows)
    assert wide > narrow > 0


def test_cli_renders_skips_unreadable_inputs_and_reports_failure(tmp_path):
    paths = []
    for seed, name in ((0, "a"), (1, "b")):
        cfg = tiny_cfg(**CONFIG_OVERRIDES)
        torch.manual_seed(seed)
        model = MutualNetTrainer.build_model(cfg)
        DetectionCheckpointer(model, str(tmp_path)).save(name)
        paths.append(str(tmp_path / f"{name}.pth"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"definitely not an image")
    image = tmp_path / "shape.png"
    image.write_bytes(open(DatasetCatalog.get("shapes_val")[1]["file_name"], "rb").read())
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""_BASE_: "{os.path.join(REPO, 'configs', 'Shapes', 'Base-Shapes.yaml')}"
MODEL:
  RESNETS: {{STEM_OUT_CHANNELS: 16}}
  FPN: {{OUT_CHANNELS: 32}}
  ROI_BOX_HEAD: {{FC_DIM: 32}}
  ROI_MASK_HEAD: {{CONV_DIM: 16, NUM_CONV: 1}}
  ROI_HEADS: {{SCORE_THRESH_TEST: 0.0}}
INPUT: {{MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 64, MIN_SIZE_TRAIN: [64], MAX_SIZE_TRAIN: 64}}
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER: {{IMS_PER_BATCH: 2}}
TEST: {{DETECTIONS_PER_IMAGE: 8}}
MUTUALNET: {{BN_CALIB: {{NUM_BATCHES: 1}}}}
""")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", str(config),
         "--compare-config", str(config), "--compare-weights", paths[1], "--input", str(broken), str(image),
         "--output", str(tmp_path / "out"), "--width", "0.5", "--confidence-threshold", "0.0",
         "--opts", "MODEL.WEIGHTS", paths[0]],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "skipped" in result.stdout + result.stderr and "broken.png" in result.stdout + result.stderr
    assert os.listdir(tmp_path / "out") == ["shape_comparison.png"]


def test_images_picked_by_ground_truth_object_sizes():
    from pycocotools import mask as mask_util

    from mutualnet_det.evaluation.visualization import pick_by_object_size

    def record(name, sides):
        """An image of 200 x 200 with square objects of these sides (area side^2: < 32^2 small, > 96^2 large)."""
        annotations = []
        for side in sides:
            mask = np.zeros((200, 200), dtype=np.uint8, order="F")
            mask[:side, :side] = 1
            rle = mask_util.encode(mask)
            annotations.append({"segmentation": dict(rle, counts=rle["counts"].decode()), "bbox": [0, 0, side, side],
                                "bbox_mode": 1, "category_id": 0})
        return {"file_name": name, "height": 200, "width": 200, "annotations": annotations}

    dicts = [record("a", [10, 20, 100]), record("b", [10, 10, 10, 40]), record("c", [150, 120, 5]),
             record("d", [31, 33, 97, 99]), record("e", [])]
    # small counts a 2, b 3, c 1, d 1 (31 px: 961 < 1024; 33 px is medium); large a 1, c 2, d 2 (97, 99 px)
    picked = [d["file_name"] for d in pick_by_object_size(dicts, most_small=2, most_large=2)]
    assert picked == ["b", "a", "c", "d"]
    assert [d["file_name"] for d in pick_by_object_size(dicts, most_small=0, most_large=1)] == ["c"]
