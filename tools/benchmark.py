#!/usr/bin/env python
"""Benchmark: inference latency per (width, scale) of the slimmable model, its frozen export and
Detectron2's stock model; backbone latency against FLOPs; training seconds/iteration and peak
memory of single, usnet and mutualnet. Writes JSON and Markdown to benchmarks/results/.

    python tools/benchmark.py [--config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml]
        [--weights output/shapes_mutualnet/model_final.pth] [--train-iters 6]
    python tools/benchmark.py --slimmable-heads   # backbone-only vs slimmable heads (GFLOPs,
        latency at widths 1.0 and 0.25; s/iteration of single vs MutualNet): slimmable_heads_*.{json,md}
    python tools/benchmark.py --precision [--train-iters 2]  # s/iteration of single, usnet and
        mutualnet in float32 and with SOLVER.AMP.ENABLED (bfloat16 on CPU, float16 on CUDA): precision_*.{json,md}
    python tools/benchmark.py --roi-align [--train-iters 6]  # s/iteration of single, usnet and
        mutualnet with MUTUALNET.CPU_ROI_ALIGN torchvision and gather, alternated twice: roi_align_*.{json,md}
    python tools/benchmark.py --rescale  # the narrower members' bitmask resize at 800 x 1333 with 20
        masks, against the dense product it replaced: rescale_*.{json,md}
    python tools/benchmark.py --coco-cost  # the COCO config's GFLOPs per iteration of each method and
        per width sweep, counted at 800 x 1333 (no data, no GPU needed): coco_cost_*.{json,md}
    python tools/benchmark.py --stages [--widths 1.0 0.5 0.25] [--threads 1 2] [--num-images 8]
        # where inference time goes at each width (backbone, RPN, poolers, heads, NMS, mask
        # pasting) for a trained config (default: the main job's MutualNet, MODEL.WEIGHTS or
        # <OUTPUT_DIR>/model_final.pth; --weights W): stages_*.{json,md}
    python tools/benchmark.py --export [--widths 1.0 0.25] [--threads 1] [--num-images 8]
        # stock Detectron2, the slimmable model, the frozen width, TorchScript and ONNX Runtime,
        # image to Instances, for the same trained config: export_latency_threads<N>_*.{json,md}
    python tools/benchmark.py --targets [--sweep S/width_sweep.json] [--threads 1] [--num-images 8] [--rounds 3]
        # every configuration of a trained model's sweep (width, scale, proposals) timed in one run:
        # width 0.25 / 1.0, the cheapest configuration within 1 box AP of width 0.25, the front's
        # latency against the FLOPs-ideal line: latency_targets_*.{json,md,png}
"""
import argparse
import os

import mutualnet_det  # noqa: F401  (registration; before other Detectron2 imports)
import torch

from mutualnet_det.benchmark.coco_cost import coco_cost_markdown, coco_cost_report
from mutualnet_det.benchmark.export import export_latency_benchmark, export_latency_markdown
from mutualnet_det.benchmark.inference import heads_inference_benchmark, inference_benchmark
from mutualnet_det.benchmark.rescale import rescale_benchmark, rescale_markdown
from mutualnet_det.benchmark.stages import profile_stages, stages_markdown
from mutualnet_det.benchmark.reports import (benchmark_markdown, heads_markdown, new_report, precision_markdown,
                                             roi_align_markdown, shown_path)
from mutualnet_det.benchmark.timing import write_report
from mutualnet_det.benchmark.training import (METHODS, heads_training_benchmark, load_cfg, precision_benchmark,
                                              roi_align_benchmark, training_benchmark)
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.engine.precision import cpu_has_fast_bfloat16
from mutualnet_det.runtime.latency import check_banked, load_trained, torch_threads, validation_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "Shapes", "mutualnet_mask_rcnn_R_18_FPN.yaml")
MAIN_JOB_CONFIG = os.path.join(REPO, "configs", "Shapes", "mutualnet_slimheads_mask_rcnn_R_18_FPN.yaml")
COCO_CONFIG = os.path.join(REPO, "configs", "COCO-InstanceSegmentation", "mutualnet_mask_rcnn_R_50_FPN_1x.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", help="trained checkpoint (default: output/shapes_mutualnet/model_final.pth; "
                                          "with --stages the config's MODEL.WEIGHTS or <OUTPUT_DIR>/model_final.pth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-iters", type=int, default=6)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--slimmable-heads", action="store_true",
                        help="only the comparison of backbone-only and slimmable heads (MUTUALNET.SLIMMABLE_HEADS)")
    parser.add_argument("--precision", action="store_true",
                        help="only training s/iteration of each method in float32 and with SOLVER.AMP.ENABLED")
    parser.add_argument("--roi-align", action="store_true",
                        help="only training s/iteration of each method with each MUTUALNET.CPU_ROI_ALIGN")
    parser.add_argument("--rescale", action="store_true",
                        help="only the bitmask resize of the narrower members at COCO size")
    parser.add_argument("--coco-cost", action="store_true",
                        help="only the COCO config's cost on paper (--config-file defaults to the COCO MutualNet config)")
    parser.add_argument("--stages", action="store_true",
                        help="only inference time by stage at each width (--widths, --threads, --num-images, --scale)")
    parser.add_argument("--export", action="store_true",
                        help="only deployment latency: stock Detectron2, slimmable, frozen, TorchScript, ONNX Runtime "
                             "(--widths, --threads: one count, --num-images)")
    parser.add_argument("--targets", action="store_true",
                        help="only the latency targets of a trained model's sweep (--sweep, --threads, --num-images)")
    parser.add_argument("--sweep", help="width_sweep.json to time (--targets; default: the model's own)")
    parser.add_argument("--widths", type=float, nargs="+", help="widths (--stages: 1.0 0.5 0.25; --export: 1.0 0.25)")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help="torch thread counts (default: current; --export: one count, ONNX Runtime's too)")
    parser.add_argument("--num-images", type=int, default=8, help="validation images per width, each timed 3 times (--stages)")
    parser.add_argument("--scale", type=float, default=1.0, help="resolution scale (--stages)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every configuration is timed, in turn (--targets; the median of the rounds counts)")
    args = parser.parse_args()
    if args.threads and min(args.threads) < 1:
        parser.error(f"--threads {' '.join(map(str, args.threads))}: every thread count must be at least 1")
    if args.targets:
        return latency_targets(parser, args)
    if args.stages or args.export:
        config = args.config_file if args.config_file != DEFAULT_CONFIG else MAIN_JOB_CONFIG
        widths = args.widths or ([1.0, 0.5, 0.25] if args.stages else [1.0, 0.25])
        if args.export and args.threads and len(args.threads) > 1:
            parser.error(f"--export times every runtime at one thread count: give one --threads value, not {args.threads}")
        try:
            cfg, model = load_trained(config, ["MODEL.DEVICE", "cpu" if args.export else args.device], args.weights)
            check_banked(model, [(width, args.scale if args.stages else 1.0) for width in widths])
        except (ValueError, CheckpointError) as error:
            parser.error(str(error))
        images = validation_images(cfg, args.num_images)
        if args.export:
            threads = (args.threads or [torch.get_num_threads()])[0]
            with torch_threads(threads):  # every runtime runs at it, and the report's device line names it
                rows = export_latency_benchmark(cfg, model, images, widths)
                report = new_report("cpu", config, weights=shown_path(cfg.MODEL.WEIGHTS), num_images=args.num_images,
                                    repeats_per_image=3, export_latency=rows)
            write_report(report, args.output, f"export_latency_threads{threads}_", export_latency_markdown)
            return
        records = profile_stages(cfg, model, images, widths, args.scale, args.threads, repeats_per_image=3)
        report = new_report(args.device, config, weights=shown_path(cfg.MODEL.WEIGHTS), num_images=args.num_images,
                            repeats_per_image=3, resolution_scale=args.scale, stages=records)
        write_report(report, args.output, "stages_", stages_markdown)
        return
    args.weights = args.weights or os.path.join(REPO, "output", "shapes_mutualnet", "model_final.pth")
    if args.coco_cost:
        config = args.config_file if args.config_file != DEFAULT_CONFIG else COCO_CONFIG
        report = new_report("cpu", os.path.relpath(config, REPO), coco_cost=coco_cost_report(config))
        write_report(report, args.output, "coco_cost_", coco_cost_markdown)
    elif args.rescale:
        report = new_report(args.device, args.config_file, rescale=rescale_benchmark(args.device, repeats=args.repeats))
        write_report(report, args.output, "rescale_", rescale_markdown)
    elif args.slimmable_heads:
        inference = heads_inference_benchmark(args.config_file, args.device, args.repeats)
        training = heads_training_benchmark(args.config_file, args.train_iters, args.device)
        report = new_report(args.device, args.config_file, inference=inference, training=training)
        write_report(report, args.output, "slimmable_heads_", heads_markdown)
    elif args.precision:
        report = new_report(args.device, args.config_file, train_iters=args.train_iters,
                            cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_fast_bfloat16=cpu_has_fast_bfloat16(),
                            training=precision_benchmark(args.config_file, args.train_iters, args.device))
        write_report(report, args.output, "precision_", precision_markdown)
    elif args.roi_align:
        report = new_report(args.device, args.config_file, train_iters=args.train_iters,
                            training=roi_align_benchmark(args.config_file, args.train_iters, args.device))
        write_report(report, args.output, "roi_align_", roi_align_markdown)
    else:
        cfg = load_cfg(args.config_file, ["MODEL.DEVICE", args.device])
        inference, backbone = inference_benchmark(cfg, args.weights, args.device, args.repeats)
        training = {method: training_benchmark(args.config_file, method, args.train_iters, args.device) for method in METHODS}
        report = new_report(args.device, args.config_file, weights=args.weights if os.path.isfile(args.weights) else None,
                            inference=inference, backbone=backbone, training=training)
        write_report(report, args.output, "", benchmark_markdown)


def latency_targets(parser, args):
    from mutualnet_det.benchmark.latency_targets import measure_targets, plot_front, targets_markdown
    from mutualnet_det.evaluation.query_table import load_sweep
    from mutualnet_det.runtime.latency import default_sweep_path

    config = args.config_file if args.config_file != DEFAULT_CONFIG else MAIN_JOB_CONFIG
    threads = (args.threads or [torch.get_num_threads()])[-1]
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        cfg, model = load_trained(config, ["MODEL.DEVICE", args.device], args.weights)
        sweep_path = args.sweep or default_sweep_path(cfg)
        images = validation_images(cfg, args.num_images)
        table, targets = measure_targets(cfg, model, load_sweep(sweep_path), images, threads, rounds=args.rounds)
    except (ValueError, CheckpointError, FileNotFoundError) as error:
        parser.error(str(error))
    report = new_report(args.device, config, weights=shown_path(cfg.MODEL.WEIGHTS), sweep=shown_path(sweep_path),
                        num_images=args.num_images, repeats_per_image=3, targets=targets, latency_table=table)
    stem = write_report(report, args.output, "latency_targets_", targets_markdown)
    plot_front(targets, table, stem + ".png")
    print(f"plot: {stem}.png")


if __name__ == "__main__":
    main()
