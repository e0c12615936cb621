"""Batch-norm statistics per (width, resolution scale): calibration and the BN stats bank.

A slimmable network with BN shares one affine per channel across widths, but the running
statistics of width 1.0 are wrong for width 0.25 (and for another input scale). As US-Net and
MutualNet do, we re-estimate them after training:

    calibrate_bn(model, batches, width, resolution_scale, num_batches)
        resets the running mean/var of every BatchNorm layer (FrozenBN has none to reset), runs
        `num_batches` training batches at that configuration in train mode without gradients,
        and keeps the cumulative (equally weighted) average of the batch means and of the
        unbiased batch variances, like BN with momentum=None (with SyncBN: of the global, all-rank
        batch statistics).

The calibration batches must look like what the configuration is evaluated on: training images
with ground truth (the model runs in train mode), resized as the *test-time* resize times the
resolution scale, which is exactly what `build_calibration_loader(cfg, resolution_scale)` yields.
Calibration runs in float32 (outside any autocast), so banked statistics are float32.

The result is stored in the model's `bn_stats_bank` (a child module of the meta-architecture, so
DetectionCheckpointer saves and loads it with the weights). `use_configuration` sets a width and
loads that configuration's statistics, calibrating first if the bank lacks them.
"""
import logging
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn as nn
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from .data.rescale import scaled_test_cfg
from .width import set_width

logger = logging.getLogger(__name__)
STATS = ("running_mean", "running_var")


def bn_layers(model: nn.Module) -> Dict[str, nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers with running statistics (by name); FrozenBN and GN are not among them."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def configuration_key(width: float, resolution_scale: float) -> str:
    return f"w{width:.4f}_s{resolution_scale:.4f}".replace(".", "p")


class BNStatsBank(nn.Module):
    """Running BN statistics of a model, one set per (width, resolution scale).

    State-dict entries: `<key>.<bn layer name>.running_mean|running_var` (key e.g. w0p5000_s1p0000).
    Entries are kept on the CPU and moved to the layers' device when applied.
    """

    def __init__(self):
        super().__init__()
        self.bank: Dict[str, Dict[str, torch.Tensor]] = {}

    def configurations(self) -> List[Tuple[float, float]]:
        return sorted(self._parse(key) for key in self.bank)

    @staticmethod
    def _parse(key):
        width, scale = key[1:].replace("p", ".").split("_s")
        return float(width), float(scale)

    def __contains__(self, configuration) -> bool:
        return configuration_key(*configuration) in self.bank

    def store(self, model: nn.Module, width: float, resolution_scale: float) -> None:
        self.bank[configuration_key(width, resolution_scale)] = {
            f"{name}.{stat}": getattr(layer, stat).detach().cpu().clone()
            for name, layer in bn_layers(model).items() for stat in STATS}

    def clear(self) -> None:
        """Forget every entry: statistics hold only for the weights they were calibrated with."""
        self.bank = {}

    def apply(self, model: nn.Module, width: float, resolution_scale: float) -> bool:
        """Load a configuration's statistics into the model's BN layers; False if not banked."""
        entry = self.bank.get(configuration_key(width, resolution_scale))
        if entry is None:
            return False
        for name, layer in bn_layers(model).items():
            for stat in STATS:
                getattr(layer, stat).copy_(entry[f"{name}.{stat}"])
        return True

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, entry in self.bank.items():
            for name, tensor in entry.items():
                destination[f"{prefix}{key}.{name}"] = tensor

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self.bank = {}
        for full_name, tensor in state_dict.items():
            if full_name.startswith(prefix):
                key, name = full_name[len(prefix):].split(".", 1)
                self.bank.setdefault(key, {})[name] = tensor.detach().cpu().clone()


def calibration_records(cfg) -> List[Dict]:
    """The training records calibration reads: as many as one sweep's configurations of a scale
    consume (len(TEST.WIDTHS) x BN_CALIB.NUM_BATCHES batches of this process's share of
    SOLVER.IMS_PER_BATCH), drawn once with SEED (and the rank) from DATASETS.TRAIN. The full list
    (118k records on COCO) is loaded once and not kept."""
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    per_batch = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
    needed = len(cfg.MUTUALNET.TEST.WIDTHS) * cfg.MUTUALNET.BN_CALIB.NUM_BATCHES * per_batch
    if needed >= len(records):
        return records
    chosen = np.random.default_rng([max(cfg.SEED, 0), comm.get_rank()]).choice(len(records), needed, replace=False)
    return [records[i] for i in sorted(chosen.tolist())]


def build_calibration_loader(cfg, resolution_scale: float, records: List[Dict] = None):
    """An infinite loader of training images with ground truth, resized as the test-time resize
    (INPUT.MIN/MAX_SIZE_TEST) times `resolution_scale` and not flipped: the image sizes the width
    sweep evaluates that scale at, so BN statistics are estimated on the inputs they will see.
    `records`: the training records to read (default: `calibration_records(cfg)`)."""
    scaled = scaled_test_cfg(cfg, resolution_scale)
    resize = T.ResizeShortestEdge(scaled.INPUT.MIN_SIZE_TEST, scaled.INPUT.MAX_SIZE_TEST)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[resize])
    return build_detection_train_loader(cfg, mapper=mapper,
                                        dataset=calibration_records(cfg) if records is None else records)


def calibration_batches(cfg) -> Callable[[float], Iterator]:
    """`resolution_scale -> iterator of calibration batches` (what `use_configuration` and the
    after-training calibration take). The training records are read once per sweep
    (`calibration_records`); a scale's loader is built on first use and continued while that
    scale is asked for, and closed (its workers with it) when another scale is: ask scale by
    scale. Nothing of a finished scale stays alive."""
    records: List[Dict] = []
    current: Dict[float, Iterator] = {}

    def batches(resolution_scale: float) -> Iterator:
        if resolution_scale not in current:
            current.clear()
            if not records:
                records.extend(calibration_records(cfg))
            current[resolution_scale] = iter(build_calibration_loader(cfg, resolution_scale, records))
        return current[resolution_scale]

    return batches


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterator, width: float, resolution_scale: float,
                 num_batches: int) -> bool:
    """Re-estimate BN statistics at (width, resolution_scale) from `num_batches` training batches
    (Detectron2 training inputs with ground truth, already at the configuration's input size, see
    `build_calibration_loader`) and store them in `model.bn_stats_bank` under that key.
    The model's width is left at `width`. Returns False when the model has no BN to calibrate."""
    layers = bn_layers(model)
    set_width(model, width)
    if not layers:
        return False
    momenta = {name: layer.momentum for name, layer in layers.items()}
    was_training = model.training
    for layer in layers.values():
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the calibration batches
    model.train()
    try:
        # the ROI heads log to an EventStorage: keep it out of training's; float32 statistics
        with EventStorage(), torch.autocast(_device_type(model), enabled=False):
            for _ in range(num_batches):
                model(next(batches))
    finally:
        for name, layer in layers.items():
            layer.momentum = momenta[name]
        model.train(was_training)
    _average_over_processes(layers)
    model.bn_stats_bank.store(model, width, resolution_scale)
    return True


def _average_over_processes(layers: Dict[str, nn.Module]) -> None:
    """One set of statistics per configuration, whatever the process count. With SyncBN each
    batch's statistics were already global (all ranks' pixels); with plain BN each rank estimated
    them on its own images, so the in-training sweep would score each rank's share with other
    statistics than the saved bank (rank 0's). Here each plain-BN statistic becomes the mean over
    ranks (every rank calibrates the same number of batches of the same size), the same on all."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return
    from .modeling.slimmable_ops import SlimmableSyncBatchNorm

    for layer in layers.values():
        if isinstance(layer, (SlimmableSyncBatchNorm, nn.SyncBatchNorm)):
            continue
        for statistic in (layer.running_mean, layer.running_var):
            torch.distributed.all_reduce(statistic)
            statistic.div_(world_size)


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def use_configuration(model: nn.Module, width: float, resolution_scale: float = 1.0,
                      calibration_batches: Callable[[float], Iterator] = None, num_batches: int = 10) -> str:
    """Set `width` and the BN statistics for (width, resolution_scale).

    Returns how the statistics were obtained: "bank", "calibrated", or "none-needed" (no BN).
    `calibration_batches(resolution_scale)` (called only when needed) returns an iterator of
    training batches at that scale's input size (e.g. `iter(build_calibration_loader(cfg, scale))`);
    without it, a configuration missing from the bank is an error.
    """
    set_width(model, width)
    if not bn_layers(model):
        return "none-needed"
    bank = getattr(model, "bn_stats_bank", None)
    if bank is not None and bank.apply(model, width, resolution_scale):
        return "bank"
    if calibration_batches is None:
        raise ValueError(
            f"No calibrated BN statistics for width {width}, resolution scale {resolution_scale} in "
            f"this checkpoint (banked: {bank.configurations() if bank is not None else []}), and no "
            "training data was given to calibrate them (DATASETS.TRAIN)")
    logger.info(f"BN stats bank has no entry for width {width}, scale {resolution_scale}: calibrating "
                f"on {num_batches} training batches")
    calibrate_bn(model, calibration_batches(resolution_scale), width, resolution_scale, num_batches)
    return "calibrated"
