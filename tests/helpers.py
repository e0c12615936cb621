"""Small configs and hand-built batches shared by the tests."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from torch.utils._python_dispatch import TorchDispatchMode

import mutualnet_det

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CONFIG = os.path.join(REPO, "configs", "Shapes", "Base-Shapes.yaml")


def tiny_cfg(**overrides):
    """The embedded-dataset config shrunk to run a train step in well under a second."""
    cfg = get_cfg()
    mutualnet_det.add_mutualnet_config(cfg)
    cfg.merge_from_file(SHAPES_CONFIG)
    cfg.merge_from_list([
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 16,
        "MODEL.ROI_MASK_HEAD.NUM_CONV", 1, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
        "MUTUALNET.BN_CALIB.NUM_BATCHES", 2, "MUTUALNET.TEST.FLOPS_NUM_IMAGES", 1,
        "SOLVER.WARMUP_ITERS", 1,
    ])
    # The suite runs on the CPU on every machine (its references are CPU computations); a CUDA
    # test asks for MODEL.DEVICE cuda itself.
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


# The in-training width sweep of tests/engine/ddp_worker.py --sweep, which its test re-evaluates.
DDP_SWEEP_OVERRIDES = {"DATASETS.TEST": ("shapes_val",), "MUTUALNET.BN_CALIB.AFTER_TRAIN": True,
                       "MUTUALNET.TEST.WIDTHS": (1.0, 0.25), "MUTUALNET.TEST.RESOLUTION_SCALES": (1.0,)}


def toy_batch(num_images=2, size=64, seed=0):
    """Detectron2 training inputs: random images, two boxes each with filled bitmasks."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = True
        instances = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 2]),
                              gt_masks=BitMasks(masks))
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (`.item()`, `float(t)`, `if t:`: the operator
    aten._local_scalar_dense): visible on CPU, and on CUDA each one waits for the GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))
