"""MutualNet-Det config keys, all under the MUTUALNET node, their validation, and loading a
config file with every error reported before any work starts."""
import difflib
import logging
import math
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .width import DEFAULT_WIDTH_RANGE, validate_width, validate_width_range

logger = logging.getLogger(__name__)

TRAIN_METHODS = ("mutualnet", "usnet", "single")
OPTIMIZERS = ("SGD", "AdamW")
AMP_DTYPES = ("", "float16", "bfloat16")  # MUTUALNET.TRAIN.AMP_DTYPE ("": the device's usual one)
DISTILL_MODES = ("soft_labels", "add")
CPU_ROI_ALIGNS = ("gather", "torchvision")
MASK_PASTES = ("vectorized", "detectron2")
PAPER_RESOLUTION_SCALES = (1.0, 192 / 224, 160 / 224, 128 / 224)


def add_mutualnet_config(cfg):
    """Add the MUTUALNET node (with defaults) to a Detectron2 config."""
    _C = cfg
    # Periodic checkpoints kept per run (older ones deleted as new ones are saved; model_final and
    # an interrupt's checkpoint are never deleted); 0 keeps all, as Detectron2 does. Only resuming
    # needs them, and a 4,050-iteration study run saving every 100 would fill 5.5 GB.
    _C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
    _C.MUTUALNET = CN()
    # (narrowest, widest) backbone width multiplier the model is trained for; 0 < narrowest <= widest <= 1.
    _C.MUTUALNET.WIDTH_RANGE = DEFAULT_WIDTH_RANGE
    # Channel counts at width w are rounded to multiples of this (1 = official MutualNet ResNet).
    _C.MUTUALNET.CHANNEL_DIVISOR = 8
    # False: only the backbone is slimmable (the paper). True: FPN outputs, the RPN head's conv and
    # the box/mask heads' convs and FCs also follow the width (predictor outputs stay full).
    _C.MUTUALNET.SLIMMABLE_HEADS = False
    # How the RoI heads' poolers (ROIAlignV2 with a fixed POOLER_SAMPLING_RATIO) run on CPU:
    # "gather": the same numbers as a weighted gather (modeling/roi_align.py; about 2.5x faster
    # forward + backward there); "torchvision": torchvision's kernel, as the runs before this key.
    # On CUDA both are torchvision's kernel.
    _C.MUTUALNET.CPU_ROI_ALIGN = "gather"

    _C.MUTUALNET.TRAIN = CN()
    # "mutualnet": sandwich over width, narrower members on down-scaled inputs;
    # "usnet": the same widths, all at full resolution; "single": widest width only.
    _C.MUTUALNET.TRAIN.METHOD = "mutualnet"
    # Random widths per iteration besides the widest and the narrowest (sandwich rule).
    _C.MUTUALNET.TRAIN.NUM_RANDOM_WIDTHS = 2
    # "SGD": Detectron2's (SOLVER.MOMENTUM, NESTEROV); "AdamW": the same parameter groups, lr and
    # weight decay from SOLVER (decoupled), for short from-scratch schedules that SGD is slow in.
    _C.MUTUALNET.TRAIN.OPTIMIZER = "SGD"
    # Input scale factors (of the training resize) the non-widest MutualNet members draw from.
    # The paper's and official code's resolutions 224, 192, 160, 128 of 224.
    _C.MUTUALNET.TRAIN.RESOLUTION_SCALES = PAPER_RESOLUTION_SCALES
    # Inplace distillation: the widest member teaches the others its box class distributions on
    # the proposals it sampled (KL divergence, weighted by DISTILL_WEIGHT). DISTILL_MODE:
    # "soft_labels" (the MutualNet supplementary's sense): narrower members' box classification
    #   learns from the teacher's distributions *instead of* the ground-truth class;
    # "add": the KL is added to the narrower members' full ground-truth loss.
    # In both, box regression, masks and the RPN stay on ground truth (a soft target exists only
    # for the class distribution, as for the classification networks of the paper).
    _C.MUTUALNET.TRAIN.INPLACE_DISTILL = False
    _C.MUTUALNET.TRAIN.DISTILL_MODE = "soft_labels"
    _C.MUTUALNET.TRAIN.DISTILL_WEIGHT = 1.0
    # Gradient clipping that treats every method alike: the summed gradient's total L2 norm is
    # clipped at this value x the number of cohort members (one for "single", so there it is
    # ordinary whole-model norm clipping). 0 = off. Detectron2's SOLVER.CLIP_GRADIENTS clips each
    # parameter separately and would act on a cohort's summed gradient unlike on one model's:
    # keep it disabled when comparing methods. The norm before clipping is logged as grad_norm.
    _C.MUTUALNET.TRAIN.CLIP_GRAD_NORM_PER_MEMBER = 0.0
    # With SOLVER.AMP.ENABLED: the autocast dtype. "" = the device's usual one (float16 with a
    # GradScaler on CUDA, bfloat16 on CPU); "bfloat16" also on CUDA (no scaler: float32's range).
    _C.MUTUALNET.TRAIN.AMP_DTYPE = ""
    # Seed of the cohort sequence (iteration i uses seed (SEED, i)); -1: use cfg.SEED, or 0.
    _C.MUTUALNET.TRAIN.COHORT_SEED = -1

    _C.MUTUALNET.BN_CALIB = CN()
    # Training batches run (train mode, no gradients) to re-estimate BN statistics per configuration.
    _C.MUTUALNET.BN_CALIB.NUM_BATCHES = 10
    # After training, calibrate every TEST (width, resolution scale) and store it in the
    # checkpoint's BN stats bank.
    _C.MUTUALNET.BN_CALIB.AFTER_TRAIN = True

    # Width of a frozen (fixed-width, plain-module) model; used by build_frozen_resnet_fpn_backbone.
    _C.MUTUALNET.FROZEN_WIDTH = 1.0

    _C.MUTUALNET.TEST = CN()
    # Widths and input scale factors (of the test resize) evaluated by --eval-only (all pairs).
    _C.MUTUALNET.TEST.WIDTHS = (1.0,)
    _C.MUTUALNET.TEST.RESOLUTION_SCALES = (1.0,)
    # Validation images averaged to report GFLOPs per configuration.
    _C.MUTUALNET.TEST.FLOPS_NUM_IMAGES = 5
    # How predicted masks are pasted into the image: "vectorized" (modeling/mask_paste.py: all
    # masks in one pass, Detectron2's result up to float rounding) or "detectron2" (its
    # paste_masks_in_image: one mask at a time on CPU, most of a narrow width's time there).
    _C.MUTUALNET.TEST.MASK_PASTE = "vectorized"
    # Fold each slimmable conv's eval-mode BatchNorm / FrozenBatchNorm into cached weights of the
    # active width at inference (modeling/slimmable_ops.py): same output up to float rounding, one
    # operation per layer instead of three. Off: the layers run as Detectron2's do.
    _C.MUTUALNET.TEST.FOLD_NORMS = True
    # RPN proposals kept per image at test time, swept beside widths and scales (each count caps
    # the detections per image too; modeling/proposals.py). Empty: MODEL.RPN.POST_NMS_TOPK_TEST only.
    _C.MUTUALNET.TEST.PROPOSALS = ()


def _check_scales(key, scales):
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a list of numbers in (0, 1], got {scales!r}") from None
    if not scales or any(math.isnan(s) or not (0 < s <= 1.0) for s in scales):
        raise ValueError(f"{key}={scales!r} is invalid: need a non-empty list of scales in (0, 1]")
    return scales


def validate_mutualnet_config(cfg):
    """Raise ValueError naming the key, the value and what is accepted, before any work starts."""
    if cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP < 0:
        raise ValueError(f"SOLVER.CHECKPOINT_MAX_TO_KEEP={cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP} must be >= 0 (0 keeps all)")
    node = cfg.MUTUALNET
    width_range = validate_width_range(node.WIDTH_RANGE)
    if node.CHANNEL_DIVISOR < 1:
        raise ValueError(f"MUTUALNET.CHANNEL_DIVISOR={node.CHANNEL_DIVISOR} must be >= 1")
    if not all(isinstance(count, int) and count >= 1 for count in node.TEST.PROPOSALS):
        raise ValueError(f"MUTUALNET.TEST.PROPOSALS={tuple(node.TEST.PROPOSALS)} must hold whole numbers >= 1 "
                         "(proposals per image), e.g. (1000, 300, 100)")
    if node.TEST.MASK_PASTE not in MASK_PASTES:
        raise ValueError(f"MUTUALNET.TEST.MASK_PASTE={node.TEST.MASK_PASTE!r} is unknown; accepted: {MASK_PASTES}")
    if node.CPU_ROI_ALIGN not in CPU_ROI_ALIGNS:
        raise ValueError(f"MUTUALNET.CPU_ROI_ALIGN={node.CPU_ROI_ALIGN!r} is unknown; accepted: {CPU_ROI_ALIGNS}")
    train = node.TRAIN
    if train.METHOD not in TRAIN_METHODS:
        raise ValueError(f"MUTUALNET.TRAIN.METHOD={train.METHOD!r} is unknown; accepted: {TRAIN_METHODS}")
    if train.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"MUTUALNET.TRAIN.OPTIMIZER={train.OPTIMIZER!r} is unknown; accepted: {OPTIMIZERS}")
    if train.NUM_RANDOM_WIDTHS < 0:
        raise ValueError(f"MUTUALNET.TRAIN.NUM_RANDOM_WIDTHS={train.NUM_RANDOM_WIDTHS} must be >= 0")
    _check_scales("MUTUALNET.TRAIN.RESOLUTION_SCALES", train.RESOLUTION_SCALES)
    if train.INPLACE_DISTILL and train.METHOD == "single":
        raise ValueError("MUTUALNET.TRAIN.INPLACE_DISTILL=True needs a widest member to distill from "
                         "and narrower members to distill into; METHOD='single' has only the widest")
    if train.DISTILL_MODE not in DISTILL_MODES:
        raise ValueError(f"MUTUALNET.TRAIN.DISTILL_MODE={train.DISTILL_MODE!r} is unknown; accepted: {DISTILL_MODES}")
    if not train.CLIP_GRAD_NORM_PER_MEMBER >= 0:
        raise ValueError(f"MUTUALNET.TRAIN.CLIP_GRAD_NORM_PER_MEMBER={train.CLIP_GRAD_NORM_PER_MEMBER} must be "
                         ">= 0 (0 = no clipping)")
    if train.AMP_DTYPE not in AMP_DTYPES:
        raise ValueError(f"MUTUALNET.TRAIN.AMP_DTYPE={train.AMP_DTYPE!r} is unknown; accepted: {AMP_DTYPES}")
    if train.DISTILL_WEIGHT < 0:
        raise ValueError(f"MUTUALNET.TRAIN.DISTILL_WEIGHT={train.DISTILL_WEIGHT} must be >= 0")
    if node.BN_CALIB.NUM_BATCHES < 1:
        raise ValueError(f"MUTUALNET.BN_CALIB.NUM_BATCHES={node.BN_CALIB.NUM_BATCHES} must be >= 1")
    if not node.TEST.WIDTHS:
        raise ValueError(f"MUTUALNET.TEST.WIDTHS is empty; give widths in {list(width_range)}")
    for width in node.TEST.WIDTHS:
        try:
            validate_width(width, width_range)
        except ValueError as err:
            raise ValueError(f"MUTUALNET.TEST.WIDTHS: {err}") from None
    _check_scales("MUTUALNET.TEST.RESOLUTION_SCALES", node.TEST.RESOLUTION_SCALES)
    return cfg


def _all_keys(node, prefix=""):
    for key, value in node.items():
        full = f"{prefix}{key}"
        yield full
        if isinstance(value, CN):
            yield from _all_keys(value, full + ".")


def _unknown_key_error(cfg, error, source):
    """yacs says "Non-existent config key: X" (file) or "Non-existent key: X" (list): name the key,
    where it came from and the keys that are close."""
    message = str(error.args[0] if error.args else error)
    key = message.rsplit(":", 1)[-1].strip()
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see docs/configuration.md for the keys"
    return ValueError(f"unknown config key {key} in {source}{hint}")


def check_dataset_names(cfg):
    """DATASETS.TRAIN / DATASETS.TEST must be registered (Detectron2's builtin COCO names, the
    embedded shapes sets, or ones a user registered): a misspelt name would otherwise surface
    only when the evaluation starts, after the whole training."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key):
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
                hint = (f"; close registered names: {', '.join(close)}" if close
                        else "; register it first (detectron2.data.datasets.register_coco_instances)")
                raise ValueError(f"DATASETS.{key} names {name!r}, which is not a registered dataset{hint}")


def resolve_device(cfg):
    """MODEL.DEVICE follows the machine: no config pins the CPU, so Detectron2's default "cuda"
    runs on the GPU where CUDA exists and becomes "cpu" where it does not (one log line says so).
    An explicit "cpu" stays; an explicit CUDA device on a machine without CUDA is an error."""
    import torch

    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        if device != "cuda":
            raise ValueError(f"MODEL.DEVICE={device!r} but this machine has no CUDA device: use cuda (it falls "
                             "back to the CPU) or cpu")
        logger.info("MODEL.DEVICE cuda: no CUDA device on this machine, running on the CPU")
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg


def load_config(config_file, opts=()):
    """The config of a command line: Detectron2's defaults, the MUTUALNET node, `config_file`
    (with its `_BASE_` chain) and KEY VALUE `opts`, validated. Raises ValueError (or
    FileNotFoundError) with one sentence naming the file, key or value and what is accepted."""
    if not config_file:
        raise ValueError("no config file given: pass --config-file configs/...yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = get_cfg()
    add_mutualnet_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except KeyError as error:
        raise _unknown_key_error(cfg, error, config_file) from None
    except OSError as error:  # a _BASE_ that does not exist (the file itself was checked above)
        raise FileNotFoundError(f"config file {config_file!r} names a _BASE_ that cannot be read "
                                f"({error.strerror}: {error.filename})") from None
    opts = list(opts or [])
    flags = [opt for opt in opts if isinstance(opt, str) and opt.startswith("--")]
    if flags:
        raise ValueError(f"{flags[0]} comes after the KEY VALUE overrides: put options before them")
    if len(opts) % 2:
        raise ValueError(f"config overrides come in KEY VALUE pairs; {opts[-1]!r} has no value")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as error:
        if "Non-existent" not in str(error):
            raise
        raise _unknown_key_error(cfg, error, "the command line") from None
    resolve_device(cfg)
    validate_mutualnet_config(cfg)
    check_dataset_names(cfg)
    return cfg


# What a checkpoint records of how it was trained. The first three change what the weights mean
# (which channels a width uses, which layers are slimmable): loading with other values is refused.
RECIPE_BINDING_KEYS = ("width_range", "channel_divisor", "slimmable_heads")


def training_recipe(cfg) -> dict:
    """How a model of this config is trained, as saved in its checkpoints and width sweeps."""
    node = cfg.MUTUALNET
    return {"method": node.TRAIN.METHOD, "width_range": [float(w) for w in node.WIDTH_RANGE],
            "channel_divisor": int(node.CHANNEL_DIVISOR), "slimmable_heads": bool(node.SLIMMABLE_HEADS),
            "resolution_scales": [float(s) for s in node.TRAIN.RESOLUTION_SCALES],
            "inplace_distill": bool(node.TRAIN.INPLACE_DISTILL), "distill_mode": node.TRAIN.DISTILL_MODE}
