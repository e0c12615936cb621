#!/usr/bin/env python
"""Convert an ImageNet ResNet checkpoint into a Detectron2 checkpoint for the slimmable backbones.

    python tools/convert_mutualnet_imagenet.py mutualnet_r50.pt checkpoints/mutualnet_r50_imagenet_d2.pkl \
        --bn-widths 0.25 1.0
Inputs: the official MutualNet/US-Net ResNet-50/101 (models/resnet.py), torchvision ResNets, or
Detectron2 .pkl files (kept as they are). The result sets STRIDE_IN_1X1 False (stride in the 3x3
conv), as the COCO configs do. Refuses (exit 1, nothing written) on any key it cannot map.
"""
import argparse
import os
import pickle
import sys

from mutualnet_det.deploy.converters import ConversionError, convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output", help="a .pkl path")
    parser.add_argument("--bn-widths", type=float, nargs="+",
                        help="widths of the official checkpoint's per-width BN statistics, in order (width_mult_list)")
    parser.add_argument("--backbone", choices=["fpn", "resnet"], default="fpn",
                        help="the target backbone: build_slimmable_resnet_fpn_backbone (default) or _resnet_backbone")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        sys.exit("error: the output must be a .pkl file (Detectron2's format for converted weights)")
    if not os.path.isfile(args.input):
        sys.exit(f"error: input {args.input!r} does not exist")
    try:
        payload, layout = convert_checkpoint(args.input, args.bn_widths,
                                             "backbone.bottom_up." if args.backbone == "fpn" else "backbone.")
    except ConversionError as err:
        sys.exit(f"error: {err}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        pickle.dump(payload, f)
    bank = sorted({k.split(".")[1] for k in payload["model"] if k.startswith("bn_stats_bank.")})
    print(f"converted a {layout} checkpoint: {len(payload['model'])} tensors -> {args.output}"
          + (f" (BN stats bank: {', '.join(bank)})" if bank else ""))


if __name__ == "__main__":
    main()
