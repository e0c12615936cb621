"""Loading weights for evaluation, demo and export: fail early, with a message, on bad files."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer


class CheckpointError(ValueError):
    pass


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a trained MutualNet-Det checkpoint into `model`, strictly.

    Raises CheckpointError if the file is missing, unreadable, or does not fit the model
    (missing, unexpected or differently shaped parameters, e.g. another depth or head).
    """
    if not path:
        raise CheckpointError("MODEL.WEIGHTS is empty: give the checkpoint to evaluate (e.g. output/model_final.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} does not exist (MODEL.WEIGHTS); train first or fix the path")
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpoint = checkpointer._load_file(path)
    except Exception as err:  # torch.load / pickle errors on truncated or foreign files
        raise CheckpointError(f"cannot read weights file {path!r} ({type(err).__name__}: {err}); "
                              "is it truncated or not a PyTorch/Detectron2 checkpoint?") from None
    state = checkpoint.get("model", checkpoint)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("bn_stats_bank.")}
    given = {k: getattr(v, "shape", None) for k, v in state.items() if not k.startswith("bn_stats_bank.")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(given) if tuple(expected[k]) != tuple(given[k] or ()))
    if missing or unexpected or mismatched:
        def head(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        problems = [f"{len(missing)} missing: {head(missing)}" if missing else "",
                    f"{len(unexpected)} unexpected: {head(unexpected)}" if unexpected else "",
                    f"{len(mismatched)} with other shapes: " + head(
                        [f"{k} {tuple(given[k])} vs {tuple(expected[k])}" for k in mismatched]) if mismatched else ""]
        raise CheckpointError(
            f"weights file {path!r} does not fit the model built from this config ("
            + "; ".join(p for p in problems if p)
            + "). Was it trained with another config (depth, widths, heads, classes)?")
    checkpointer._load_model(checkpoint)
