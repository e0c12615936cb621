"""The resumable loader's batches: Detectron2's image order and aspect-ratio grouping, a
fast-forward that equals the tail of the whole sequence, and augmentations fixed by the seed."""
import itertools

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from helpers import tiny_cfg

from mutualnet_det.data.resumable_loader import (IterationBatchSampler, SeededMapDataset, aspect_group,
                                                 build_resumable_train_loader, iteration_seed)

# 23 records, landscape and portrait mixed, so that grouping reorders the stream
RECORDS = [{"width": 320 if i % 3 else 200, "height": 240 if i % 3 else 300, "index": i} for i in range(23)]


def detectron2_batches(seed, images_per_batch, count):
    """What Detectron2 builds without workers: TrainingSampler's stream, AspectRatioGroupedDataset."""
    stream = (RECORDS[i] for i in TrainingSampler(len(RECORDS), seed=seed))
    grouped = AspectRatioGroupedDataset(stream, images_per_batch)
    return [[record["index"] for record in batch] for batch in itertools.islice(iter(grouped), count)]


def our_batches(sampler, count):
    return [[index for index, _ in batch] for batch in itertools.islice(iter(sampler), count)]


def test_batches_are_detectron2s_order_and_grouping():
    sampler = IterationBatchSampler([aspect_group(r) for r in RECORDS], 4, seed=7)
    assert our_batches(sampler, 30) == detectron2_batches(7, 4, 30)
    assert our_batches(sampler, 30) != detectron2_batches(8, 4, 30)
    for batch in our_batches(sampler, 30):  # one aspect group per batch
        assert len({aspect_group(RECORDS[i]) for i in batch}) == 1


def test_fast_forward_equals_the_tail_and_seeds_follow_the_iteration():
    sampler = IterationBatchSampler([aspect_group(r) for r in RECORDS], 4, seed=7, rank=1, world_size=2)
    whole = list(itertools.islice(iter(sampler), 20))
    sampler.start_iter = 13
    assert list(itertools.islice(iter(sampler), 7)) == whole[13:]
    assert whole[13][2][1] == iteration_seed(7, 1, 13, 2)
    assert len({seed for batch in whole for _, seed in batch}) == 20 * 4  # no two samples share a seed


def test_ranks_split_the_stream():
    groups = [0] * len(RECORDS)  # one group: batches are consecutive shards
    ranks = [list(itertools.chain(*our_batches(IterationBatchSampler(groups, 2, 3, r, 2), 5))) for r in (0, 1)]
    stream = list(itertools.islice(iter(TrainingSampler(len(RECORDS), seed=3)), 20))
    assert ranks[0] == stream[0::2] and ranks[1] == stream[1::2]


def test_a_sample_is_the_same_whatever_ran_before():
    """The same (index, seed) maps to the same tensors after other draws; the seed decides the flip."""
    cfg = tiny_cfg(**{"INPUT.RANDOM_FLIP": "horizontal"})
    loader = build_resumable_train_loader(cfg, seed=5)
    dataset = loader.dataset
    assert isinstance(dataset, SeededMapDataset)
    first = dataset[(3, 1234)]["image"]
    np.random.rand(10), torch.rand(10)  # other draws in between
    assert torch.equal(dataset[(3, 1234)]["image"], first)
    images = {bytes(dataset[(3, seed)]["image"].numpy()) for seed in range(8)}
    assert len(images) == 2  # flipped or not, as the seed says
    batch = next(iter(loader))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH
    shapes = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert {record["file_name"] for record in batch} <= {record["file_name"] for record in shapes}
