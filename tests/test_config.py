"""Config errors are found when the config is loaded, before any work, as one sentence naming
the key or file, the value and what is accepted."""
import os
import subprocess
import sys

import pytest
from helpers import REPO
from tools_loader import load_tool

from mutualnet_det.config import load_config

SHAPES = os.path.join(REPO, "configs", "Shapes", "mutualnet_mask_rcnn_R_18_FPN.yaml")


def test_the_configs_of_record_load():
    for path in ("configs/Shapes/mutualnet_slimheads_mask_rcnn_R_18_FPN.yaml",
                 "configs/Study/Converged-3375-Study.yaml",
                 "configs/COCO-InstanceSegmentation/usnet_mask_rcnn_R_50_FPN_1x.yaml"):
        cfg = load_config(os.path.join(REPO, path))
        assert cfg.MUTUALNET.TEST.WIDTHS


@pytest.mark.parametrize("opts,message", [
    (["MUTUALNET.TEST.WIDTH", "(1.0,)"],
     r"unknown config key MUTUALNET.TEST.WIDTH in the command line; did you mean MUTUALNET.TEST.WIDTHS"),
    (["DATASETS.TEST", "('shapes_vall',)"],
     r"DATASETS.TEST names 'shapes_vall', which is not a registered dataset; close registered names: shapes_val"),
    (["DATASETS.TRAIN", "('my_own_set',)"], r"DATASETS.TRAIN names 'my_own_set'.*register it first"),
    (["SOLVER.MAX_ITER"], r"KEY VALUE pairs; 'SOLVER.MAX_ITER' has no value"),
    (["MUTUALNET.TRAIN.METHOD", "mutual"], r"MUTUALNET.TRAIN.METHOD='mutual' is unknown; accepted"),
])
def test_a_bad_override_is_named(opts, message):
    with pytest.raises(ValueError, match=message):
        load_config(SHAPES, opts)


def test_an_unknown_key_in_a_file_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file '.*nope.yaml' does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text(f'_BASE_: "{SHAPES}"\nMUTUALNET:\n  CHANNEL_DIVISR: 4\n')
    with pytest.raises(ValueError, match=rf"unknown config key MUTUALNET.CHANNEL_DIVISR in {leaf}; "
                                         r"did you mean MUTUALNET.CHANNEL_DIVISOR"):
        load_config(str(leaf))


def test_train_net_refuses_a_misspelt_dataset_before_any_work(tmp_path):
    """One `error:` line and exit status 1; nothing is written into OUTPUT_DIR."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", SHAPES,
                             "OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.TEST", "('shapes_vall',)"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: DATASETS.TEST names 'shapes_vall', which is not a registered dataset; close registered names: "
        "shapes_val, shapes_train")
    assert not os.path.exists(tmp_path / "run")


def test_eval_only_keeps_the_trainings_config_and_log(tmp_path, monkeypatch):
    """--eval-only into a training's OUTPUT_DIR writes its config and log under inference/."""
    train_net = load_tool("train_net")
    output = tmp_path / "run"
    output.mkdir()
    (output / "config.yaml").write_text("the training's config\n")
    missing = train_net.default_argument_parser().parse_args(
        ["--config-file", SHAPES, "--eval-only", "OUTPUT_DIR", str(output), "MODEL.WEIGHTS", str(output / "nope.pth")])
    with pytest.raises(ValueError, match="does not exist"):  # refused before anything is written
        train_net.setup(missing)
    assert not (output / "inference").exists()
    (output / "model_final.pth").write_bytes(b"checked when loaded, after the set-up")
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", SHAPES, "--eval-only", "OUTPUT_DIR", str(output), "MODEL.WEIGHTS", str(output / "model_final.pth")])
    cfg = train_net.setup(args)
    assert cfg.OUTPUT_DIR == str(output)
    assert (output / "config.yaml").read_text() == "the training's config\n"
    assert load_config(str(output / "inference" / "config.yaml")).OUTPUT_DIR == str(output)


@pytest.mark.parametrize("cuda_available,expected", [(False, "cpu"), (True, "cuda")])
def test_the_device_follows_the_machine(monkeypatch, caplog, cuda_available, expected):
    """No config pins the CPU: Detectron2's default "cuda" is kept where CUDA exists and becomes
    "cpu" where it does not, with one log line; an explicit "cpu" is kept either way."""
    import logging

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    for path in ("configs/Shapes/mutualnet_slimheads_mask_rcnn_R_18_FPN.yaml", "configs/Study/Converged-3375-Study.yaml",
                 "configs/COCO-InstanceSegmentation/mutualnet_mask_rcnn_R_50_FPN_1x.yaml"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mutualnet_det.config"):
            cfg = load_config(os.path.join(REPO, path))
        assert cfg.MODEL.DEVICE == expected, path
        assert ("no CUDA device on this machine, running on the CPU" in caplog.text) == (not cuda_available)
        assert load_config(os.path.join(REPO, path), ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
    if not cuda_available:
        with pytest.raises(ValueError, match=r"MODEL.DEVICE='cuda:1' but this machine has no CUDA device"):
            load_config(SHAPES, ["MODEL.DEVICE", "cuda:1"])


def test_a_missing_base_and_a_flag_after_the_overrides_are_named(tmp_path):
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text('_BASE_: "no_such_base.yaml"\n')
    with pytest.raises(FileNotFoundError, match=rf"config file '{leaf}' names a _BASE_ that cannot be read "
                                                r"\(No such file or directory: .*no_such_base.yaml\)"):
        load_config(str(leaf))
    with pytest.raises(ValueError, match=r"--resume comes after the KEY VALUE overrides: put options before them"):
        load_config(SHAPES, ["OUTPUT_DIR", "out/x", "--resume"])


def test_an_output_dir_that_cannot_be_created_is_named(tmp_path):
    from mutualnet_det.engine.output_lock import training_lock

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=rf"OUTPUT_DIR '{tmp_path}/a_file/run' cannot be created or written "
                                         r"\(Not a directory\)"):
        with training_lock(str(tmp_path / "a_file" / "run")):
            pass
