#!/usr/bin/env python
"""Train or evaluate a slimmable Mask R-CNN with MutualNet, US-Net or a single width.

    python tools/train_net.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml
    python tools/train_net.py --config-file X --eval-only MODEL.WEIGHTS ckpt \
        MUTUALNET.TEST.WIDTHS "(1.0, 0.5)" MUTUALNET.TEST.RESOLUTION_SCALES "(1.0, 0.8)"
    python tools/train_net.py --config-file X --num-gpus 8   # Detectron2's launch

In one process (no --num-gpus > 1), Ctrl-C or SIGTERM to this process (`kill <pid>`) saves a
checkpoint and exits with 130; the same command with --resume continues from it. (A SIGTERM to
the whole process group also kills the DataLoader workers, torch's own handler, and training
then stops without that checkpoint. With several processes, stopping is Detectron2's and torch's.)
"""
import signal
import sys

import mutualnet_det  # registers backbones, meta-architecture, datasets  # noqa: F401
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from mutualnet_det import add_mutualnet_config, validate_mutualnet_config
from mutualnet_det.checkpoint import CheckpointError, check_initial_weights, load_weights
from mutualnet_det.engine.trainer import MutualNetTrainer


def setup(args):
    cfg = get_cfg()
    add_mutualnet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_mutualnet_config(cfg)
    if not args.eval_only:
        check_initial_weights(cfg, args.resume)  # before any work, with how to make the file
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mutualnet_det")
    return cfg


def main(args):
    if comm.get_world_size() == 1:  # one process: SIGTERM stops training as Ctrl-C does (a checkpoint
        # first); with several, torch's launcher stops the others with SIGTERM when one fails
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    cfg = setup(args)
    if args.eval_only:
        model = MutualNetTrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS)
        return MutualNetTrainer.test(cfg, model)
    trainer = MutualNetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (ValueError, KeyError, CheckpointError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:  # CheckpointOnInterrupt has saved and said so: no traceback
        print("interrupted" if args.eval_only else "interrupted; run the same command with --resume to continue",
              file=sys.stderr)
        sys.exit(130)
