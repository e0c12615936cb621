"""Running an exported (width, resolution scale) (deploy/export.py) like Detectron2's
DefaultPredictor: a BGR image in, Instances in the image's coordinates out.

The graph runs in ONNX Runtime (the `onnxruntime` package, an optional dependency) or as
TorchScript; around it, the same steps as the PyTorch model's: the test resize before, and
Detectron2's `detector_postprocess` after (boxes scaled to the image, masks pasted by
`modeling/mask_paste.py`).
"""
import json
import os
from typing import Dict

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..modeling.mask_paste import BoxPastedMasks

BACKENDS = ("onnxruntime", "torchscript")


class ExportedPredictor:
    """One exported configuration. description: the <name>.json export_width wrote; backend:
    "onnxruntime" (the .onnx file) or "torchscript" (the .ts file); threads: intra-op threads
    (ONNX Runtime; default torch's current count)."""

    def __init__(self, description: str, backend: str = "onnxruntime", threads: int = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: choose from {list(BACKENDS)}")
        with open(description) as f:
            self.description = json.load(f)
        file_key = "onnx" if backend == "onnxruntime" else "torchscript"
        if file_key not in self.description["files"]:
            raise ValueError(f"{description} has no {file_key} export (exported: {sorted(self.description['files'])}); "
                             f"export it with tools/export_width.py --formats {file_key}")
        path = os.path.join(os.path.dirname(description), self.description["files"][file_key])
        self.backend = backend
        self.width, self.resolution_scale = self.description["width"], self.description["resolution_scale"]
        self.resize = T.ResizeShortestEdge(self.description["min_size_test"], self.description["max_size_test"])
        if backend == "onnxruntime":
            try:
                import onnxruntime
            except ImportError:
                raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            self.module = torch.jit.load(path, map_location="cpu").eval()

    def _run(self, image: torch.Tensor):
        if self.backend == "onnxruntime":
            return [torch.from_numpy(o) for o in self.session.run(None, {"image": image.numpy()})]
        with torch.no_grad():
            return list(self.module(image))

    def __call__(self, original_image: np.ndarray) -> Dict:
        image = original_image[:, :, ::-1] if self.description["input_format"] == "RGB" else original_image
        resized = self.resize.get_transform(image).apply_image(image)
        outputs = dict(zip(self.description["outputs"],
                           self._run(torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)))))
        instances = Instances(resized.shape[:2], pred_boxes=Boxes(outputs["boxes"]), scores=outputs["scores"],
                              pred_classes=outputs["classes"])
        if "masks" in outputs:
            instances.pred_masks = BoxPastedMasks(outputs["masks"][:, 0])
        return {"instances": detector_postprocess(instances, *original_image.shape[:2])}
