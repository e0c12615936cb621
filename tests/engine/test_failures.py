"""A failure inside the training loop loses nothing: the last good state is saved, the error
says which iteration failed and how to resume, and resuming runs the failed iteration again."""
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from helpers import tiny_cfg
from PIL import UnidentifiedImageError
from tools_loader import load_tool

from mutualnet_det.engine.trainer import MutualNetTrainer


def training_cfg(output_dir, max_iter, **overrides):
    return tiny_cfg(**{"OUTPUT_DIR": str(output_dir), "SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 100,
                       "DATASETS.TEST": (), "MUTUALNET.BN_CALIB.AFTER_TRAIN": False, **overrides})


class WeightsAfterEachStep(HookBase):
    def __init__(self):
        self.weights = {}

    def after_step(self):
        self.weights[self.trainer.iter] = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}


def assert_saved(path, expected_weights, iteration):
    saved = torch.load(path, weights_only=False)
    assert saved["iteration"] == iteration
    for name, value in expected_weights.items():
        assert torch.equal(saved["model"][name], value), name


def test_a_nan_loss_saves_the_last_good_state_and_resume_repeats_the_iteration(tmp_path, monkeypatch):
    trainer = MutualNetTrainer(training_cfg(tmp_path, 6))
    recorder = WeightsAfterEachStep()
    trainer.register_hooks([recorder])
    forward = trainer.model.forward

    def nan_at_iteration_3(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter == 3:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(trainer.model, "forward", nan_at_iteration_3)
    with pytest.raises(FloatingPointError) as failure:
        trainer.train()
    assert failure.value.__notes__ == ["training stopped at iteration 3; saved model_0000002.pth (after iteration 2); "
                                       "continue with the same command and --resume"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert_saved(tmp_path / "model_0000002.pth", recorder.weights[2], 2)  # not iteration 3's weights
    resumed = MutualNetTrainer(training_cfg(tmp_path, 6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3


def test_an_image_that_becomes_unreadable_names_the_file_and_keeps_the_trained_iterations(tmp_path):
    """The images are readable for iterations 0-1, then every file is overwritten with garbage
    (num_workers 0: nothing is prefetched), so iteration 2's batch fails to load."""
    images = tmp_path / "images"
    images.mkdir()
    dicts = [dict(d) for d in DatasetCatalog.get("shapes_train")[:6]]
    for record in dicts:
        copy = images / os.path.basename(record["file_name"])
        copy.write_bytes(open(record["file_name"], "rb").read())
        record["file_name"] = str(copy)
    name = f"shapes_copy_{os.getpid()}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=MetadataCatalog.get("shapes_train").thing_classes)

    class Corrupt(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                for record in dicts:
                    open(record["file_name"], "wb").write(b"this is not an image")

    output = tmp_path / "run"
    trainer = MutualNetTrainer(training_cfg(output, 20, **{"DATASETS.TRAIN": (name,)}))
    recorder = WeightsAfterEachStep()
    trainer.register_hooks([recorder, Corrupt()])
    with pytest.raises(UnidentifiedImageError, match=str(images)) as failure:
        trainer.train()
    assert failure.value.__notes__ == ["training stopped at iteration 2; saved model_0000001.pth (after iteration 1); "
                                       "continue with the same command and --resume"]
    assert (output / "last_checkpoint").read_text() == "model_0000001.pth"
    assert_saved(output / "model_0000001.pth", recorder.weights[1], 1)


def test_train_net_prints_one_line_with_the_note():
    train_net = load_tool("train_net")
    error = UnidentifiedImageError("Caught UnidentifiedImageError in DataLoader worker process 0.\nOriginal "
                                   "Traceback (most recent call last):\n  ...\nPIL.UnidentifiedImageError: "
                                   "cannot identify image file 'datasets/x.png'")
    error.add_note("training stopped at iteration 7; saved model_0000006.pth (after iteration 6); "
                   "continue with the same command and --resume")
    assert train_net.failure_message(error) == (
        "error: UnidentifiedImageError: PIL.UnidentifiedImageError: cannot identify image file 'datasets/x.png' "
        "(training stopped at iteration 7; saved model_0000006.pth (after iteration 6); continue with the same "
        "command and --resume)")
