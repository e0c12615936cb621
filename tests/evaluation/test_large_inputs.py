"""Panels are drawn at a bounded size: an 8000 x 8000 input renders one model at two widths in
well under 2 GB (measured in a fresh process: its peak resident memory), and predictions and
ground truth land on the reduced panel where they are on the original."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from helpers import tiny_cfg

from mutualnet_det.evaluation.visualization import MAX_PANEL_SIDE, TITLE_HEIGHT, bounded_for_display, render_comparison

MEASURE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from helpers import tiny_cfg
from detectron2.data import MetadataCatalog
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.evaluation.visualization import SlimmablePredictor, render_comparison
cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 20,
                  "MUTUALNET.BN_CALIB.NUM_BATCHES": 1, "INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TEST": 1333})
torch.manual_seed(0)
from mutualnet_det.bn_calibration import calibration_batches
predictor = SlimmablePredictor(cfg, MutualNetTrainer.build_model(cfg), "MutualNet", calibration_batches(cfg))
tile = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
image = np.tile(tile, (40, 40, 1))  # 8000 x 8000 x 3 uint8 (0.18 GB), made without a larger temporary
def high_water_gb():  # this process's own peak (getrusage's maxrss inherits the parent's at exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 2 ** 20
before = high_water_gb()
canvas, rows = render_comparison(image, [predictor], [1.0, 0.25], 1.0, MetadataCatalog.get("shapes_val"), 0.0)
peak = high_water_gb()
print(json.dumps({"peak_gb": peak, "before_gb": before, "canvas": list(canvas.shape),
                  "detections": [len(p.instances) for row in rows for p in row]}))
"""


def test_an_8000_pixel_input_renders_in_bounded_memory():
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", MEASURE, tests], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["canvas"] == [2 * (MAX_PANEL_SIDE + TITLE_HEIGHT), MAX_PANEL_SIDE, 3]
    assert measured["detections"] == [20, 20]  # both widths drew their detections
    # the whole process (torch, Detectron2, the model, the 0.18 GB image and the rendering) stays
    # under 2 GB, and rendering two widths adds under 1 GB to what was there before it
    assert measured["peak_gb"] < 2.0, measured
    assert measured["peak_gb"] - measured["before_gb"] < 1.0, measured


def test_reduced_panels_keep_positions_and_size_classes():
    """A 2,666-pixel image drawn at 1,333: a box and a mask come back at half the coordinates and
    the ground truth is resized alike, while size classes are the original's."""
    image = np.zeros((2666, 2666, 3), dtype=np.uint8)
    assert bounded_for_display(image).shape == (1333, 1333, 3)
    assert bounded_for_display(image[:100, :200]) is not None and bounded_for_display(image[:100, :200]).shape == (100, 200, 3)

    class OneBox:
        method = "fake"

        def __call__(self, image_bgr, width, scale, output_size=None):
            height, width_px = output_size or image_bgr.shape[:2]
            factor = height / image_bgr.shape[0]
            box = torch.tensor([[400.0, 400.0, 600.0, 600.0]]) * factor  # 200 px: large in the original
            mask = torch.zeros(1, height, width_px, dtype=torch.bool)
            x0, y0, x1, y1 = box[0].round().int().tolist()
            mask[0, y0:y1, x0:x1] = True
            instances = Instances((height, width_px), pred_boxes=Boxes(box), scores=torch.tensor([0.9]),
                                  pred_classes=torch.tensor([0]), pred_masks=mask)
            return instances, 1.0

    record = {"height": 2666, "width": 2666, "annotations": [
        {"bbox": [400.0, 400.0, 200.0, 200.0], "bbox_mode": 1, "category_id": 0,
         "segmentation": [[400.0, 400.0, 600.0, 400.0, 600.0, 600.0, 400.0, 600.0]]}]}
    canvas, rows = render_comparison(image, [OneBox()], [1.0], 1.0, MetadataCatalog.get("shapes_val"), 0.5, record)
    prediction, truth = rows[0]
    assert prediction.counts["large"] == 1 and truth.counts["large"] == 1
    assert torch.equal(prediction.instances.pred_boxes.tensor, torch.tensor([[200.0, 200.0, 300.0, 300.0]]))
    drawn = truth.image[TITLE_HEIGHT:]
    assert drawn.shape[:2] == (1333, 1333)
    assert drawn[250, 250].any() and not drawn[100, 100].any()  # the ground truth is drawn at its reduced place
