"""Slimmable layers: Detectron2's layers plus "use the first k channels".

Conv, Linear, ConvTranspose: output channels follow the model width (`ChannelRule`; a fixed rule
keeps them full, as for the heads' predictors), input channels follow the incoming tensor, so a
layer never needs to know its predecessor. Each exposes `active_weight(in_channels)`, the weight
slice it runs on (used by the forward, the parameter count and the fixed-width export). Norms read their channel count from the
input, and slice as follows:
- BatchNorm / SyncBN: one shared affine (weight, bias)[:c] and running statistics [:c] (the full
  buffers are updated in place through the slice). Statistics that are right for one width are
  wrong for another: calibrate per (width, resolution scale) with `mutualnet_det.bn_calibration`.
- FrozenBatchNorm: all four buffers sliced [:c]; nothing to calibrate.
- GroupNorm: affine [:c]; the number of groups is the configured one when it divides c, otherwise
  gcd(c, groups), so every width has whole groups (full width is exactly the configured GN).
Parameter names and shapes are those of the wrapped Detectron2 layers, so checkpoints load as is.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.layers.wrappers import check_if_dynamo_compiling
from detectron2.utils import comm

from ..width import ChannelRule, SlimmableLayer
from .inference_cache import tensors_key


class SlimmableConv2d(Conv2d, SlimmableLayer):
    """Detectron2 `Conv2d` (conv, then optional norm and activation) on a channel slice.

    With `fold_norm` set (`fold_norms`; SlimmableRCNN sets it from MUTUALNET.TEST.FOLD_NORMS), a
    pass in eval mode without gradients, not traced or compiled, runs on cached weights with an
    eval-mode BatchNorm or a FrozenBatchNorm folded in (`_inference_weights`): the same output up
    to float rounding, one operation instead of three at every layer, which is most of what a
    narrow width costs in its convolutions.
    """

    fold_norm = False

    def __init__(self, *args, out_rule: ChannelRule = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise NotImplementedError("slimmable grouped convolutions are not supported")
        self.out_rule = out_rule or ChannelRule(self.out_channels)
        self.set_active_width(1.0)

    def active_weight(self, in_channels: int) -> torch.Tensor:
        weight = self.weight
        if self.active_out_channels != weight.shape[0] or in_channels != weight.shape[1]:
            weight = weight[:self.active_out_channels, :in_channels]
        return weight

    def forward(self, x):
        if self.fold_norm and not (self.training or torch.is_grad_enabled() or torch.jit.is_tracing()
                                   or torch.jit.is_scripting() or check_if_dynamo_compiling()):
            weight, bias, norm_folded = self._inference_weights(x.shape[1])
        else:
            weight, norm_folded = self.active_weight(x.shape[1]), False
            bias = self.bias[:self.active_out_channels] if self.bias is not None else None
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None and not norm_folded:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _inference_weights(self, in_channels: int):
        """(weight, bias, whether the norm is folded into them) for an inference pass: the active
        slice, contiguous, with an eval-mode BatchNorm or a FrozenBatchNorm folded in
        (conv(x, W * s) + (b - mean) * s + beta, s = gamma / sqrt(var + eps)); other norms run
        after the convolution as usual. Cached for the last (width, input channels, source
        tensors, eps): a change of width, of the BN statistics (a bank entry, a calibration), of
        the weights (a load, an optimizer step), of device or of dtype makes a new one, as each
        changes a source tensor's storage or version (`inference_cache`: writes through `.data`
        are not seen, and inference tensors are folded at every call, not cached)."""
        # read through the modules' dicts: nn.Module.__getattr__ would cost more than the check
        norm = self._modules.get("norm")
        foldable = (isinstance(norm, FrozenBatchNorm2d)
                    or (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
                        and norm.track_running_stats))
        sources = [self._parameters["weight"], self._parameters.get("bias")]
        if foldable:
            tensors = {**norm._parameters, **norm._buffers}
            sources += [tensors.get("weight"), tensors.get("bias"), tensors["running_mean"], tensors["running_var"]]
        sources = [t for t in sources if t is not None]
        state = tensors_key(sources)
        key = (self.active_out_channels, in_channels, state, sources[0].dtype, sources[0].device,
               norm.eps if foldable else None)
        cached = self.__dict__.get("_inference_cache")
        if state is not None and cached is not None and cached[0] == key:
            return cached[1]
        channels = self.active_out_channels
        weight = self.active_weight(in_channels)
        bias = self.bias[:channels] if self.bias is not None else None
        if foldable:
            ones = weight.new_ones(channels, dtype=torch.float32)
            gamma = norm.weight[:channels].float() if norm.weight is not None else ones
            beta = norm.bias[:channels].float() if norm.bias is not None else ones * 0
            scale = gamma * (norm.running_var[:channels].float() + norm.eps).rsqrt()
            shift = beta - norm.running_mean[:channels].float() * scale
            if bias is not None:
                shift = shift + bias.float() * scale
            weight = (weight.float() * scale.reshape(-1, 1, 1, 1)).to(weight.dtype)
            bias = shift.to(weight.dtype)
        folded = (weight.detach().contiguous(), None if bias is None else bias.detach(), foldable)
        if state is None:  # an inference tensor among the sources: nothing to key on
            self.__dict__.pop("_inference_cache", None)
            return folded
        # the sources are kept (aliases) so their storage, hence the key, cannot be reused by others
        self._inference_cache = (key, folded, [t.detach() for t in sources])
        return folded


def fold_norms(model: nn.Module, enabled: bool = True) -> int:
    """Set `fold_norm` on every SlimmableConv2d of `model` (and drop their cached weights);
    returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, SlimmableConv2d)]
    for layer in layers:
        layer.fold_norm = enabled
        layer.__dict__.pop("_inference_cache", None)
    return len(layers)


class SlimmableLinear(nn.Linear, SlimmableLayer):
    """nn.Linear on its first output features and on the input features the tensor brings.

    A Linear after a flattened (C, H, W) map (the box head's fc1) needs nothing more: flattening
    is channel-major, so the first c channels are exactly the first c * H * W features.
    """

    def __init__(self, *args, out_rule: ChannelRule = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.out_rule = out_rule or ChannelRule(self.out_features)
        self.set_active_width(1.0)

    def active_weight(self, in_features: int) -> torch.Tensor:
        weight = self.weight
        if self.active_out_channels != weight.shape[0] or in_features != weight.shape[1]:
            weight = weight[:self.active_out_channels, :in_features]
        return weight

    def forward(self, x):
        bias = self.bias[:self.active_out_channels] if self.bias is not None else None
        return F.linear(x, self.active_weight(x.shape[-1]), bias)


class SlimmableConvTranspose2d(nn.ConvTranspose2d, SlimmableLayer):
    """nn.ConvTranspose2d (weight: in x out x kH x kW) on a channel slice (mask head's deconv)."""

    def __init__(self, *args, out_rule: ChannelRule = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise NotImplementedError("slimmable grouped transposed convolutions are not supported")
        self.out_rule = out_rule or ChannelRule(self.out_channels)
        self.set_active_width(1.0)

    def active_weight(self, in_channels: int) -> torch.Tensor:
        weight = self.weight
        if in_channels != weight.shape[0] or self.active_out_channels != weight.shape[1]:
            weight = weight[:in_channels, :self.active_out_channels]
        return weight

    def forward(self, x):
        bias = self.bias[:self.active_out_channels] if self.bias is not None else None
        return F.conv_transpose2d(x, self.active_weight(x.shape[1]), bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class SlimmableBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first c = input channels of shared affine and running statistics."""

    def forward(self, x):
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        momentum = self.momentum
        if self.training and self.track_running_stats and momentum is None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked)  # cumulative average (calibration)
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:channels] if self.track_running_stats else None,
            self.running_var[:channels] if self.track_running_stats else None,
            self.weight[:channels] if self.affine else None,
            self.bias[:channels] if self.affine else None,
            use_batch_stats,
            momentum if momentum is not None else 0.0,
            self.eps,
        )


class _GlobalBatchNorm(torch.autograd.Function):
    """Training-mode batch norm over the batch of all ranks, as torch's SyncBatchNorm computes it:
    per-channel sums and sums of squares in float32, one all-reduce forward and one backward.

    Only the input (in its own dtype, float16 under AMP) and per-channel vectors are saved for
    backward; the float32 views of the input are temporaries of each pass. No value is read on
    the host (no `.item()`, no `float(tensor)`), so a CUDA step does not wait at each layer.
    Returns (output in the input's dtype, batch mean, biased batch variance, global count).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        x32 = x.float()
        local = torch.cat([x32.sum(dim=[0, 2, 3]), (x32 * x32).sum(dim=[0, 2, 3]),
                           x32.new_full((1,), float(x.numel() // channels))])  # from the shape: no sync
        dist.all_reduce(local)
        sum_, sumsqr, global_count = torch.split(local, [channels, channels, 1])
        count = global_count.clamp(min=1)
        mean = sum_ / count
        var = (sumsqr / count - mean * mean).clamp(min=0)
        invstd = torch.rsqrt(var + eps)
        scale = weight.float() * invstd
        output = x32 * scale.reshape(1, -1, 1, 1) + (bias.float() - mean * scale).reshape(1, -1, 1, 1)
        ctx.save_for_backward(x, weight, mean, invstd, count)
        global_count = global_count.clone()
        ctx.mark_non_differentiable(mean, var, global_count)
        return output.to(x.dtype), mean, var, global_count

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_var, _grad_count):
        x, weight, mean, invstd, count = ctx.saved_tensors
        dy = grad_output.float()
        x_hat = (x.float() - mean.reshape(1, -1, 1, 1)) * invstd.reshape(1, -1, 1, 1)
        sum_dy = dy.sum(dim=[0, 2, 3])
        sum_dy_x_hat = (dy * x_hat).sum(dim=[0, 2, 3])
        grad_weight = sum_dy_x_hat.to(weight.dtype)  # this rank's share; DDP averages the ranks'
        grad_bias = sum_dy.to(weight.dtype)
        grad_input = None
        if ctx.needs_input_grad[0]:
            reduced = torch.cat([sum_dy, sum_dy_x_hat])
            dist.all_reduce(reduced)  # the input's gradient depends on every rank's dy
            mean_dy, mean_dy_x_hat = (reduced / count).reshape(2, 1, -1, 1, 1)
            scale = (weight.float() * invstd).reshape(1, -1, 1, 1)
            grad_input = ((dy - mean_dy - x_hat * mean_dy_x_hat) * scale).to(x.dtype)
        return grad_input, grad_weight, grad_bias, None


class SlimmableSyncBatchNorm(SlimmableBatchNorm2d):
    """SyncBN on a channel slice: batch statistics over all ranks (each rank weighted by its
    element count, as Detectron2's NaiveSyncBatchNorm), running statistics updated like
    single-process BN: exponential average with `momentum`, or, with momentum=None (BN
    calibration), the cumulative average over batches. The running variance is the unbiased
    global variance (N / (N - 1) with N the element count over all ranks), as nn.BatchNorm2d keeps;
    the normalisation itself uses the biased one, as BN does in training. Statistics are float32
    under AMP; nothing is read on the host, so there is no synchronisation per layer on CUDA."""

    def forward(self, x):
        if comm.get_world_size() == 1 or not self.training:
            return super().forward(x)
        channels = x.shape[1]
        output, mean, var, count = _GlobalBatchNorm.apply(x, self.weight[:channels], self.bias[:channels], self.eps)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count)
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean, biased_var, count):
        """In place, on the device: a batch with no values on any rank (count 0) changes nothing."""
        channels = mean.shape[0]
        has_values = count > 0
        self.num_batches_tracked.add_(has_values.to(self.num_batches_tracked.dtype).squeeze(0))
        if self.momentum is not None:
            momentum = has_values.float() * self.momentum
        else:  # cumulative average: 1 / (batches seen, this one included)
            momentum = has_values.float() / self.num_batches_tracked.clamp(min=1).float()
        unbiased_var = biased_var * (count / (count - 1.0).clamp(min=1.0))
        dtype = self.running_mean.dtype  # float32 statistics, or a model cast to half as a whole
        self.running_mean[:channels].lerp_(mean.to(dtype), momentum.to(dtype))
        self.running_var[:channels].lerp_(unbiased_var.to(dtype), momentum.to(dtype))


class SlimmableFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d with all four buffers sliced to the input channels."""

    def forward(self, x):
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        scale = self.weight[:channels] * (self.running_var[:channels] + self.eps).rsqrt()
        shift = self.bias[:channels] - self.running_mean[:channels] * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)


class SlimmableGroupNorm(nn.GroupNorm):
    """GroupNorm on a channel slice; keeps the configured groups when they divide the channels."""

    def forward(self, x):
        channels = x.shape[1]
        if channels == self.num_channels:
            return super().forward(x)
        groups = self.num_groups if channels % self.num_groups == 0 else math.gcd(channels, self.num_groups)
        return F.group_norm(x, groups, self.weight[:channels], self.bias[:channels], self.eps)


@torch.no_grad()
def used_channels(module: nn.Module, *inputs) -> dict:
    """{slimmable layer: (input channels, output channels)} of one forward of `module` at its
    current width (run by the caller in the mode it wants, usually eval); for a Linear, features.

    A layer that did not run (e.g. a mask head on an image without detections) is absent."""
    used = {}
    layers = [m for m in module.modules() if isinstance(m, SlimmableLayer)]
    handles = [c.register_forward_hook(lambda m, i, o: used.__setitem__(m, (i[0].shape[1], o.shape[1]))) for c in layers]
    try:
        module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return used


def slimmable_norm_like(norm: nn.Module):
    """A slimmable norm with the same hyper-parameters and state as a Detectron2 norm layer."""
    if norm is None:
        return None
    if isinstance(norm, FrozenBatchNorm2d):
        slim = SlimmableFrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    elif isinstance(norm, (nn.SyncBatchNorm, NaiveSyncBatchNorm)):
        slim = SlimmableSyncBatchNorm(norm.num_features, eps=norm.eps, momentum=norm.momentum)
    elif isinstance(norm, nn.BatchNorm2d):
        slim = SlimmableBatchNorm2d(norm.num_features, eps=norm.eps, momentum=norm.momentum)
    elif isinstance(norm, nn.GroupNorm):
        slim = SlimmableGroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps)
    else:
        raise ValueError(
            f"norm {type(norm).__name__} has no slimmable version; "
            "use one of BN, SyncBN, naiveSyncBN, nnSyncBN, FrozenBN, GN or '' (none)"
        )
    slim.load_state_dict(norm.state_dict())
    return slim


def slimmable_conv_like(conv: Conv2d, out_rule: ChannelRule) -> SlimmableConv2d:
    """A SlimmableConv2d with the hyper-parameters, weights, norm and activation of `conv`."""
    slim = SlimmableConv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        norm=slimmable_norm_like(getattr(conv, "norm", None)),
        activation=getattr(conv, "activation", None),
        out_rule=out_rule,
    )
    with torch.no_grad():
        slim.weight.copy_(conv.weight)
        if conv.bias is not None:
            slim.bias.copy_(conv.bias)
    for slim_param, param in zip(slim.parameters(), conv.parameters()):
        slim_param.requires_grad_(param.requires_grad)  # keep Detectron2's FREEZE_AT
    return slim.to(conv.weight.device)


def slimmable_linear_like(linear: nn.Linear, out_rule: ChannelRule) -> SlimmableLinear:
    """A SlimmableLinear with the sizes, weights and trainability of `linear`."""
    slim = SlimmableLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, out_rule=out_rule)
    return _copy_parameters(linear, slim)


def slimmable_conv_transpose_like(deconv: nn.ConvTranspose2d, out_rule: ChannelRule) -> SlimmableConvTranspose2d:
    """A SlimmableConvTranspose2d with the hyper-parameters, weights and trainability of `deconv`."""
    slim = SlimmableConvTranspose2d(
        deconv.in_channels, deconv.out_channels, kernel_size=deconv.kernel_size, stride=deconv.stride,
        padding=deconv.padding, output_padding=deconv.output_padding, groups=deconv.groups,
        bias=deconv.bias is not None, dilation=deconv.dilation, out_rule=out_rule)
    return _copy_parameters(deconv, slim)


def _copy_parameters(source: nn.Module, slim: nn.Module) -> nn.Module:
    with torch.no_grad():
        for (name, slim_param), param in zip(slim.named_parameters(), source.parameters()):
            slim_param.copy_(param)
            slim_param.requires_grad_(param.requires_grad)
    return slim.to(source.weight.device)
