"""Without detectron2._C: imports work, compiled-only ops fail clearly, metrics do not use _C."""
import pytest
import torch

from mutualnet_det.compat import CompiledOpUnavailable, has_compiled_ops

pytestmark = pytest.mark.skipif(has_compiled_ops(), reason="this Detectron2 has its compiled ops")


def test_rotated_ops_raise_naming_the_op():
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(CompiledOpUnavailable, match="'nms_rotated'.*no compiled ops"):
        nms_rotated(torch.zeros(2, 5), torch.zeros(2), 0.5)
    with pytest.raises(CompiledOpUnavailable, match="box_iou_rotated"):
        pairwise_iou_rotated(torch.ones(1, 5), torch.ones(1, 5))


def test_deformable_conv_runs_on_cpu_and_its_cuda_kernel_raises():
    from detectron2 import _C
    from detectron2.layers import DeformConv

    conv = DeformConv(4, 4, kernel_size=3, padding=1)  # CPU: Detectron2 calls torchvision's op
    assert conv(torch.randn(1, 4, 8, 8), torch.zeros(1, 18, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(CompiledOpUnavailable, match="deform_conv_forward"):
        _C.deform_conv_forward()  # what the CUDA path calls


def test_environment_report_works():
    from detectron2.utils.collect_env import collect_env_info

    assert "no compiled ops" in collect_env_info()


def test_coco_evaluation_does_not_use_the_standin():
    from detectron2.evaluation import coco_evaluation
    from mutualnet_det.compat import faster_cocoeval

    assert coco_evaluation.COCOeval_opt is faster_cocoeval


BROKEN_C = """
import importlib.abc, importlib.machinery, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")

class BrokenC(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # a detectron2._C that exists but fails to import, as one built for another torch does
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "detectron2._C" else None
    def create_module(self, spec):
        raise ImportError("detectron2/_C.so: undefined symbol: _ZN3c1017RegisterOperators")
    def exec_module(self, module):
        pass

sys.meta_path.insert(0, BrokenC())
import mutualnet_det
from mutualnet_det.compat import has_compiled_ops
from detectron2.evaluation import coco_evaluation
print("standin", sys.modules["detectron2._C"].is_standin, "compiled", has_compiled_ops(),
      "cocoeval", coco_evaluation.COCOeval_opt.__name__)
"""


def test_a_c_extension_that_fails_to_import_gets_the_standin_and_a_warning():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", BROKEN_C], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "standin True compiled False cocoeval faster_cocoeval"
    assert ("detectron2._C is installed but does not import (detectron2/_C.so: undefined symbol: "
            "_ZN3c1017RegisterOperators)") in result.stderr
