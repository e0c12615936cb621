"""Train the tiny config in this process, to be killed and resumed by tests/engine/test_exact_resume.py.

Usage: python resume_worker.py OUTPUT_DIR MAX_ITER [--resume] [--kill-in-step K] [--kill-in-save K]
  --kill-in-step K: SIGKILL itself in iteration K's step, after its forwards, before the optimizer step
  --kill-in-save K: SIGKILL itself half-way through writing iteration K's checkpoint
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/helpers.py
import torch  # noqa: E402
from helpers import tiny_cfg  # noqa: E402

from mutualnet_det.engine.trainer import MutualNetTrainer  # noqa: E402


def config(output_dir, max_iter):
    """The tiny config with the embedded configs' loader (DATALOADER.NUM_WORKERS 1, as configured
    in Base-Shapes.yaml), a checkpoint every 2 iterations, AdamW (its moments must resume too)."""
    return tiny_cfg(**{"OUTPUT_DIR": output_dir, "SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 2,
                       "DATASETS.TEST": (), "MUTUALNET.BN_CALIB.AFTER_TRAIN": False, "DATALOADER.NUM_WORKERS": 1,
                       "MUTUALNET.TRAIN.OPTIMIZER": "AdamW", "SOLVER.BASE_LR": 1e-3})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("max_iter", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-in-step", type=int, default=-1)
    parser.add_argument("--kill-in-save", type=int, default=-1)
    args = parser.parse_args()
    torch.manual_seed(0)  # the initial weights
    trainer = MutualNetTrainer(config(args.output_dir, args.max_iter))
    step = trainer._trainer
    if args.kill_in_step >= 0:
        after_backward = step.after_backward

        def killed_in_step():
            if step.iter == args.kill_in_step:
                os.kill(os.getpid(), signal.SIGKILL)
            after_backward()

        step.after_backward = killed_in_step
    if args.kill_in_save >= 0:
        real_save = torch.save

        def killed_half_way(data, f, *a, **k):
            if isinstance(data, dict) and data.get("iteration") == args.kill_in_save:
                real_save(data, f, *a, **k)
                f.truncate(f.tell() // 2)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(data, f, *a, **k)

        torch.save = killed_half_way
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


if __name__ == "__main__":
    main()
