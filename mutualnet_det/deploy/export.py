"""Export one (width, resolution scale) of a slimmable model to TorchScript and ONNX.

As Detectron2's tools/deploy/export_model.py does for a stock model: the model is frozen at the
width (deploy/freeze.py: an ordinary GeneralizedRCNN with sliced weights and that
configuration's BN statistics), wrapped in Detectron2's `TracingAdapter` around
`inference(..., do_postprocess=False)`, and traced. The graph takes one CHW float32 image in the
config's INPUT.FORMAT, already resized by the test resize x the scale, and returns boxes, scores,
classes and (with masks) the 28 x 28 mask probabilities, in the resized image's coordinates.
Resizing before the graph and scaling boxes / pasting masks after it run outside it
(runtime/exported.py), as in Detectron2's deployment, because tracing would freeze their
data-dependent Python control flow.

Files: <output>/<name>.ts (TorchScript), <name>.onnx (ONNX, opset 17, any image size), and
<name>.json (what a runtime needs: the configuration, the resize, the input format, the outputs),
<name> being w<width>[_s<scale>].
"""
import json
import os
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.rescale import scaled_test_cfg, scaled_test_input
from .freeze import freeze_width

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17


def export_name(width: float, resolution_scale: float) -> str:
    return f"w{width:g}" + (f"_s{resolution_scale:g}" if resolution_scale != 1.0 else "")


def graph_outputs(model: nn.Module, inputs):
    """What the exported graph returns for one image: boxes, scores, classes[, mask probabilities]."""
    instances = model.inference(inputs, do_postprocess=False)[0]
    outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
    return outputs + ((instances.pred_masks,) if instances.has("pred_masks") else ())


def export_width(cfg, model: nn.Module, width: float, resolution_scale: float, output: str,
                 example_image: np.ndarray, formats: Sequence[str] = EXPORT_FORMATS) -> Dict:
    """Freeze `model` at (width, resolution_scale) and write it in each of `formats` into
    `output`, traced on `example_image` (HWC uint8, BGR as DefaultPredictor takes it); returns
    the description written beside them (<name>.json)."""
    from detectron2.export import TracingAdapter

    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise ValueError(f"export formats {list(formats)}: choose from {list(EXPORT_FORMATS)}")
    frozen = freeze_width(model, width, resolution_scale).eval()
    image = example_image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else example_image
    example = scaled_test_input(np.ascontiguousarray(image), cfg, resolution_scale)["image"].to(frozen.pixel_mean.device)
    adapter = TracingAdapter(frozen, [{"image": example}], graph_outputs).eval()
    names = ["boxes", "scores", "classes"] + (["masks"] if cfg.MODEL.MASK_ON else [])
    os.makedirs(output, exist_ok=True)
    name = export_name(width, resolution_scale)
    files = {}
    with torch.no_grad():
        if "torchscript" in formats:
            files["torchscript"] = f"{name}.ts"
            torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False).save(os.path.join(output, files["torchscript"]))
        if "onnx" in formats:
            files["onnx"] = f"{name}.onnx"
            torch.onnx.export(adapter, adapter.flattened_inputs, os.path.join(output, files["onnx"]), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["image"], output_names=names,
                              dynamic_axes={"image": {1: "height", 2: "width"},
                                            **{n: {0: "detections"} for n in names}})
    scaled = scaled_test_cfg(cfg, resolution_scale)
    description = {"width": width, "resolution_scale": resolution_scale, "input_format": cfg.INPUT.FORMAT,
                   "min_size_test": scaled.INPUT.MIN_SIZE_TEST, "max_size_test": scaled.INPUT.MAX_SIZE_TEST,
                   "outputs": names, "files": files, "onnx_opset": ONNX_OPSET if "onnx" in files else None}
    with open(os.path.join(output, f"{name}.json"), "w") as f:
        json.dump(description, f, indent=1)
    return description
