#!/usr/bin/env python
"""Export one (width, resolution scale) of a trained slimmable model to TorchScript and ONNX.

    python tools/export_width.py --config-file configs/Shapes/mutualnet_slimheads_mask_rcnn_R_18_FPN.yaml \
        --width 0.25 [--resolution-scale 1.0] [--formats torchscript onnx] --output out/export \
        MODEL.WEIGHTS output/shapes_mutualnet_slimheads/model_final.pth
Writes out/export/w0.25.{ts,onnx,json}, traced on the first validation image (DATASETS.TEST[0]),
then runs every export on that image and prints how far it is from the PyTorch model. Run it with
mutualnet_det.runtime.exported.ExportedPredictor (ONNX Runtime: pip install onnxruntime).
"""
import argparse
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
import torch

from mutualnet_det import validate_width
from mutualnet_det.bn_calibration import use_configuration
from mutualnet_det.checkpoint import CheckpointError, load_weights
from mutualnet_det.config import load_config
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.deploy.export import EXPORT_FORMATS, export_name, export_width
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.runtime.exported import ExportedPredictor
from mutualnet_det.runtime.latency import check_banked, validation_images


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--width", type=float, required=True)
    parser.add_argument("--resolution-scale", type=float, default=1.0)
    parser.add_argument("--formats", nargs="+", choices=EXPORT_FORMATS, default=list(EXPORT_FORMATS))
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (MODEL.WEIGHTS ...)")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])  # exports run on the CPU
        width = validate_width(args.width, cfg.MUTUALNET.WIDTH_RANGE)
        if not 0 < args.resolution_scale <= 1:
            raise ValueError(f"--resolution-scale {args.resolution_scale} must be in (0, 1]")
        model = MutualNetTrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, cfg)
        check_banked(model.eval(), [(width, args.resolution_scale)])
        image = validation_images(cfg, 1)[0]
    except (ValueError, KeyError, CheckpointError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    description = export_width(cfg, model, width, args.resolution_scale, args.output, image, args.formats)
    use_configuration(model, width, args.resolution_scale)
    with torch.no_grad():
        expected = model([scaled_test_input(image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image, cfg,
                                            args.resolution_scale)])[0]["instances"]
    for fmt, backend in (("onnx", "onnxruntime"), ("torchscript", "torchscript")):
        if fmt not in description["files"]:
            continue
        try:
            got = ExportedPredictor(f"{args.output}/{export_name(width, args.resolution_scale)}.json", backend)(image)["instances"]
        except ImportError as err:
            print(f"wrote {description['files'][fmt]} (not checked: {err})")
            continue
        same = len(got) == len(expected)
        gap = (got.pred_boxes.tensor - expected.pred_boxes.tensor).abs().max().item() if same and len(got) else 0.0
        print(f"wrote {args.output}/{description['files'][fmt]}: {len(got)} detections on the first validation image "
              f"(PyTorch: {len(expected)})" + (f", boxes within {gap:.2g} px" if same else ""))


if __name__ == "__main__":
    main()
