"""Loading weights for evaluation, demo and export: fail early, with a message, on bad files."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

BANK_PREFIX = "bn_stats_bank."


class CheckpointError(ValueError):
    pass


def _head(keys, limit=5):
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_fits(model: torch.nn.Module, state: dict, path: str) -> None:
    """Raise CheckpointError unless `state` has exactly the model's parameters and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(BANK_PREFIX)}
    given = {k: tuple(getattr(v, "shape", ())) for k, v in state.items() if not k.startswith(BANK_PREFIX)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_head(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_head(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: "
                        + _head([f"{k} {given[k]} vs {expected[k]}" for k in mismatched]))
    if problems:
        raise CheckpointError(f"weights file {path!r} does not fit the model built from this config ("
                              + "; ".join(problems) + "). Was it trained with another config "
                              "(depth, widths, FPN/head sizes, classes)?")


class StrictCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that refuses a checkpoint which does not fit the model exactly."""

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):  # Detectron2/C2 pickles are renamed later
            check_fits(self.model, checkpoint["model"], self._loading_path)
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        self._loading_path = path
        return super().load(path, *args, **kwargs)


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a trained MutualNet-Det checkpoint (weights and BN stats bank) into `model`.

    Raises CheckpointError if the file is missing, unreadable, or does not fit the model
    (missing, unexpected or differently shaped parameters, e.g. another depth or head).
    """
    if not path:
        raise CheckpointError("MODEL.WEIGHTS is empty: give the checkpoint to use (e.g. output/.../model_final.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} does not exist (MODEL.WEIGHTS); train first or fix the path")
    try:
        StrictCheckpointer(model).load(path)
    except CheckpointError:
        raise
    except Exception as err:  # torch.load / pickle errors on truncated or foreign files
        raise CheckpointError(f"cannot read weights file {path!r} ({type(err).__name__}: {err}); "
                              "is it truncated or not a PyTorch/Detectron2 checkpoint?") from None


def check_initial_weights(cfg, resume: bool) -> None:
    """Before training: MODEL.WEIGHTS must exist unless training resumes from OUTPUT_DIR.

    Detectron2 would fail later with a bare "Checkpoint ... not found!"; this says what the file
    is for, how to make it and how to start without it.
    """
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path or os.path.isfile(path):
        return  # random init, a URL Detectron2 resolves itself, or a file that exists
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # --resume loads OUTPUT_DIR's last checkpoint, not MODEL.WEIGHTS
    raise CheckpointError(
        f"initial weights {path!r} (MODEL.WEIGHTS) do not exist. For the COCO configs this is the "
        "converted ImageNet MutualNet ResNet: produce it with tools/convert_mutualnet_imagenet.py "
        "(README, \"ImageNet initialisation\"), or start from random initialisation with "
        "MODEL.WEIGHTS \"\" on the command line.")
