"""Slimmable norms against PyTorch's own layers on the same channel slice.

The synchronised BN path runs in one process here: the all-reduce is replaced by one that adds a
second rank's sums and count, so the result must equal nn.BatchNorm2d over both ranks' batches
concatenated (the two-process test with real gloo ranks is in tests/test_bn_calibration.py)."""
import pytest
import torch
import torch.nn as nn

import mutualnet_det.modeling.slimmable_ops as slimmable_ops
from mutualnet_det.modeling.slimmable_ops import SlimmableBatchNorm2d, SlimmableSyncBatchNorm

CHANNELS = 8


def trained(norm):
    """A norm whose affine parameters and running statistics look trained (not 1/0 defaults)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.bias.copy_(torch.rand(norm.num_features, generator=generator) - 0.5)
        norm.running_mean.copy_(torch.rand(norm.num_features, generator=generator) * 2 - 1)
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.num_batches_tracked.fill_(7)
    return norm


def reference_of(slim, channels):
    """nn.BatchNorm2d holding the first `channels` of `slim`'s parameters and statistics."""
    reference = nn.BatchNorm2d(channels, eps=slim.eps, momentum=slim.momentum)
    reference.load_state_dict({name: value[:channels] if value.dim() else value.clone()
                               for name, value in slim.state_dict().items()})
    return reference


def two_ranks(monkeypatch, other_batch):
    """Make the SyncBN path run with a second rank that holds `other_batch` (N x C x H x W)."""
    channels = other_batch.shape[1]
    other = torch.cat([other_batch.sum(dim=[0, 2, 3]), (other_batch * other_batch).sum(dim=[0, 2, 3]),
                       torch.tensor([float(other_batch.numel() // channels)])])
    monkeypatch.setattr(slimmable_ops.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(slimmable_ops, "differentiable_all_reduce", lambda local: local + other)


@pytest.mark.parametrize("channels", [CHANNELS, 5])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_bn_equals_bn_over_both_ranks_batches(monkeypatch, channels, momentum):
    """Output, input gradient and running statistics (unbiased variance over all N values; the
    exponential or, with momentum None, the cumulative average) equal nn.BatchNorm2d in training
    on the two ranks' batches together; a narrower input leaves the other channels' statistics."""
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(2, channels, 3, 5, generator=generator) * 2 + 1).requires_grad_()
    y = torch.randn(3, channels, 3, 5, generator=generator) * 0.5 - 1
    sync = trained(SlimmableSyncBatchNorm(CHANNELS, momentum=momentum)).train()
    reference = reference_of(sync, channels).train()
    untouched = {name: sync.running_mean[channels:].clone() for name in ("mean",)}
    two_ranks(monkeypatch, y)

    out = sync(x)
    expected = reference(torch.cat([x, y]))[: len(x)]
    assert torch.allclose(out, expected, atol=1e-5)
    weights = torch.rand(out.shape, generator=generator)
    (gradient,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.allclose(gradient, expected_gradient, atol=1e-5)
    assert torch.allclose(sync.running_mean[:channels], reference.running_mean, atol=1e-6)
    assert torch.allclose(sync.running_var[:channels], reference.running_var, atol=1e-6)
    assert int(sync.num_batches_tracked) == int(reference.num_batches_tracked) == 8
    assert torch.equal(sync.running_mean[channels:], untouched["mean"])


def test_sync_bn_keeps_the_input_dtype_and_computes_in_float32(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, CHANNELS, 4, 4, generator=generator) * 3 + 2
    y = torch.randn(2, CHANNELS, 4, 4, generator=generator)
    sync = trained(SlimmableSyncBatchNorm(CHANNELS)).train()
    reference = reference_of(sync, CHANNELS).train()
    two_ranks(monkeypatch, y)
    out = sync(x.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = reference(torch.cat([x.bfloat16().float(), y]))[:2]
    assert torch.allclose(out.float(), expected, atol=0.05)


def test_sync_bn_on_an_empty_rank_learns_from_the_other(monkeypatch):
    """A rank without images (N = 0) still takes part: its statistics come from the other rank;
    with no values on any rank nothing is learnt."""
    y = torch.randn(2, CHANNELS, 3, 3, generator=torch.Generator().manual_seed(3))
    sync = trained(SlimmableSyncBatchNorm(CHANNELS)).train()
    reference = reference_of(sync, CHANNELS).train()
    two_ranks(monkeypatch, y)
    assert sync(torch.zeros(0, CHANNELS, 3, 3)).shape == (0, CHANNELS, 3, 3)
    reference(y)
    assert torch.allclose(sync.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(sync.running_var, reference.running_var, atol=1e-6)

    before = {name: value.clone() for name, value in sync.state_dict().items()}
    two_ranks(monkeypatch, torch.zeros(0, CHANNELS, 3, 3))
    assert sync(torch.zeros(0, CHANNELS, 3, 3)).shape == (0, CHANNELS, 3, 3)
    assert all(torch.equal(before[name], value) for name, value in sync.state_dict().items())


def test_sync_bn_with_one_rank_or_in_eval_is_plain_bn():
    """World size 1 (no process group) and eval mode take the single-process BN path."""
    x = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(4))
    for training in (True, False):
        sync = trained(SlimmableSyncBatchNorm(CHANNELS)).train(training)
        reference = reference_of(sync, 5).train(training)
        assert torch.allclose(sync(x), reference(x), atol=1e-6)
        assert torch.allclose(sync.running_var[:5], reference.running_var, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_bn_on_a_channel_slice_equals_bn_of_that_size(momentum, training):
    x = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(5)) * 2 + 1
    slim = trained(SlimmableBatchNorm2d(CHANNELS, momentum=momentum)).train(training)
    reference = reference_of(slim, 5).train(training)
    for _ in range(2):
        assert torch.allclose(slim(x), reference(x), atol=1e-5)
    assert torch.allclose(slim.running_mean[:5], reference.running_mean, atol=1e-6)
    assert torch.allclose(slim.running_var[:5], reference.running_var, atol=1e-6)
    if momentum is None:  # the batch count drives the cumulative average (a slice with a momentum does not count)
        assert int(slim.num_batches_tracked) == int(reference.num_batches_tracked)
