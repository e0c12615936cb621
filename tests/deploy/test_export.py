"""Exported widths against the PyTorch slimmable model they come from: TorchScript and ONNX
Runtime, at two widths (and one scale below 1), on the embedded validation images (other sizes
than the one traced), boxes, scores, classes and pasted masks within stated tolerances."""
import json

import numpy as np
import pytest
import torch

from mutualnet_det.bn_calibration import calibrate_bn, use_configuration
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.deploy.export import export_width
from mutualnet_det.runtime.exported import ExportedPredictor
from mutualnet_det.runtime.latency import validation_images

from .test_freeze import trained_like
from helpers import toy_batch

onnxruntime = pytest.importorskip("onnxruntime")  # an optional dependency (setup.py extras "deploy", in "test")

# float32 graphs re-ordered by tracing / ONNX Runtime's kernels: boxes within this (pixels),
# scores within 1e-4, classes equal, masks differing on at most this fraction of pixels
BOX_TOLERANCE, SCORE_TOLERANCE, MASK_PIXELS = 1e-3, 1e-4, 1e-3


def reference(cfg, model, image, width, scale):
    use_configuration(model, width, scale)
    with torch.no_grad():
        return model([scaled_test_input(image, cfg, scale)])[0]["instances"]


def assert_close(exported, expected):
    assert len(exported) == len(expected) > 0
    assert (exported.pred_boxes.tensor - expected.pred_boxes.tensor).abs().max() <= BOX_TOLERANCE
    assert (exported.scores - expected.scores).abs().max() <= SCORE_TOLERANCE
    assert torch.equal(exported.pred_classes, expected.pred_classes)
    assert exported.pred_masks.shape == expected.pred_masks.shape
    assert (exported.pred_masks != expected.pred_masks).float().mean() <= MASK_PIXELS


@pytest.mark.parametrize("width,scale", [(1.0, 1.0), (0.25, 0.6)])
def test_exported_width_equals_the_slimmable_model(tmp_path, width, scale):
    cfg, model = trained_like(18, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.3, "TEST.DETECTIONS_PER_IMAGE": 50})
    with torch.no_grad():  # confident classes (random weights give every class ~1/5): counts vary by image
        model.roi_heads.box_predictor.cls_score.weight.mul_(40)
    calibrate_bn(model, iter([toy_batch(seed=i) for i in range(2)]), width, scale, 2)
    model.eval()
    images = validation_images(cfg, 3)
    description = export_width(cfg, model, width, scale, str(tmp_path), images[0])
    name = "w1" if scale == 1.0 else "w0.25_s0.6"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.onnx", f"{name}.ts"]
    assert json.load(open(tmp_path / f"{name}.json")) == description
    assert description["outputs"] == ["boxes", "scores", "classes", "masks"]
    # other sizes than the traced one: the validation images, and one of another aspect ratio
    images = images + [np.ascontiguousarray(np.concatenate([images[1], images[2][:, :40]], axis=1))]
    counts = set()
    for backend in ("onnxruntime", "torchscript"):
        predictor = ExportedPredictor(str(tmp_path / f"{name}.json"), backend, threads=1)
        for image in images:
            expected = reference(cfg, model, image, width, scale)
            exported = predictor(image)["instances"]
            assert exported.image_size == image.shape[:2]
            assert_close(exported, expected)
            counts.add(len(expected))
    assert len(counts) > 1  # the images give different numbers of detections: not a traced constant


def test_export_and_runtime_errors(tmp_path):
    cfg, model = trained_like(18)
    image = validation_images(cfg, 1)[0]
    with pytest.raises(ValueError, match=r"export formats \['tflite'\]: choose from \['torchscript', 'onnx'\]"):
        export_width(cfg, model, 1.0, 1.0, str(tmp_path), image, formats=["tflite"])
    export_width(cfg, model, 1.0, 1.0, str(tmp_path), image, formats=["torchscript"])
    with pytest.raises(ValueError, match="has no onnx export.*--formats onnx"):
        ExportedPredictor(str(tmp_path / "w1.json"), "onnxruntime")
    with pytest.raises(ValueError, match="backend 'tensorrt'"):
        ExportedPredictor(str(tmp_path / "w1.json"), "tensorrt")
