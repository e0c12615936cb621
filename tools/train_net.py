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

Checkpoints are written atomically; --resume falls back to the newest readable checkpoint if the
last one is missing or unreadable; a second training into a busy OUTPUT_DIR is refused.
--eval-only leaves the training's OUTPUT_DIR/config.yaml alone: its config and log go to
OUTPUT_DIR/inference/.
"""
import os
import signal
import sys
from contextlib import nullcontext

import mutualnet_det  # registers backbones, meta-architecture, datasets  # noqa: F401
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from mutualnet_det.checkpoint import CheckpointError, check_initial_weights, check_weights_file, load_weights
from mutualnet_det.config import load_config
from mutualnet_det.engine.output_lock import training_lock
from mutualnet_det.engine.trainer import MutualNetTrainer


def build_config(args):
    """The validated config of this command line (every config error here, before any work)."""
    cfg = load_config(args.config_file, args.opts)
    if not args.eval_only:
        check_initial_weights(cfg, args.resume)  # before any work, with how to make the file
    else:
        check_weights_file(cfg.MODEL.WEIGHTS)  # missing or empty: before anything is written
    cfg.freeze()
    return cfg


def setup(args):
    cfg = build_config(args)
    # Detectron2's default_setup writes config.yaml and the log into the folder it is given: an
    # evaluation writes its own into OUTPUT_DIR/inference/, never over the training's.
    setup_cfg = cfg
    if args.eval_only:
        setup_cfg = cfg.clone()
        setup_cfg.defrost()
        setup_cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "inference")
    default_setup(setup_cfg, args)
    if args.eval_only and comm.is_main_process():  # the evaluated config as it is, OUTPUT_DIR included
        with open(os.path.join(setup_cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    setup_logger(setup_cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mutualnet_det")
    return cfg


def main(args):
    if comm.get_world_size() == 1:  # one process: SIGTERM stops training as Ctrl-C does (a checkpoint
        # first); with several, torch's launcher stops the others with SIGTERM when one fails
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    cfg = setup(args)
    if args.eval_only:
        model = MutualNetTrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, cfg)
        return MutualNetTrainer.test(cfg, model)
    trainer = MutualNetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """Check the config, hold OUTPUT_DIR for a training, then Detectron2's launch."""
    cfg = build_config(args)
    training = not args.eval_only and args.machine_rank == 0  # one lock per OUTPUT_DIR, not per machine
    with training_lock(cfg.OUTPUT_DIR) if training else nullcontext():
        return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))


def failure_message(err: BaseException) -> str:
    """The last line for the terminal: what failed, and the trainer's note (iteration,
    checkpoint, how to resume). Detectron2 has logged the traceback above it and in
    OUTPUT_DIR/log.txt."""
    lines = str(err).strip().splitlines() or [""]
    cause = lines[-1] if "Traceback" in str(err) else lines[0]  # a DataLoader worker's error: its last line
    notes = "; ".join(getattr(err, "__notes__", []))
    return f"error: {type(err).__name__}: {cause}" + (f" ({notes})" if notes else "")


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        run(args)
    except (ValueError, KeyError, CheckpointError, OSError) as err:  # OSError: e.g. data that cannot be written
        if getattr(err, "__notes__", None):  # raised inside training (e.g. a NaN loss): say where
            sys.exit(failure_message(err))
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:  # CheckpointOnFailure has saved and said so: no traceback
        print("interrupted" if args.eval_only else "interrupted; run the same command with --resume to continue",
              file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # anything else inside training: one line, the checkpoint already saved
        if not getattr(err, "__notes__", None):
            raise
        sys.exit(failure_message(err))
