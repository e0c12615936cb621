"""Checkpoints of a training run: written atomically, and resumed from the newest readable one
when the one `last_checkpoint` names is missing or unreadable (a kill during a save, two runs
in one folder, a disk that filled up)."""
import logging
import os

import pytest
import torch
from helpers import tiny_cfg

import mutualnet_det.checkpoint as checkpoint_module
from mutualnet_det.checkpoint import CheckpointError
from mutualnet_det.engine.trainer import MutualNetTrainer


def trainer_at(output_dir, max_iter):
    cfg = tiny_cfg(**{"OUTPUT_DIR": str(output_dir), "SOLVER.MAX_ITER": max_iter, "DATASETS.TEST": (),
                      "MUTUALNET.BN_CALIB.AFTER_TRAIN": False, "SOLVER.CHECKPOINT_PERIOD": 100})
    return MutualNetTrainer(cfg)


def saved_weights(trainer, iteration):
    """Save a checkpoint at `iteration` with weights that identify it (every parameter = iteration)."""
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.fill_(float(iteration))
    trainer.iter = iteration
    trainer.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)


def first_parameter(trainer):
    return next(trainer.model.parameters()).flatten()[0].item()


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    trainer = trainer_at(tmp_path, 10)
    saved_weights(trainer, 3)
    real_save = torch.save

    def dies_half_way(data, f):
        real_save(data, f)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt  # the process is stopped in the middle of writing

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        saved_weights(trainer, 5)
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "model_0000005.pth")  # no truncated file under the final name
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []  # nor a temporary one left
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    resumed = trainer_at(tmp_path, 10)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4 and first_parameter(resumed) == 3.0


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog):
    trainer = trainer_at(tmp_path, 10)
    for iteration in (1, 3, 5):
        saved_weights(trainer, iteration)
    with open(tmp_path / "model_0000005.pth", "r+b") as f:  # truncated, as by a full disk
        f.truncate(os.path.getsize(tmp_path / "model_0000005.pth") // 3)
    resumed = trainer_at(tmp_path, 10)
    with caplog.at_level(logging.WARNING, logger=checkpoint_module.__name__):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4 and first_parameter(resumed) == 3.0
    assert "model_0000005.pth (unreadable" in caplog.text and "Resuming from" in caplog.text
    assert str(tmp_path / "model_0000003.pth") in caplog.text

    os.remove(tmp_path / "model_0000005.pth")  # missing, named by last_checkpoint
    resumed = trainer_at(tmp_path, 10)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4 and first_parameter(resumed) == 3.0


def test_resume_with_no_readable_checkpoint_names_every_file(tmp_path):
    trainer = trainer_at(tmp_path, 10)
    saved_weights(trainer, 1)
    (tmp_path / "model_0000001.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "model_0000000.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .*model_0000001.pth \(unreadable.*"
                                              r"model_0000000.pth \(unreadable"):
        trainer_at(tmp_path, 10).resume_or_load(resume=True)


def test_final_checkpoint_is_resumed_before_numbered_ones(tmp_path):
    """model_final.pth counts as the newest when last_checkpoint names a missing file."""
    trainer = trainer_at(tmp_path, 10)
    saved_weights(trainer, 2)
    trainer.iter = 9
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.fill_(9.0)
    trainer.checkpointer.save("model_final", iteration=9)
    (tmp_path / "last_checkpoint").write_text("model_0000042.pth")
    resumed = trainer_at(tmp_path, 10)
    resumed.resume_or_load(resume=True)
    assert first_parameter(resumed) == 9.0


def test_a_checkpoint_records_how_it_was_trained_and_refuses_a_config_that_changes_its_meaning(tmp_path, caplog):
    from mutualnet_det.checkpoint import load_weights
    from mutualnet_det.config import training_recipe

    trainer = trainer_at(tmp_path, 10)
    saved_weights(trainer, 1)
    recipe = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["mutualnet"]
    assert recipe == training_recipe(trainer.cfg) and recipe["method"] == "mutualnet"
    path = str(tmp_path / "model_0000001.pth")
    for key, value, named in (("MUTUALNET.WIDTH_RANGE", (0.125, 1.0), r"width_range \[0.25, 1.0\] \(config: \[0.125, 1.0\]\)"),
                              ("MUTUALNET.CHANNEL_DIVISOR", 4, r"channel_divisor 8 \(config: 4\)")):
        cfg = tiny_cfg(**{key: value})
        with pytest.raises(CheckpointError, match=named):
            load_weights(MutualNetTrainer.build_model(cfg), path, cfg)
    usnet = tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "usnet"})
    model = MutualNetTrainer.build_model(usnet)
    with caplog.at_level(logging.WARNING, logger=checkpoint_module.__name__):
        load_weights(model, path, usnet)  # another method: loaded, with a warning naming both
    assert "method 'mutualnet' (config: 'usnet')" in caplog.text
    assert model.training_recipe == recipe  # what the sweep records
    resumed = MutualNetTrainer(tiny_cfg(**{"OUTPUT_DIR": str(tmp_path), "SOLVER.MAX_ITER": 10, "DATASETS.TEST": (),
                                           "MUTUALNET.CHANNEL_DIVISOR": 4}))
    with pytest.raises(CheckpointError, match=r"channel_divisor 8 \(config: 4\)"):  # resuming checks it too
        resumed.resume_or_load(resume=True)
