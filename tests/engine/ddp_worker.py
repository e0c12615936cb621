"""Two-process data-parallel training on CPU (gloo) through Detectron2's launch.

Usage: python ddp_worker.py OUTPUT_DIR [--sweep]. Each rank writes rank<r>.pt with the cohorts it
drew and its final parameters; the test checks the ranks agree. With --sweep the training ends as a
real one does: BN calibration of plain BN on both ranks' shards, the bank saved in model_final.pth,
and the width sweep on shapes_val (written to OUTPUT_DIR/inference/shapes_val/width_sweep.json).
"""
import os
import sys

# gloo on the CPU on every machine: Detectron2's launch picks NCCL (and wants one GPU per process)
# whenever CUDA is visible, so it is hidden from these processes before torch is imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mutualnet_det  # noqa: E402,F401
import torch  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from helpers import DDP_SWEEP_OVERRIDES, tiny_cfg  # noqa: E402

from mutualnet_det.engine.trainer import MutualNetTrainer  # noqa: E402


def main(output_dir, sweep=False):
    overrides = DDP_SWEEP_OVERRIDES if sweep else {"DATASETS.TEST": (), "MUTUALNET.BN_CALIB.AFTER_TRAIN": False}
    cfg = tiny_cfg(**{"OUTPUT_DIR": output_dir, "SOLVER.MAX_ITER": 3, "SOLVER.IMS_PER_BATCH": 4, **overrides})
    trainer = MutualNetTrainer(cfg)
    drawn = []
    sampler = trainer._trainer.cohort_of
    trainer._trainer.cohort_of = lambda iteration: drawn.append(sampler(iteration)) or drawn[-1]
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({"world_size": comm.get_world_size(), "is_ddp": hasattr(trainer.model, "module"),
                "cohorts": drawn, "params": {k: v.detach().clone() for k, v in model.named_parameters()},
                "bank": {key: dict(entry) for key, entry in model.bn_stats_bank.bank.items()}},
               os.path.join(output_dir, f"rank{comm.get_rank()}.pt"))


if __name__ == "__main__":
    launch(main, 2, dist_url="auto", args=(sys.argv[1], "--sweep" in sys.argv[2:]))
