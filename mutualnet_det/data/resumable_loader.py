"""A training loader whose batches are a function of the iteration, so a resumed run sees the
data an uninterrupted one would.

Detectron2's train loader restarts its sampler from the seed on resume, and augmentations draw
from each worker's global random state, so a run killed at iteration k and resumed trains on
other images, flipped otherwise, than one that never stopped. Here:
- the image order is Detectron2's (`TrainingSampler`: one seeded permutation per epoch, sharded
  by rank, grouped by aspect ratio as `AspectRatioGroupedDataset` does), computed from the
  records' sizes in the main process and fast-forwarded to the resumed iteration without
  loading an image;
- each sample's augmentation draws from random generators seeded by (seed, rank, iteration,
  position in the batch), whatever worker maps it.
"""
import copy
import logging
import random
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def iteration_seed(seed: int, rank: int, iteration: int, position: int = -1) -> int:
    """A seed that is a pure function of where training is: the training step's own draws
    (position -1: e.g. the RPN's and RoI heads' sampling) or one sample's augmentations."""
    return int(np.random.SeedSequence([seed, rank, iteration, position + 1]).generate_state(1)[0])


class IterationBatchSampler(torchdata.Sampler):
    """Yields, for iteration start_iter, start_iter + 1, ..., this rank's batch as a list of
    (dataset index, augmentation seed) pairs. `seed` and `start_iter` are read when iteration
    starts, so a trainer sets them after loading a checkpoint and before the first batch."""

    def __init__(self, aspect_groups: Sequence[int], images_per_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1, aspect_ratio_grouping: bool = True):
        self.aspect_groups = list(aspect_groups)
        self.images_per_batch = images_per_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.start_iter = 0

    def _indices(self) -> Iterator[int]:
        """This rank's share of the infinite stream of seeded permutations (TrainingSampler's)."""
        generator = torch.Generator().manual_seed(self.seed)
        size = len(self.aspect_groups)
        position = 0
        while True:
            for index in torch.randperm(size, generator=generator).tolist():
                if position % self.world_size == self.rank:
                    yield index
                position += 1

    def _batches(self) -> Iterator[List[int]]:
        buckets = {0: [], 1: []}
        for index in self._indices():
            bucket = buckets[self.aspect_groups[index] if self.aspect_ratio_grouping else 0]
            bucket.append(index)
            if len(bucket) == self.images_per_batch:
                yield bucket[:]
                del bucket[:]

    def __iter__(self):
        for iteration, batch in enumerate(self._batches()):
            if iteration < self.start_iter:  # fast-forward: sizes only, no image is read
                continue
            yield [(index, iteration_seed(self.seed, self.rank, iteration, position))
                   for position, index in enumerate(batch)]


class SeededMapDataset(torchdata.Dataset):
    """dataset[(index, seed)] = mapper(record index) with Python's, NumPy's and torch's global
    generators seeded first (Detectron2's augmentations draw from NumPy's). A record the mapper
    drops (None) is replaced by the next one, deterministically."""

    def __init__(self, records, mapper):
        self.records, self.mapper = records, mapper

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index_and_seed: Tuple[int, int]):
        index, seed = index_and_seed
        for attempt in range(len(self.records)):
            random.seed(seed + attempt)
            np.random.seed((seed + attempt) % 2 ** 32)
            torch.manual_seed(seed + attempt)
            mapped = self.mapper(copy.deepcopy(self.records[(index + attempt) % len(self.records)]))
            if mapped is not None:
                return mapped
        raise RuntimeError("the mapper dropped every training record")


def aspect_group(record) -> int:
    """AspectRatioGroupedDataset's buckets: 0 for landscape (width > height), 1 otherwise."""
    return 0 if record["width"] > record["height"] else 1


def build_resumable_train_loader(cfg, seed: int, mapper=None) -> torchdata.DataLoader:
    """Detectron2's training data (its dataset records, its DatasetMapper, TrainingSampler's order,
    aspect-ratio grouping, cfg.DATALOADER.NUM_WORKERS workers) with batches fixed by the iteration.
    The loader's `batch_sampler` is the IterationBatchSampler to set `start_iter`/`seed` on."""
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} must be divisible by the "
                         f"number of processes ({world_size})")
    sampler = IterationBatchSampler([aspect_group(r) for r in records], cfg.SOLVER.IMS_PER_BATCH // world_size,
                                    seed, comm.get_rank(), world_size, cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    dataset = SeededMapDataset(DatasetFromList(records, copy=False), mapper or DatasetMapper(cfg, True))
    return torchdata.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                collate_fn=trivial_batch_collator, worker_init_fn=worker_init_reset_seed)
