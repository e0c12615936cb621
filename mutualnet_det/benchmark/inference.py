"""Inference cost: latency (ms, `timing.time_call` statistics) and GFLOPs per (width, resolution
scale) of the slimmable model, its frozen export at that width and Detectron2's stock model, on
one validation image.

The stock model gets the slimmable model's width-1.0 weights and the same RoI pooling, so the
ratio slimmable / stock at width 1.0 is the cost of the slimmable layers alone, and slimmable /
frozen per configuration is the cost of running a width by slicing rather than with plain layers.
"""
import os
from typing import Dict, List, Tuple

import torch

WIDTHS = (1.0, 0.75, 0.5, 0.25)
SCALES = (1.0, 0.6)


def first_test_image(cfg):
    """The first image of cfg.DATASETS.TEST[0], BGR, original size: what every row is timed on."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    return read_image(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"], format="BGR")


def stock_model(cfg, device):
    """Detectron2's GeneralizedRCNN with the stock ResNet-FPN backbone of `cfg`, in eval mode on
    `device`, pooling RoIs as the slimmable model does (MUTUALNET.CPU_ROI_ALIGN), so the ratios
    against it are the slimmable layers' cost. Load the slimmable model's width-1.0 weights into it
    (`width_one_weights`)."""
    from detectron2.modeling import build_model

    from ..modeling.roi_align import swap_roi_align

    stock_cfg = cfg.clone()
    stock_cfg.defrost()
    stock_cfg.MODEL.META_ARCHITECTURE, stock_cfg.MODEL.BACKBONE.NAME = "GeneralizedRCNN", "build_resnet_fpn_backbone"
    stock = build_model(stock_cfg).to(device).eval()
    swap_roi_align(stock, cfg.MUTUALNET.CPU_ROI_ALIGN == "gather")
    return stock


def width_one_weights(model) -> Dict[str, torch.Tensor]:
    """The slimmable model's state dict without its BN stats bank: at width 1.0 (with the width-1.0
    statistics loaded) the parameters and buffers of the stock model of the same config."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("bn_stats_bank.")}


def inference_benchmark(cfg, weights: str, device: str, repeats: int) -> Tuple[List[Dict], List[Dict]]:
    """(rows, backbone_rows). rows: one per (scale in SCALES, width in WIDTHS): GFLOPs and latency
    of the slimmable and the frozen model, and of the stock model at width 1.0. backbone_rows: at
    scale 1.0, one per width: backbone GFLOPs and latency (slimmable, frozen), to compare latency
    shares with FLOPs shares. Loads `weights` when that file exists (else random weights); BN
    statistics are calibrated per configuration on training batches."""
    from ..bn_calibration import calibration_batches, use_configuration
    from ..checkpoint import load_weights
    from ..data.rescale import scaled_test_input
    from ..deploy.freeze import freeze_width
    from ..engine.trainer import MutualNetTrainer
    from ..flops import backbone_gflops, model_gflops
    from ..modeling.roi_align import swap_roi_align
    from .timing import time_call

    model = MutualNetTrainer.build_model(cfg).to(device).eval()
    if weights and os.path.isfile(weights):
        load_weights(model, weights, cfg)
    train_batches = calibration_batches(cfg)
    image = first_test_image(cfg)
    num_batches = cfg.MUTUALNET.BN_CALIB.NUM_BATCHES
    stock = stock_model(cfg, device)
    use_configuration(model, 1.0, 1.0, train_batches, num_batches)
    stock.load_state_dict(width_one_weights(model))
    gather = cfg.MUTUALNET.CPU_ROI_ALIGN == "gather"
    rows, backbone_rows = [], []
    for scale in SCALES:
        inputs = scaled_test_input(image, cfg, scale)
        tensor = model.preprocess_image([inputs]).tensor
        for width in WIDTHS:
            use_configuration(model, width, scale, train_batches, num_batches)
            frozen = freeze_width(model, width, scale).eval()
            swap_roi_align(frozen, gather)
            with torch.no_grad():
                row = {"width": width, "resolution_scale": scale, "gflops": model_gflops(model, inputs),
                       "slimmable": time_call(lambda: model([inputs]), device, repeats=repeats),
                       "frozen": time_call(lambda: frozen([inputs]), device, repeats=repeats)}
                if width == 1.0:
                    row["stock_detectron2"] = time_call(lambda: stock([inputs]), device, repeats=repeats)
                rows.append(row)
                if scale == 1.0:
                    backbone_rows.append({"width": width, "gflops": backbone_gflops(model, tensor),
                                          "slimmable": time_call(lambda: model.backbone(tensor), device, repeats=repeats),
                                          "frozen": time_call(lambda: frozen.backbone(tensor), device, repeats=repeats)})
    return rows, backbone_rows


def heads_inference_benchmark(config_file: str, device: str, repeats: int) -> List[Dict]:
    """Whole-model and backbone GFLOPs, detection count and latency at widths 1.0 and 0.25 (scale
    1.0), backbone-only slimming and then slimmable heads (MUTUALNET.SLIMMABLE_HEADS).

    Random weights (seed 0) with SCORE_THRESH_TEST 0: every configuration keeps
    TEST.DETECTIONS_PER_IMAGE detections, so the mask head's cost is the same worst case for every
    row (a trained model's detection count would change with the width)."""
    from ..data.rescale import scaled_test_input
    from ..engine.trainer import MutualNetTrainer
    from ..flops import backbone_gflops, model_gflops
    from ..width import set_width
    from .timing import time_call
    from .training import load_cfg

    image = first_test_image(load_cfg(config_file))
    rows = []
    for slimmable_heads in (False, True):
        cfg = load_cfg(config_file, ["MODEL.DEVICE", device, "MUTUALNET.SLIMMABLE_HEADS", slimmable_heads,
                                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
        torch.manual_seed(0)
        model = MutualNetTrainer.build_model(cfg).to(device).eval()
        inputs = scaled_test_input(image, cfg, 1.0)
        tensor = model.preprocess_image([inputs]).tensor
        for width in (1.0, 0.25):
            set_width(model, width)
            with torch.no_grad():
                rows.append({"slimmable_heads": slimmable_heads, "width": width, "gflops": model_gflops(model, inputs),
                             "gflops_backbone": backbone_gflops(model, tensor),
                             "detections": len(model([inputs])[0]["instances"]),
                             "latency": time_call(lambda: model([inputs]), device, repeats=repeats)})
    return rows
