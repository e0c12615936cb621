"""Make Detectron2 usable when its compiled extension `detectron2._C` is missing.

The pure-Python Detectron2 installed by `tools/install_detectron2.py` has no `_C`. Before
Detectron2 imports it, we register a stand-in module: importing works, `default_setup` reports
"no compiled ops", and every compiled-only op (deformable conv, rotated boxes / NMS / ROIAlign,
Detectron2's C++ COCOeval) raises `CompiledOpUnavailable` naming the op. COCO metrics are computed
by faster-coco-eval (C++) when installed, otherwise pycocotools; never by the stand-in.

Import `mutualnet_det` before other Detectron2 modules (the tools do). Imported later, it still
works: Detectron2 has then fallen back to pycocotools for COCOeval (re-pointed here) and to a dummy
DeformConv that raises ImportError when built.
"""
import importlib.util
import logging
import sys
import types

logger = logging.getLogger(__name__)

STANDIN_NOTE = "none: this Detectron2 install has no compiled ops (mutualnet_det stand-in for detectron2._C)"


class CompiledOpUnavailable(RuntimeError):
    pass


def _unavailable(op_name):
    def op(*args, **kwargs):
        raise CompiledOpUnavailable(
            f"Detectron2 op '{op_name}' is compiled-only, and this Detectron2 install has no compiled "
            "ops (detectron2._C is missing). Build Detectron2 from source with a compiler "
            "(see docs/installation.md) to use it."
        )

    op.__name__ = op_name
    return op


class _StandInC(types.ModuleType):
    """Stand-in for `detectron2._C`: every attribute is an op that raises CompiledOpUnavailable."""

    __file__ = None
    is_standin = True

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(name)

    @staticmethod
    def get_compiler_version():
        return STANDIN_NOTE

    @staticmethod
    def get_cuda_version():
        return STANDIN_NOTE

    @staticmethod
    def has_cuda():
        return False


# Ops Detectron2 reaches through torch.ops.detectron2 (registered by the real _C).
_TORCH_OPS = {
    "nms_rotated": "nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align_rotated_forward": "roi_align_rotated_forward(Tensor input, Tensor rois, float spatial_scale, "
    "int pooled_height, int pooled_width, int sampling_ratio) -> Tensor",
    "roi_align_rotated_backward": "roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, "
    "int pooled_height, int pooled_width, int batch_size, int channels, int height, int width, "
    "int sampling_ratio) -> Tensor",
}
_torch_library = None


def has_compiled_ops() -> bool:
    module = sys.modules.get("detectron2._C")
    return module is not None and not getattr(module, "is_standin", False)


def install_standin_if_needed() -> bool:
    """Register the stand-in when detectron2._C cannot be imported. Returns True if installed.

    Decided by importing it, not by whether the file exists: a `_C` built for another torch,
    CUDA or Python fails to import (undefined symbols), and Detectron2 would then silently fall
    back to pure-Python COCO evaluation; here it gets the stand-in and a warning naming why."""
    global _torch_library
    if "detectron2._C" in sys.modules:
        return getattr(sys.modules["detectron2._C"], "is_standin", False)
    import detectron2

    if importlib.util.find_spec("detectron2._C") is not None:
        try:
            importlib.import_module("detectron2._C")
            return False
        except ImportError as err:
            logger.warning(f"detectron2._C is installed but does not import ({err}); it was probably built for "
                           "another torch, CUDA or Python: using mutualnet_det's stand-in (no compiled ops). "
                           "Rebuild Detectron2 for this environment to use them (docs/installation.md).")
    import torch

    standin = _StandInC("detectron2._C")
    sys.modules["detectron2._C"] = standin
    detectron2._C = standin
    _torch_library = torch.library.Library("detectron2", "DEF")
    for name, schema in _TORCH_OPS.items():
        _torch_library.define(schema)
        _torch_library.impl(name, _unavailable(name), "CompositeExplicitAutograd")
    _use_python_coco_eval()
    return True


def faster_cocoeval(coco_gt, coco_dt, iou_type):
    """COCOeval of faster-coco-eval (C++) on pycocotools COCO objects; Detectron2's cocoeval_fn."""
    from faster_coco_eval import COCO, COCOeval_faster

    def convert(coco):
        converted = COCO()
        converted.dataset = coco.dataset
        converted.createIndex()
        return converted

    return COCOeval_faster(convert(coco_gt), convert(coco_dt), iou_type, print_function=print)


def _use_python_coco_eval():
    """Point Detectron2's 'fast' COCOeval at faster-coco-eval (or pycocotools), never at _C."""
    from detectron2.evaluation import coco_evaluation

    if importlib.util.find_spec("faster_coco_eval") is not None:
        cocoeval_fn = faster_cocoeval
    else:
        from pycocotools.cocoeval import COCOeval as cocoeval_fn
    coco_evaluation.COCOeval_opt = cocoeval_fn
    defaults = list(coco_evaluation._evaluate_predictions_on_coco.__defaults__)
    defaults[1] = cocoeval_fn  # (kpt_oks_sigmas, cocoeval_fn, img_ids, max_dets_per_image)
    coco_evaluation._evaluate_predictions_on_coco.__defaults__ = tuple(defaults)
