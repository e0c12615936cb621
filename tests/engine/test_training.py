"""Whole training runs on the tiny config: resume, and two processes over gloo."""
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase
from helpers import DDP_SWEEP_OVERRIDES, tiny_cfg

from mutualnet_det.checkpoint import load_weights
from mutualnet_det.engine.trainer import MutualNetTrainer, cohort_sampler


def tiny_training_cfg(output_dir, max_iter):
    return tiny_cfg(**{"OUTPUT_DIR": str(output_dir), "SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 2,
                       "DATASETS.TEST": (), "MUTUALNET.BN_CALIB.AFTER_TRAIN": False})


def test_resume_continues_at_the_saved_iteration_with_the_same_cohorts(tmp_path):
    first = MutualNetTrainer(tiny_training_cfg(tmp_path, 2))
    first.resume_or_load(resume=False)
    first.train()
    assert os.path.isfile(tmp_path / "model_final.pth")

    cfg = tiny_training_cfg(tmp_path, 4)
    resumed = MutualNetTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    drawn = {}
    sampler = resumed._trainer.cohort_of
    resumed._trainer.cohort_of = lambda i: drawn.setdefault(i, sampler(i))
    resumed.train()
    assert sorted(drawn) == [2, 3]
    assert drawn[2] == cohort_sampler(cfg)(2)
    iterations = [json.loads(line)["iteration"] for line in open(tmp_path / "metrics.json")]
    assert max(iterations) == 3


def test_checkpoint_max_to_keep_deletes_the_oldest_periodic_checkpoints(tmp_path):
    """Every 2 iterations of 8 saves 1, 3, 5, 7: keeping 2 leaves 5 and 7 (and model_final); 0
    keeps all four, Detectron2's behaviour."""
    for keep, expected in ((2, [5, 7]), (0, [1, 3, 5, 7])):
        output = tmp_path / f"keep{keep}"
        cfg = tiny_training_cfg(output, 8)
        cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = keep
        MutualNetTrainer(cfg).train()
        saved = sorted(name for name in os.listdir(output) if name.endswith(".pth"))
        assert saved == [f"model_{i:07d}.pth" for i in expected] + ["model_final.pth"]
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = -1
    with pytest.raises(ValueError, match="SOLVER.CHECKPOINT_MAX_TO_KEEP=-1 must be >= 0"):
        MutualNetTrainer(cfg)


def test_interrupted_training_saves_a_checkpoint_and_resumes_after_it(tmp_path):
    class Interrupt(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                raise KeyboardInterrupt

    trainer = MutualNetTrainer(tiny_training_cfg(tmp_path, 6))
    trainer.register_hooks([Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    resumed = MutualNetTrainer(tiny_training_cfg(tmp_path, 6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3


def test_two_process_gloo_training(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    result = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["world_size"] == 2 and rank0["is_ddp"]
    assert len(rank0["cohorts"]) == 3 and rank0["cohorts"] == rank1["cohorts"]
    # each rank saw different images; identical parameters after 3 steps mean gradients were all-reduced
    for name, value in rank0["params"].items():
        assert torch.allclose(value, rank1["params"][name], atol=1e-6), name


def test_two_process_sweep_banks_one_set_of_statistics_and_equals_a_re_evaluation(tmp_path):
    """Plain BN on two gloo processes, each calibrating on its own shard: both ranks bank the same
    statistics, and the in-training width sweep (both ranks scoring their shard of shapes_val)
    gives the metrics of a one-process re-evaluation of the saved model_final.pth."""
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    result = subprocess.run([sys.executable, worker, str(tmp_path), "--sweep"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert sorted(rank0["bank"]) == sorted(rank1["bank"]) == ["w0p2500_s1p0000", "w1p0000_s1p0000"]
    for key, entry in rank0["bank"].items():
        for name, value in entry.items():
            assert torch.equal(value, rank1["bank"][key][name]), (key, name)
    with open(tmp_path / "inference" / "shapes_val" / "width_sweep.json") as f:
        in_training = {(r["width"], r["resolution_scale"]): r for r in json.load(f)}

    cfg = tiny_cfg(**{"OUTPUT_DIR": str(tmp_path / "re_evaluation"), "MODEL.WEIGHTS": str(tmp_path / "model_final.pth"),
                      **DDP_SWEEP_OVERRIDES})
    model = MutualNetTrainer.build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, cfg)
    re_evaluated = MutualNetTrainer.test(cfg, model)
    assert len(re_evaluated) == len(in_training) == 2
    compared = 0
    for (width, scale), record in in_training.items():
        assert record["bn_stats"] in ("bank", "calibrated")
        again = re_evaluated[f"shapes_val/w{width:g}_s{scale:g}"]
        for task in ("bbox", "segm"):
            for metric, value in record[task].items():
                if value == value:  # NaN (a category absent from the images) equals nothing
                    assert again[task][metric] == pytest.approx(value, abs=1e-6), (width, task, metric)
                    compared += value > 0
    assert compared > 0  # some metric above 0: equal metrics are not both zero


def test_adamw_has_detectron2s_parameter_groups_and_an_unknown_optimizer_is_refused():
    from detectron2.solver import build_optimizer

    from mutualnet_det.config import validate_mutualnet_config

    cfg = tiny_cfg(**{"MUTUALNET.TRAIN.OPTIMIZER": "AdamW", "SOLVER.BASE_LR": 3e-4, "SOLVER.WEIGHT_DECAY": 0.05})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg)
    adamw, sgd = MutualNetTrainer.build_optimizer(cfg, model), build_optimizer(cfg, model)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(sgd, torch.optim.SGD)

    def groups(optimizer):
        return sorted((g["lr"], g["weight_decay"], tuple(sorted(id(p) for p in g["params"])))
                      for g in optimizer.param_groups)

    assert groups(adamw) == groups(sgd)  # Detectron2's groups: no decay on norms, same lr
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.0, 0.05}
    sgd_cfg = tiny_cfg(**{"MUTUALNET.TRAIN.OPTIMIZER": "SGD"})
    assert type(MutualNetTrainer.build_optimizer(sgd_cfg, model)) is type(build_optimizer(sgd_cfg, model))
    with pytest.raises(ValueError, match=r"MUTUALNET.TRAIN.OPTIMIZER='Adam' is unknown; accepted: \('SGD', 'AdamW'\)"):
        validate_mutualnet_config(tiny_cfg(**{"MUTUALNET.TRAIN.OPTIMIZER": "Adam"}))
