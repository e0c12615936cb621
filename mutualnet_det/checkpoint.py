"""Checkpoints: written atomically during training, resumed from the newest readable one, and
loaded for evaluation, demo and export with a message (not a traceback) on bad files."""
import logging
import os
import re
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .config import RECIPE_BINDING_KEYS, training_recipe

logger = logging.getLogger(__name__)

BANK_PREFIX = "bn_stats_bank."


class CheckpointError(ValueError):
    pass


def _first_line(error: BaseException) -> str:
    """An exception's first line (torch's unpickling errors run to paragraphs of advice, the first
    of which is to load with weights_only=False: code execution from an untrusted file)."""
    line = (str(error).strip().splitlines() or [""])[0].rstrip(".")
    if line.startswith("Weights only load failed"):
        return "torch's safe loader (weights_only) refused it"
    return line


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


def check_recipe(saved: dict, current: dict, path: str) -> None:
    """Refuse a checkpoint trained with another width range, channel divisor or slimmable parts
    than the config (its weights would mean other channels); warn when only the method or the
    training schedule's options differ. Checkpoints without a record (older ones, stock
    Detectron2 ones) are taken as they are."""
    if not saved or not current:
        return
    binding = [f"{key} {saved.get(key)!r} (config: {current.get(key)!r})" for key in RECIPE_BINDING_KEYS
               if key in saved and saved.get(key) != current.get(key)]
    if binding:
        raise CheckpointError(f"weights file {path!r} was trained with " + ", ".join(binding) + ": load it with "
                              "the config it was trained with (MUTUALNET.WIDTH_RANGE, CHANNEL_DIVISOR, "
                              "SLIMMABLE_HEADS)")
    other = [f"{key} {saved[key]!r} (config: {current.get(key)!r})" for key in saved
             if key not in RECIPE_BINDING_KEYS and saved[key] != current.get(key)]
    if other:
        logger.warning(f"{path} was trained with " + ", ".join(other) + "; evaluating it as it is")


class RecipeChecking:
    """Mixin for Detectron2 checkpointers: save the config's training recipe in every checkpoint,
    check it on load (check_recipe), and keep the loaded one on the model (`training_recipe`)
    for the width sweep to record."""

    recipe = None  # set from the config by the owner

    def _check_and_keep_recipe(self, checkpoint, path):
        saved = checkpoint.get("mutualnet")
        check_recipe(saved, self.recipe, path)
        model = getattr(self.model, "module", self.model)
        model.training_recipe = saved or self.recipe


class StrictCheckpointer(RecipeChecking, DetectionCheckpointer):
    """DetectionCheckpointer that refuses a checkpoint which does not fit the model exactly, or
    that was trained with another width range, divisor or slimmable parts than the config."""

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):  # Detectron2/C2 pickles are renamed later
            check_fits(self.model, checkpoint["model"], self._loading_path)
        self._check_and_keep_recipe(checkpoint, self._loading_path)
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        self._loading_path = path
        return super().load(path, *args, **kwargs)


def check_weights_file(path: str) -> None:
    """MODEL.WEIGHTS for evaluation must name an existing file (checked before any work)."""
    if not path:
        raise CheckpointError("MODEL.WEIGHTS is empty: give the checkpoint to use (e.g. output/.../model_final.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} does not exist (MODEL.WEIGHTS); train first or fix the path")


def load_weights(model: torch.nn.Module, path: str, cfg=None) -> None:
    """Load a trained MutualNet-Det checkpoint (weights and BN stats bank) into `model`.

    Raises CheckpointError if the file is missing, unreadable, or does not fit the model
    (missing, unexpected or differently shaped parameters, e.g. another depth or head), or (with
    `cfg`) was trained with another width range, channel divisor or slimmable parts.
    """
    check_weights_file(path)
    checkpointer = StrictCheckpointer(model)
    checkpointer.recipe = training_recipe(cfg) if cfg is not None else None
    try:
        checkpointer.load(path)
    except CheckpointError:
        raise
    except Exception as err:  # torch.load / pickle errors on truncated or foreign files
        raise CheckpointError(f"cannot read weights file {path!r} ({type(err).__name__}: {_first_line(err)}); "
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
        "(docs/runtime_adaptation.md, \"ImageNet initialisation\"), or start from random initialisation with "
        "MODEL.WEIGHTS \"\" on the command line.")


def _write_atomically(path: str, write) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to disk, then renamed over it:
    a kill at any moment leaves either the old file or the new one, never a truncated one."""
    folder = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _iteration_of(filename: str) -> float:
    """model_0000099.pth -> 99; model_final.pth after every numbered one; others first."""
    if filename == "model_final.pth":
        return float("inf")
    match = re.fullmatch(r"model_(\d+)\.pth", filename)
    return int(match.group(1)) if match else -1


class TrainingCheckpointer(RecipeChecking, DetectionCheckpointer):
    """Detectron2's checkpointer for training runs, with two guarantees Detectron2 lacks:
    - every checkpoint and `last_checkpoint` is written atomically (periodic, final and
      interrupt checkpoints alike), so a kill during a save cannot leave a truncated file;
    - `--resume` never needs hand-editing: if the checkpoint `last_checkpoint` names is missing
      or unreadable, it resumes from the newest readable `model_*.pth` in the folder with a
      warning naming both files, and with an error naming every file if none is readable."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        if self.recipe is not None:
            data["mutualnet"] = self.recipe
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _write_atomically(os.path.join(self.save_dir, "last_checkpoint"),
                          lambda f: f.write(last_filename_basename.encode()))

    def resume_candidates(self):
        """The checkpoint `last_checkpoint` names, then the folder's others, newest first."""
        named = self.get_checkpoint_file() if self.has_checkpoint() else ""
        others = sorted((f for f in os.listdir(self.save_dir) if _iteration_of(f) >= 0),
                        key=_iteration_of, reverse=True)
        paths = [named] if named else []
        return paths + [os.path.join(self.save_dir, f) for f in others if os.path.join(self.save_dir, f) != named]

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            self._starting = True  # MODEL.WEIGHTS: where this training starts from (_load_model)
            try:
                return super().resume_or_load(path, resume=resume)
            finally:
                self._starting = False
        self._remove_unfinished_writes()
        candidates = self.resume_candidates()
        problems = []
        for candidate in candidates:
            if not os.path.isfile(candidate):
                problems.append(f"{candidate} (missing)")
                continue
            try:
                checkpoint = super()._torch_load(candidate)
            except Exception as err:  # truncated zip, pickle errors: nothing is loaded yet
                problems.append(f"{candidate} (unreadable: {type(err).__name__}: {_first_line(err)})")
                continue
            if problems:
                logger.warning(f"Resuming from {candidate}: skipped {'; '.join(problems)}")
            self._preloaded = (candidate, checkpoint)
            try:
                return self.load(candidate)
            finally:
                self._preloaded = None
        raise CheckpointError(f"cannot resume from {self.save_dir}: no readable checkpoint ("
                              + "; ".join(problems) + "). Remove the bad files and last_checkpoint to "
                              "start from MODEL.WEIGHTS, or restore a checkpoint.")

    _starting = False
    starting_keys = None  # what loading MODEL.WEIGHTS left out (Detectron2's incompatible keys)

    def _load_model(self, checkpoint):
        if not self._starting:  # resuming this training: the checkpoint must mean what the config says
            self._check_and_keep_recipe(checkpoint, "the checkpoint being loaded")
            return super()._load_model(checkpoint)
        return self._load_starting_weights(checkpoint)

    def _load_starting_weights(self, checkpoint):
        """MODEL.WEIGHTS starts this training (fine-tuning): a stock Detectron2 detector, a
        single-width or adaptive model of this project, or backbone-only ImageNet weights. Its
        weights are taken by name (Detectron2's rules; what is missing or unused is logged);
        another width range or method is what fine-tuning is for, so the recipe is not checked;
        its banked BN statistics are dropped: they hold only for the weights they were calibrated
        with, which training is about to change (BN is recalibrated after training)."""
        state = checkpoint["model"]
        banked = [key for key in state if key.startswith(BANK_PREFIX)]
        for key in banked:
            del state[key]
        if banked:
            logger.info(f"Starting weights: dropped {len(banked)} banked BN statistics tensors")
        saved = checkpoint.get("mutualnet")
        if saved and self.recipe:
            changed = [f"{key} {saved[key]!r} -> {self.recipe.get(key)!r}" for key in saved
                       if saved[key] != self.recipe.get(key)]
            if changed:
                logger.info("Fine-tuning a model trained with other settings: " + ", ".join(changed))
        model = getattr(self.model, "module", self.model)
        model.training_recipe = self.recipe
        keys = super()._load_model(checkpoint)
        # BN's batch counter is no weight: FrozenBN (the model zoo's norm) has none to give
        keys.missing_keys[:] = [k for k in keys.missing_keys if not k.endswith(".num_batches_tracked")]
        self.starting_keys = keys
        return keys

    def _remove_unfinished_writes(self):
        """Temporary files of writes a killed run never finished (the OUTPUT_DIR lock makes this
        run the folder's only writer)."""
        for name in os.listdir(self.save_dir):
            if re.fullmatch(r"\.(model_\w+\.pth|last_checkpoint)\.\w+\.tmp", name):
                os.remove(os.path.join(self.save_dir, name))
                logger.info(f"Removed {name}, an unfinished checkpoint write of an earlier run")

    def _torch_load(self, filename):
        preloaded = getattr(self, "_preloaded", None)
        if preloaded and preloaded[0] == filename:  # read once while choosing, not twice
            return preloaded[1]
        return super()._torch_load(filename)
