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
    """Make the SyncBN path run with a second rank that holds `other_batch` (N x C x H x W) and
    whose loss does not depend on this rank's output: the forward all-reduce (sums, sums of
    squares, count: 2C + 1 values) adds that rank's, the backward one (2C values of dy) adds 0."""
    channels = other_batch.shape[1]
    other = torch.cat([other_batch.sum(dim=[0, 2, 3]), (other_batch * other_batch).sum(dim=[0, 2, 3]),
                       torch.tensor([float(other_batch.numel() // channels)])])

    def all_reduce(tensor, *args, **kwargs):
        if tensor.numel() == len(other):
            tensor.add_(other)
        else:
            assert tensor.numel() == 2 * channels  # the backward's: the other rank's dy is 0 here

    monkeypatch.setattr(slimmable_ops.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(slimmable_ops.dist, "all_reduce", all_reduce)


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


def test_sync_bn_with_two_ranks_in_eval_uses_the_running_statistics(monkeypatch):
    x = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(6))
    sync = trained(SlimmableSyncBatchNorm(CHANNELS)).eval()
    reference = reference_of(sync, 5).eval()
    two_ranks(monkeypatch, torch.randn(2, 5, 3, 3))
    assert torch.allclose(sync(x), reference(x), atol=1e-6)
    assert torch.equal(sync.running_mean, trained(SlimmableSyncBatchNorm(CHANNELS)).running_mean)  # nothing learnt


def test_sync_bn_constant_channel_and_two_values_over_both_ranks(monkeypatch):
    """A channel with one value everywhere (variance 0) normalises to its bias; with two values
    in all (one per rank) the running variance is the unbiased one, twice the biased."""
    x = torch.randn(1, CHANNELS, 1, 1, generator=torch.Generator().manual_seed(7))
    y = torch.randn(1, CHANNELS, 1, 1, generator=torch.Generator().manual_seed(8))
    x[:, 0], y[:, 0] = 3.0, 3.0
    sync = trained(SlimmableSyncBatchNorm(CHANNELS)).train()
    reference = reference_of(sync, CHANNELS).train()
    two_ranks(monkeypatch, y)
    out = sync(x)
    # x * scale - mean * scale with scale = 1 / sqrt(eps) about 316: float32 keeps about 1e-4 of it
    assert torch.allclose(out, reference(torch.cat([x, y]))[:1], atol=1e-3)
    assert torch.allclose(out[0, 0], sync.bias[0].detach(), atol=1e-3)
    assert torch.allclose(sync.running_var, reference.running_var, atol=1e-6)


def test_sync_bn_with_a_single_value_in_all_normalises_it_to_the_bias(monkeypatch):
    """One value per channel over all ranks (N x H x W = 1, the other rank empty): the mean is that
    value, the variance 0, so the output is the bias; the running mean moves towards the value
    (nn.BatchNorm2d refuses this case in training, so the numbers are by hand)."""
    x = torch.randn(1, CHANNELS, 1, 1, generator=torch.Generator().manual_seed(9))
    sync = trained(SlimmableSyncBatchNorm(CHANNELS, momentum=0.5)).train()
    mean_before, var_before = sync.running_mean.clone(), sync.running_var.clone()
    two_ranks(monkeypatch, torch.zeros(0, CHANNELS, 1, 1))
    out = sync(x)
    assert torch.allclose(out.flatten(), sync.bias.detach(), atol=1e-3)  # as above: scale about 316
    assert torch.allclose(sync.running_mean, 0.5 * mean_before + 0.5 * x.flatten(), atol=1e-6)
    assert torch.allclose(sync.running_var, 0.5 * var_before, atol=1e-6)  # variance 0 (count / max(count - 1, 1))


def test_frozen_bn_on_a_slice_keeps_the_input_dtype():
    """As Detectron2's FrozenBatchNorm2d: scale and shift are cast to the input's dtype."""
    from detectron2.layers import FrozenBatchNorm2d

    from mutualnet_det.modeling.slimmable_ops import SlimmableFrozenBatchNorm2d

    frozen = SlimmableFrozenBatchNorm2d(CHANNELS)
    frozen.load_state_dict(trained(nn.BatchNorm2d(CHANNELS)).state_dict(), strict=False)
    reference = FrozenBatchNorm2d(5)
    reference.load_state_dict({name: value[:5] for name, value in frozen.state_dict().items()})
    x = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(10))
    assert torch.allclose(frozen(x), reference(x), atol=1e-6)
    out = frozen(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference(x.bfloat16().float()), atol=0.05)


@pytest.mark.parametrize("channels,groups", [(8, 4), (6, 2), (5, 1)])
def test_group_norm_on_a_slice_uses_whole_groups(channels, groups):
    """GN with 4 groups over 8 channels: a slice of 6 runs with gcd(6, 4) = 2 groups, of 5 with 1."""
    from mutualnet_det.modeling.slimmable_ops import SlimmableGroupNorm

    slim = SlimmableGroupNorm(4, 8, eps=0.1)
    with torch.no_grad():
        slim.weight.uniform_(0.5, 1.5)
        slim.bias.uniform_(-0.5, 0.5)
    reference = nn.GroupNorm(groups, channels, eps=0.1)
    reference.load_state_dict({name: value[:channels] for name, value in slim.state_dict().items()})
    x = torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(slim(x), reference(x), atol=1e-6)


def test_slimmable_linear_keeps_its_constructor_arguments():
    from mutualnet_det.modeling.slimmable_ops import SlimmableLinear

    assert SlimmableLinear(4, 3, bias=False).bias is None
    assert SlimmableLinear(4, 3, dtype=torch.float64).weight.dtype == torch.float64


def test_slimmable_linear_slices_outputs_and_inputs_like_a_smaller_linear():
    """At width 0.5 a 16 -> 32 Linear keeps 16 outputs; inputs follow the tensor, on any leading
    dimensions, as nn.Linear; built alone it starts at width 1.0 with every output."""
    from mutualnet_det.modeling.slimmable_ops import SlimmableLinear
    from mutualnet_det.width import ChannelRule

    generator = torch.Generator().manual_seed(12)
    for bias in (True, False):
        linear = SlimmableLinear(16, 32, bias=bias)
        assert linear.out_rule == ChannelRule(32) and linear.width == 1.0 and linear.active_out_channels == 32
        linear.set_active_width(0.5)
        for in_features in (16, 8):
            x = torch.randn(2, 3, in_features, generator=generator)
            expected = torch.nn.functional.linear(x, linear.weight[:16, :in_features],
                                                  linear.bias[:16] if bias else None)
            assert torch.allclose(linear(x), expected, atol=1e-6)


def test_slimmable_conv_transpose_slices_like_a_smaller_one():
    from mutualnet_det.modeling.slimmable_ops import SlimmableConvTranspose2d
    from mutualnet_det.width import ChannelRule

    generator = torch.Generator().manual_seed(13)
    for bias in (True, False):
        deconv = SlimmableConvTranspose2d(16, 32, kernel_size=2, stride=2, bias=bias)
        assert deconv.out_rule == ChannelRule(32) and deconv.width == 1.0 and deconv.active_out_channels == 32
        for width, out_channels in ((1.0, 32), (0.5, 16)):
            deconv.set_active_width(width)
            for in_channels in (16, 8):
                x = torch.randn(1, in_channels, 3, 3, generator=generator)
                expected = torch.nn.functional.conv_transpose2d(
                    x, deconv.weight[:in_channels, :out_channels], deconv.bias[:out_channels] if bias else None, stride=2)
                assert torch.allclose(deconv(x), expected, atol=1e-6)
    with pytest.raises(NotImplementedError, match="^slimmable grouped transposed convolutions are not supported$"):
        SlimmableConvTranspose2d(16, 32, kernel_size=2, groups=2)


def test_slimmable_conv_slices_like_a_smaller_conv_then_norm_and_activation():
    from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d
    from mutualnet_det.width import ChannelRule

    generator = torch.Generator().manual_seed(14)
    for bias in (True, False):
        conv = SlimmableConv2d(16, 32, kernel_size=3, padding=1, stride=2, bias=bias,
                               norm=trained(SlimmableBatchNorm2d(32)).eval(), activation=torch.relu)
        assert conv.out_rule == ChannelRule(32) and conv.width == 1.0 and conv.active_out_channels == 32
        for width, out_channels in ((1.0, 32), (0.5, 16)):
            conv.set_active_width(width)
            for in_channels in (16, 8):
                x = torch.randn(1, in_channels, 5, 5, generator=generator)
                plain = torch.nn.functional.conv2d(x, conv.weight[:out_channels, :in_channels],
                                                   conv.bias[:out_channels] if bias else None, stride=2, padding=1)
                expected = torch.relu(reference_of(conv.norm, out_channels).eval()(plain))
                assert torch.allclose(conv(x), expected, atol=1e-5)
    with pytest.raises(NotImplementedError, match="^slimmable grouped convolutions are not supported$"):
        SlimmableConv2d(16, 32, kernel_size=3, groups=2)


def test_slimmable_conv_transpose_slices_when_input_is_wider_than_output_and_keeps_dilation():
    """A 32 -> 16 deconv fed 16 channels (its input sliced, its output full), and an 8 x 8 kernel
    at 8 active outputs: each needs its own slice; dilation is passed on."""
    from mutualnet_det.modeling.slimmable_ops import SlimmableConvTranspose2d

    generator = torch.Generator().manual_seed(15)
    deconv = SlimmableConvTranspose2d(32, 16, kernel_size=2, stride=2, dilation=2)
    x = torch.randn(1, 16, 3, 3, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, deconv.weight[:16], deconv.bias, stride=2, dilation=2)
    assert torch.allclose(deconv(x), expected, atol=1e-6)
    wide_kernel = SlimmableConvTranspose2d(16, 32, kernel_size=8)
    wide_kernel.set_active_width(0.25)  # 8 outputs, as many as the kernel's rows
    x = torch.randn(1, 16, 3, 3, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, wide_kernel.weight[:, :8], wide_kernel.bias[:8])
    assert torch.allclose(wide_kernel(x), expected, atol=1e-6)


def test_converted_linear_and_conv_transpose_keep_every_hyper_parameter():
    from mutualnet_det.modeling.slimmable_ops import slimmable_conv_transpose_like, slimmable_linear_like
    from mutualnet_det.width import ChannelRule

    generator = torch.Generator().manual_seed(16)
    linear = nn.Linear(6, 4, bias=False)
    slim_linear = slimmable_linear_like(linear, ChannelRule(4))
    assert slim_linear.bias is None and torch.equal(slim_linear.weight, linear.weight)
    x = torch.randn(2, 6, generator=generator)
    assert torch.allclose(slim_linear(x), linear(x))

    deconv = nn.ConvTranspose2d(8, 6, kernel_size=3, stride=2, padding=1, output_padding=1, dilation=2, bias=False)
    slim = slimmable_conv_transpose_like(deconv, ChannelRule(6))
    assert slim.bias is None
    x = torch.randn(1, 8, 4, 4, generator=generator)
    assert torch.allclose(slim(x), deconv(x), atol=1e-6)
    with pytest.raises(NotImplementedError, match="grouped"):
        slimmable_conv_transpose_like(nn.ConvTranspose2d(8, 6, kernel_size=2, groups=2), ChannelRule(6))


@pytest.mark.parametrize("options", [dict(eps=0.1), dict(affine=False), dict(track_running_stats=False),
                                     dict(track_running_stats=False, momentum=None)])
@pytest.mark.parametrize("training", [True, False])
def test_bn_options_on_a_channel_slice_equal_bn_of_that_size(options, training):
    generator = torch.Generator().manual_seed(17)
    slim = SlimmableBatchNorm2d(CHANNELS, **options).train(training)
    reference = nn.BatchNorm2d(5, **options).train(training)
    with torch.no_grad():
        if slim.affine:
            slim.weight.uniform_(0.5, 1.5)
            slim.bias.uniform_(-0.5, 0.5)
        if slim.track_running_stats:
            slim.running_mean.uniform_(-1, 1)
            slim.running_var.uniform_(0.5, 1.5)
    reference.load_state_dict({name: value[:5] if value.dim() else value.clone() for name, value in slim.state_dict().items()})
    x = torch.randn(2, 5, 3, 3, generator=generator) * 2 + 1
    assert torch.allclose(slim(x), reference(x), atol=1e-5)
    if slim.track_running_stats:
        assert torch.allclose(slim.running_var[:5], reference.running_var, atol=1e-6)


def test_slimmable_conv_with_dilation_and_an_input_as_wide_as_the_kernel():
    """Dilation is passed on; a 16 -> 32 conv with an 8 x 8 kernel fed 8 channels at full width
    still slices its input channels."""
    from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d

    generator = torch.Generator().manual_seed(18)
    conv = SlimmableConv2d(16, 32, kernel_size=3, dilation=2, padding=2)
    x = torch.randn(1, 16, 7, 7, generator=generator)
    assert torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=2, dilation=2), atol=1e-5)
    wide_kernel = SlimmableConv2d(16, 32, kernel_size=8)
    x = torch.randn(1, 8, 9, 9, generator=generator)
    expected = torch.nn.functional.conv2d(x, wide_kernel.weight[:, :8], wide_kernel.bias)
    assert torch.allclose(wide_kernel(x), expected, atol=1e-5)


def test_converted_norms_keep_eps_momentum_and_state_and_unknown_norms_are_refused():
    from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm

    from mutualnet_det.modeling.slimmable_ops import SlimmableFrozenBatchNorm2d, SlimmableGroupNorm, slimmable_norm_like

    cases = [(nn.BatchNorm2d(8, eps=0.01, momentum=0.3), SlimmableBatchNorm2d),
             (nn.SyncBatchNorm(8, eps=0.01, momentum=0.3), SlimmableSyncBatchNorm),
             (NaiveSyncBatchNorm(8, eps=0.01, momentum=0.3), SlimmableSyncBatchNorm),
             (FrozenBatchNorm2d(8, eps=0.01), SlimmableFrozenBatchNorm2d),
             (nn.GroupNorm(4, 8, eps=0.01), SlimmableGroupNorm)]
    for norm, kind in cases:
        if hasattr(norm, "running_mean"):
            norm.running_mean.fill_(0.5)
        slim = slimmable_norm_like(norm)
        assert type(slim) is kind and slim.eps == 0.01
        assert getattr(slim, "momentum", 0.3) == 0.3
        assert all(torch.equal(slim.state_dict()[k], v) for k, v in norm.state_dict().items())
    assert slimmable_norm_like(None) is None
    with pytest.raises(ValueError, match=r"^norm LayerNorm has no slimmable version; "
                                         r"use one of BN, SyncBN, naiveSyncBN, nnSyncBN, FrozenBN, GN or '' \(none\)$"):
        slimmable_norm_like(nn.LayerNorm(8))


def test_converted_conv_keeps_dilation_and_refuses_groups():
    from detectron2.layers import Conv2d

    from mutualnet_det.modeling.slimmable_ops import slimmable_conv_like
    from mutualnet_det.width import ChannelRule

    conv = Conv2d(8, 16, kernel_size=3, padding=2, dilation=2)
    x = torch.randn(1, 8, 7, 7, generator=torch.Generator().manual_seed(19))
    assert torch.allclose(slimmable_conv_like(conv, ChannelRule(16))(x), conv(x), atol=1e-6)
    with pytest.raises(NotImplementedError, match="grouped"):
        slimmable_conv_like(Conv2d(8, 16, kernel_size=3, groups=2), ChannelRule(16))


def test_converted_layers_are_moved_to_the_source_layers_device(monkeypatch):
    """A converted layer is built on the CPU and then moved where the layer it replaces is (a GPU
    in training); record the moves (this machine has only the CPU to tell devices apart)."""
    from detectron2.layers import Conv2d

    from mutualnet_det.modeling.slimmable_ops import slimmable_conv_like, slimmable_linear_like
    from mutualnet_det.width import ChannelRule

    moves = []
    real_to = nn.Module.to
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: moves.append((type(self).__name__, args))
                        or real_to(self, *args, **kwargs))
    slimmable_conv_like(Conv2d(4, 8, kernel_size=1), ChannelRule(8))
    slimmable_linear_like(nn.Linear(4, 8), ChannelRule(8))
    assert moves == [("SlimmableConv2d", (torch.device("cpu"),)), ("SlimmableLinear", (torch.device("cpu"),))]


def folding_conv(norm, bias):
    from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d

    conv = SlimmableConv2d(16, 32, kernel_size=3, padding=1, stride=2, bias=bias, norm=norm, activation=torch.relu)
    conv.fold_norm = True
    with torch.no_grad():
        conv.weight.normal_(generator=torch.Generator().manual_seed(3))
        if bias:
            conv.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(4))
    return conv.eval()


def unfolded(conv, x):
    """The layer as Detectron2 runs it: the sliced convolution, then the norm, then the activation."""
    out_channels = conv.active_out_channels
    plain = torch.nn.functional.conv2d(x, conv.weight[:out_channels, :x.shape[1]],
                                       conv.bias[:out_channels] if conv.bias is not None else None, stride=2, padding=1)
    return torch.relu(conv.norm(plain) if conv.norm is not None else plain)


def norm_calls(conv, monkeypatch):
    calls = []
    if conv.norm is not None:
        forward = conv.norm.forward
        monkeypatch.setattr(conv.norm, "forward", lambda x: calls.append(x.shape[1]) or forward(x))
    return calls


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["bn", "bn_eps", "syncbn", "frozen", "gn", "none"])
def test_an_inference_pass_folds_the_norm_into_the_weights_with_the_unfolded_result(kind, bias, monkeypatch):
    from mutualnet_det.modeling.slimmable_ops import SlimmableFrozenBatchNorm2d, SlimmableGroupNorm

    norm = {"bn": lambda: trained(SlimmableBatchNorm2d(32)), "bn_eps": lambda: trained(SlimmableBatchNorm2d(32, eps=0.3)),
            "syncbn": lambda: trained(SlimmableSyncBatchNorm(32)), "frozen": lambda: SlimmableFrozenBatchNorm2d(32),
            "gn": lambda: SlimmableGroupNorm(4, 32), "none": lambda: None}[kind]()
    if kind == "frozen":
        randomize = torch.Generator().manual_seed(5)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, name).copy_(torch.rand(32, generator=randomize) + (0.5 if name in ("weight", "running_var") else -0.5))
    conv = folding_conv(norm, bias)
    calls = norm_calls(conv, monkeypatch)
    generator = torch.Generator().manual_seed(6)
    for width, in_channels in ((1.0, 16), (0.5, 8), (0.5, 16), (0.25, 8)):
        conv.set_active_width(width)
        x = torch.randn(2, in_channels, 9, 11, generator=generator)
        with torch.no_grad():
            expected = unfolded(conv, x)
            calls.clear()
            got = conv(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # BN kinds are folded (the norm is not run); GroupNorm runs after the cached convolution
        assert calls == ([] if kind in ("bn", "bn_eps", "syncbn", "frozen", "none") else [conv.active_out_channels])


def test_folded_weights_follow_the_width_the_statistics_the_weights_device_and_dtype(monkeypatch):
    conv = folding_conv(trained(SlimmableBatchNorm2d(32)), bias=True)
    x = torch.randn(1, 16, 9, 11, generator=torch.Generator().manual_seed(7))

    def check():
        with torch.no_grad():
            torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)

    check()
    conv.set_active_width(0.5)  # a width change
    check()
    with torch.no_grad():
        conv.norm.running_var[:8].mul_(3.0)  # a bank entry copied in place
        check()
        conv.norm.running_mean.copy_(torch.linspace(-2, 2, 32))
        check()
        conv.weight.add_(0.5)  # an optimizer step
        check()
        conv.norm.bias.sub_(1.0)
        check()
    conv.load_state_dict({k: v * 1.5 if v.is_floating_point() else v for k, v in conv.state_dict().items()})
    check()
    conv.double()  # dtype
    x = x.double()
    with torch.no_grad():
        assert conv(x).dtype == torch.float64
    check()
    conv.norm.eps = 0.5  # not a tensor: keyed on its own
    check()
    conv.norm.running_var.data.mul_(2.0)  # .data bypasses the version counter: fold_norms drops the cache
    slimmable_ops.fold_norms(conv)
    check()


def test_a_layer_made_under_inference_mode_folds_at_every_pass_without_caching():
    """Inference tensors have no version counter to key a cache on: the layer still folds, and
    follows in-place changes of its statistics."""
    with torch.inference_mode():
        conv = folding_conv(trained(SlimmableBatchNorm2d(32)), bias=True)
        x = torch.randn(1, 16, 9, 11, generator=torch.Generator().manual_seed(9))
        for width in (1.0, 0.5):
            conv.set_active_width(width)
            torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)
            conv.norm.running_mean.add_(1.0)
            torch.testing.assert_close(conv(x), unfolded(conv, x), rtol=1e-5, atol=1e-5)
        assert "_inference_cache" not in conv.__dict__


def test_training_gradients_and_tracing_run_the_norm_as_it_is(monkeypatch):
    conv = folding_conv(trained(SlimmableBatchNorm2d(32)), bias=False)
    calls = norm_calls(conv, monkeypatch)
    x = torch.randn(2, 16, 9, 11, generator=torch.Generator().manual_seed(8))
    conv(x)  # eval, with gradients
    conv.train()
    with torch.no_grad():
        conv(x)  # training mode (BN calibration): batch statistics
    conv.eval()
    with torch.no_grad():  # exports (and fvcore's count) trace without gradients: the norm stays a layer
        torch.jit.trace(conv, (x,), check_trace=False)
    assert calls == [32, 32, 32]
    conv.fold_norm = False
    with torch.no_grad():
        conv(x)
    assert calls == [32, 32, 32, 32]


def test_the_model_folds_its_norms_by_config_with_the_same_detections():
    from helpers import tiny_cfg
    from mutualnet_det.engine.trainer import MutualNetTrainer
    from mutualnet_det.width import set_width
    from .reference_nets import randomize_bn_stats

    images = [{"image": torch.randint(0, 256, (3, 64, 80), generator=torch.Generator().manual_seed(i),
                                      dtype=torch.uint8), "height": 64, "width": 80} for i in range(2)]
    outputs = {}
    for fold in (True, False):
        torch.manual_seed(0)
        model = MutualNetTrainer.build_model(tiny_cfg(**{"MUTUALNET.TEST.FOLD_NORMS": fold,
                                                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})).eval()
        randomize_bn_stats(model)
        folding = [m.fold_norm for m in model.modules() if hasattr(m, "fold_norm")]
        assert len(folding) > 10 and set(folding) == {fold}
        set_width(model, 0.5)
        with torch.no_grad():
            outputs[fold] = [o["instances"] for o in model(images)]
    for folded, plain in zip(outputs[True], outputs[False]):
        assert len(folded) == len(plain) > 0
        torch.testing.assert_close(folded.scores, plain.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(folded.pred_boxes.tensor, plain.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        assert torch.equal(folded.pred_classes, plain.pred_classes)
