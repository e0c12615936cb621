"""Plain (non-slimmable) networks with given channel counts, built from Detectron2's modules,
used as independent references for the slimmable backbone at a width."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

BLOCKS = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}


def plain_resnet(depth, stem, outs, inners=None, norm="BN"):
    """Detectron2 ResNet with explicit stem / stage output / bottleneck widths."""
    stages, in_channels = [], stem
    for index, (num_blocks, out_channels) in enumerate(zip(BLOCKS[depth], outs)):
        kwargs = dict(block_class=BasicBlock if depth < 50 else BottleneckBlock, num_blocks=num_blocks,
                      in_channels=in_channels, out_channels=out_channels, norm=norm,
                      stride_per_block=[1 if index == 0 else 2] + [1] * (num_blocks - 1))
        if depth >= 50:
            kwargs.update(bottleneck_channels=inners[index], stride_in_1x1=True)
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
    return ResNet(BasicStem(3, stem, norm=norm), stages, out_features=["res2", "res3", "res4", "res5"])


class PlainFPN(nn.Module):
    """FPN written out with plain convs: laterals to `lateral_channels`, outputs to `out_channels`,
    nearest-neighbour top-down sum, P6 = stride-2 subsampling of P5 (Detectron2's LastLevelMaxPool)."""

    def __init__(self, bottom_up, in_channels, lateral_channels, out_channels):
        super().__init__()
        self.bottom_up = bottom_up
        self.laterals = nn.ModuleList(nn.Conv2d(c, lateral_channels, 1) for c in in_channels)
        self.outputs = nn.ModuleList(nn.Conv2d(lateral_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, x):
        features = self.bottom_up(x)
        names = ["res2", "res3", "res4", "res5"]
        top = self.laterals[3](features["res5"])
        results = {"p5": self.outputs[3](top)}
        for level in (2, 1, 0):
            top = self.laterals[level](features[names[level]]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
            results[f"p{level + 2}"] = self.outputs[level](top)
        results["p6"] = F.max_pool2d(results["p5"], kernel_size=1, stride=2, padding=0)
        return results


def slice_like(full_tensor, shape):
    """The leading block of `full_tensor` with the given shape (first channels of every dim)."""
    return full_tensor[tuple(slice(0, s) for s in shape)]


def load_sliced(reference, full_state):
    """Load each reference tensor as the leading slice of the same-named full-width tensor."""
    state = reference.state_dict()
    for name, tensor in state.items():
        tensor.copy_(slice_like(full_state[name], tensor.shape))


def randomize_bn_stats(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name in ("running_mean", "running_var", "weight", "bias"):
            if isinstance(module, (nn.BatchNorm2d,)) or type(module).__name__.endswith("FrozenBatchNorm2d"):
                buffer = getattr(module, name)
                noise = torch.rand(buffer.shape, generator=generator)
                buffer.data.copy_(noise + 0.5 if name in ("running_var", "weight") else noise - 0.5)
