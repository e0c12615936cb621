#!/usr/bin/env python
"""Freeze a slimmable model at one width: write a plain Detectron2 checkpoint and its config.

    python tools/freeze_width.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml \
        --width 0.5 [--resolution-scale 1.0] --output out/ MODEL.WEIGHTS output/shapes_mutualnet/model_final.pth
Writes out/model_frozen_w0.5.pth and out/config_frozen_w0.5.yaml (GeneralizedRCNN with
build_frozen_resnet_fpn_backbone: no slimmable module at run time; the test resize is already
multiplied by the resolution scale; with MUTUALNET.SLIMMABLE_HEADS the FPN and head sizes are
those of the width).
"""
import argparse
import os
import sys

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)

from mutualnet_det import freeze_width, validate_width
from mutualnet_det.config import load_config
from mutualnet_det.checkpoint import CheckpointError, load_weights
from mutualnet_det.deploy.freeze import save_frozen
from mutualnet_det.engine.trainer import MutualNetTrainer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--width", type=float, required=True)
    parser.add_argument("--resolution-scale", type=float, default=1.0)
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (MODEL.WEIGHTS ...)")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config_file, args.opts)
        width = validate_width(args.width, cfg.MUTUALNET.WIDTH_RANGE)
        if not 0 < args.resolution_scale <= 1:
            raise ValueError(f"--resolution-scale {args.resolution_scale} must be in (0, 1]")
        model = MutualNetTrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, cfg)
        frozen = freeze_width(model.eval(), width, args.resolution_scale)
    except (ValueError, KeyError, CheckpointError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    weights_path, config_path = save_frozen(frozen, cfg, width, args.resolution_scale, args.output)
    print(f"wrote {weights_path} and {os.path.basename(config_path)} "
          f"({sum(p.numel() for p in frozen.parameters()) / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
