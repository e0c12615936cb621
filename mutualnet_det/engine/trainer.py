"""`MutualNetTrainer`: Detectron2's DefaultTrainer with the sandwich step, BN calibration after
training, and a width sweep as its evaluation."""
import contextlib
import functools
import logging
import signal
import sys
import threading
import weakref

import torch
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, create_ddp_model, hooks
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from ..bn_calibration import calibrate_bn, calibration_batches
from ..checkpoint import TrainingCheckpointer
from ..config import training_recipe, validate_mutualnet_config
from ..data.resumable_loader import IterationBatchSampler, build_resumable_train_loader
from ..evaluation.width_sweep import build_evaluator, run_width_sweep, sweep_configurations
from ..width import set_width, width_range_of
from .cohort import sample_cohort
from .distillation import InplaceDistillation
from .precision import step_precision
from .sandwich_trainer import SandwichTrainer, unwrap

logger = logging.getLogger(__name__)


def cohort_seed(cfg) -> int:
    if cfg.MUTUALNET.TRAIN.COHORT_SEED >= 0:
        return cfg.MUTUALNET.TRAIN.COHORT_SEED
    return cfg.SEED if cfg.SEED >= 0 else 0


def training_seed(cfg) -> int:
    """The seed of the data order, augmentations and the step's draws: SEED, or one drawn now
    (the same on every rank) and kept in the checkpoints, so a resumed run continues it."""
    return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()


def cohort_sampler(cfg):
    """iteration -> cohort, as configured (same on every rank, same after resume)."""
    train = cfg.MUTUALNET.TRAIN
    return functools.partial(sample_cohort, train.METHOD, tuple(cfg.MUTUALNET.WIDTH_RANGE),
                             train.NUM_RANDOM_WIDTHS, tuple(train.RESOLUTION_SCALES), cohort_seed(cfg))


def build_distillation(cfg):
    """The configured inplace distillation, or None."""
    train = cfg.MUTUALNET.TRAIN
    return InplaceDistillation(train.DISTILL_MODE, train.DISTILL_WEIGHT) if train.INPLACE_DISTILL else None


class BNCalibrationHook(HookBase):
    """After the last iteration (before the final checkpoint), calibrate BN statistics for every
    MUTUALNET.TEST configuration, on inputs at that configuration's test size, and store them in
    the model's BN stats bank."""

    def __init__(self, cfg):
        self.cfg = cfg

    def after_step(self):
        if self.trainer.iter + 1 < self.trainer.max_iter or not self.cfg.MUTUALNET.BN_CALIB.AFTER_TRAIN:
            return
        model = unwrap(self.trainer.model)
        batches = calibration_batches(self.cfg)
        # scale by scale: each scale's loader is closed when the next scale starts
        for width, scale in sorted(sweep_configurations(self.cfg), key=lambda c: -c[1]):
            if calibrate_bn(model, batches(scale), width, scale, self.cfg.MUTUALNET.BN_CALIB.NUM_BATCHES):
                logger.info(f"Calibrated BN statistics for width {width}, resolution scale {scale}")
        set_width(model, self.cfg.MUTUALNET.WIDTH_RANGE[1])


class CheckpointOnFailure(HookBase):
    """When training stops early, for any reason (Ctrl-C or SIGTERM, an unreadable image, a NaN
    loss, out of memory), save a checkpoint of the last good state so `--resume` loses nothing.

    The last good state is the last iteration whose optimizer step was taken (the sandwich
    step records it): a failure before the step leaves the weights of the iteration before, and
    resuming runs the failed iteration again. Weights that are not finite are never saved (the
    periodic checkpoints before them stay). The exception gets a note saying which iteration
    failed and how to resume; tools/train_net.py prints it."""

    def after_train(self):
        error = sys.exc_info()[1]
        trainer = self.trainer
        if error is None or trainer.iter >= trainer.max_iter:
            return
        completed = trainer._trainer.restore_last_good_state()
        note = f"training stopped at iteration {trainer.iter}"
        model = unwrap(trainer.model)
        if completed < trainer.start_iter:
            note += "; no step was completed since the run started, so nothing new to save"
        elif not all(torch.isfinite(p).all() for p in model.parameters()):
            note += "; the weights are not finite, so no checkpoint was saved (the last periodic one stays)"
        elif comm.is_main_process():
            name = f"model_{completed:07d}"
            trainer.iter = completed  # the checkpointer saves the trainer's iteration: the completed one
            with _signals_ignored(signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not interrupt it
                trainer.checkpointer.save(name, iteration=completed)
            note += f"; saved {name}.pth (after iteration {completed})"
        note += "; continue with the same command and --resume"
        logger.info(note)
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(note)


@contextlib.contextmanager
def _signals_ignored(*signums):
    """Ignore these signals inside the block (main thread only: elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class MutualNetTrainer(DefaultTrainer):
    """DefaultTrainer whose step is the sandwich step (SandwichTrainer); otherwise Detectron2's."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        validate_mutualnet_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        seed = training_seed(cfg)
        data_loader = self.build_train_loader(cfg, seed)
        # DDP takes device_ids only for CUDA models (2-process gloo training on CPU needs None).
        on_cuda = next(model.parameters()).is_cuda
        model = create_ddp_model(model, broadcast_buffers=False,
                                 device_ids=[comm.get_local_rank()] if on_cuda else None)
        self._trainer = SandwichTrainer(model, data_loader, optimizer, cohort_of=cohort_sampler(cfg),
                                        distillation=build_distillation(cfg),
                                        precision=step_precision(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE,
                                                                 cfg.MUTUALNET.TRAIN.AMP_DTYPE),
                                        clip_grad_norm_per_member=cfg.MUTUALNET.TRAIN.CLIP_GRAD_NORM_PER_MEMBER,
                                        seed=seed if isinstance(getattr(data_loader, "batch_sampler", None), IterationBatchSampler) else None)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.checkpointer.recipe = training_recipe(cfg)  # saved in every checkpoint, checked on resume
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hook_list = super().build_hooks()
        position = next((i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicCheckpointer)),
                        len(hook_list))
        if position < len(hook_list) and self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP:  # main process only
            hook_list[position] = hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                                             max_to_keep=self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP)
        hook_list.insert(position, BNCalibrationHook(self.cfg))  # the final checkpoint then holds the bank
        # First, so its after_train saves before the writers flush: the window in which a second
        # Ctrl-C could pre-empt the save is as short as it can be.
        return [CheckpointOnFailure()] + hook_list

    @classmethod
    def build_train_loader(cls, cfg, seed=None):
        """Batches fixed by the iteration (data/resumable_loader.py), so --resume continues the
        data order and augmentations exactly; Detectron2's loader for samplers other than
        TrainingSampler (then a resumed run's data order differs, as in Detectron2)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN}: Detectron2's loader; "
                           "a resumed run will not see the data order of an uninterrupted one")
            return super().build_train_loader(cfg)
        return build_resumable_train_loader(cfg, training_seed(cfg) if seed is None else seed)

    def resume_or_load(self, resume=True):
        """Detectron2's, then the data continue at the resumed iteration."""
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "batch_sampler", None)
        if isinstance(sampler, IterationBatchSampler):
            sampler.start_iter = self.start_iter

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW over the same parameter groups (MUTUALNET.TRAIN.OPTIMIZER)."""
        if cfg.MUTUALNET.TRAIN.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        solver = cfg.SOLVER
        params = get_default_optimizer_params(model, base_lr=solver.BASE_LR, weight_decay_norm=solver.WEIGHT_DECAY_NORM,
                                              bias_lr_factor=solver.BIAS_LR_FACTOR,
                                              weight_decay_bias=solver.WEIGHT_DECAY_BIAS)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=solver.BASE_LR,
                                                                   weight_decay=solver.WEIGHT_DECAY)

    @classmethod
    def build_model(cls, cfg):
        validate_mutualnet_config(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Width sweep over MUTUALNET.TEST.{WIDTHS, RESOLUTION_SCALES} on DATASETS.TEST.

        Returns {"<dataset>/w<width>_s<scale>": {"bbox": ..., "segm": ...}} for Detectron2's hooks
        ("..._p<proposals>" when MUTUALNET.TEST.PROPOSALS sweeps proposal counts).
        """
        module = unwrap(model)
        widest = width_range_of(module)[1]

        records = run_width_sweep(cfg, module, calibration_batches(cfg))
        set_width(module, widest)
        results = {}
        for dataset_name, dataset_records in records.items():
            for r in dataset_records:
                key = f"{dataset_name}/w{r['width']:g}_s{r['resolution_scale']:g}"
                if cfg.MUTUALNET.TEST.PROPOSALS:  # one result per proposal count, not the last one
                    key += f"_p{r['proposals']}"
                results[key] = {t: r[t] for t in ("bbox", "segm") if t in r}
        if comm.is_main_process():
            logger.info(f"Evaluated {len(results)} configurations")
        return results
