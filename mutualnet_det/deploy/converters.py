"""ImageNet ResNet checkpoints -> Detectron2 checkpoints for the slimmable backbones.

Supported inputs:
- the official MutualNet / US-Net classification code (`models/resnet.py` + `slimmable_ops.py`):
  `features.0.{0,1}` stem conv and BN, `features.<k>.body.{0,1,3,4,6,7}` the three conv/BN pairs of
  bottleneck k (blocks in order, stride in the 3x3 conv), `features.<k>.shortcut.{0,1}`,
  `classifier.0` (dropped); possibly under `model` and with DataParallel's `module.` prefix. Their
  BN keeps running statistics per trained width in `<bn>.bn.<i>.running_{mean,var}` (sized for that
  width); those of width 1.0 become the model's statistics, all of them entries of the BN stats bank;
- torchvision ResNets (`conv1`, `bn1`, `layer<i>.<j>.conv<k>`, `...downsample.{0,1}`, `fc` dropped);
- Detectron2's own checkpoints (.pkl with `__author__`, e.g. MSRA R-50): kept as they are.
Any key that cannot be mapped is an error: nothing partial is written.
"""
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..bn_calibration import configuration_key

BLOCKS_PER_DEPTH = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
    pass


def load_source(path: str) -> Dict[str, object]:
    """The checkpoint's tensors by name (`model`/`state_dict` unwrapped, `module.` stripped)."""
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
        else:
            data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ConversionError(f"cannot read {path!r} ({type(err).__name__}: {err}); is it truncated?") from None
    if isinstance(data, dict) and "__author__" in data and "model" in data:
        return data  # a Detectron2 checkpoint, kept as is
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data:
        raise ConversionError(f"{path!r} holds no state dict (got {type(data).__name__})")
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in data.items())


def detect_layout(state) -> str:
    if "__author__" in state:
        return "detectron2"
    if any(k.startswith("features.") for k in state):
        return "mutualnet"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "torchvision"
    raise ConversionError("unknown checkpoint layout: expected the official MutualNet ResNet (features.*), "
                          f"torchvision (conv1, layer1.*) or Detectron2; first keys: {list(state)[:5]}")


def _stage_blocks(block_indices: Sequence[int], state, prefix_of) -> List[Tuple[int, int]]:
    """(stage, block) of each MutualNet block, inferred from where the channels double."""
    stages, stage, previous_out = [], 2, None
    for index in block_indices:
        out_channels = state[prefix_of(index) + "body.6.weight"].shape[0]
        if previous_out is not None and out_channels != previous_out:
            stage += 1
        stages.append(stage)
        previous_out = out_channels
    positions, counts = [], {}
    for stage in stages:
        positions.append((stage, counts.get(stage, 0)))
        counts[stage] = counts.get(stage, 0) + 1
    blocks = tuple(counts.get(s, 0) for s in (2, 3, 4, 5))
    if blocks not in BLOCKS_PER_DEPTH:
        raise ConversionError(f"blocks per stage {blocks} are not a ResNet-50/101/152 ({list(BLOCKS_PER_DEPTH)}); "
                              "wrong architecture?")
    return positions


def _bn_statistics(state, bn_prefix, bn_widths, used) -> Tuple[Dict[str, object], Dict[float, Dict[str, object]]]:
    """Model statistics and per-width statistics of one official USBatchNorm2d."""
    entries = sorted({int(m.group(1)) for k in state for m in [re.match(re.escape(bn_prefix) + r"bn\.(\d+)\.", k)] if m})
    per_width = {}
    if entries:
        if bn_widths is None or len(bn_widths) != len(entries):
            raise ConversionError(
                f"{bn_prefix}bn holds running statistics for {len(entries)} widths: give them in order with "
                f"--bn-widths (the training run's width_mult_list), e.g. --bn-widths 0.25 1.0")
        for width, index in zip(bn_widths, entries):
            per_width[width] = {s: state[f"{bn_prefix}bn.{index}.{s}"] for s in ("running_mean", "running_var")}
            used.update(f"{bn_prefix}bn.{index}.{s}" for s in ("running_mean", "running_var", "num_batches_tracked"))
    if f"{bn_prefix}running_mean" in state:
        main = {s: state[f"{bn_prefix}{s}"] for s in ("running_mean", "running_var")}
        used.update(f"{bn_prefix}{s}" for s in ("running_mean", "running_var", "num_batches_tracked"))
    elif 1.0 in per_width:
        main = per_width[1.0]
    else:
        raise ConversionError(f"{bn_prefix}: no running statistics for width 1.0 (no running_mean, and 1.0 not in "
                              "--bn-widths)")
    return main, per_width


def convert_mutualnet(state, bn_widths: Optional[Sequence[float]] = None):
    """(Detectron2 ResNet state with names like res2.0.conv1.weight, bank {width: {name: stat}})."""
    used = set()
    mapped, bank = OrderedDict(), {}

    def put_conv_bn(src_conv, src_bn, dst):
        mapped[f"{dst}.weight"] = state[f"{src_conv}.weight"]
        used.add(f"{src_conv}.weight")
        for field in ("weight", "bias"):
            mapped[f"{dst}.norm.{field}"] = state[f"{src_bn}.{field}"]
            used.add(f"{src_bn}.{field}")
        main, per_width = _bn_statistics(state, f"{src_bn}.", bn_widths, used)
        for stat, value in main.items():
            mapped[f"{dst}.norm.{stat}"] = value
        for width, stats in per_width.items():
            for stat, value in stats.items():
                full = torch.as_tensor(main[stat]).clone()
                full[:len(value)] = torch.as_tensor(value)
                bank.setdefault(width, OrderedDict())[f"{dst}.norm.{stat}"] = full

    try:
        put_conv_bn("features.0.0", "features.0.1", "stem.conv1")
        block_indices = sorted({int(m.group(1)) for k in state for m in [re.match(r"features\.(\d+)\.body\.", k)] if m})
        prefix_of = "features.{}.".format
        for index, (stage, block) in zip(block_indices, _stage_blocks(block_indices, state, prefix_of)):
            src, dst = prefix_of(index), f"res{stage}.{block}"
            for conv, bn, name in (("body.0", "body.1", "conv1"), ("body.3", "body.4", "conv2"), ("body.6", "body.7", "conv3")):
                put_conv_bn(src + conv, src + bn, f"{dst}.{name}")
            if f"{src}shortcut.0.weight" in state:
                put_conv_bn(src + "shortcut.0", src + "shortcut.1", f"{dst}.shortcut")
    except KeyError as err:
        raise ConversionError(f"key {err} expected in an official MutualNet ResNet is missing; wrong architecture?") from None
    used.update(k for k in state if k.startswith("classifier.") or k.endswith("num_batches_tracked"))
    _refuse_leftovers(state, used)
    return mapped, bank


def convert_torchvision(state):
    """Detectron2 ResNet state (res2.0.conv1.weight, ...) from a torchvision ResNet state dict."""
    mapped, used = OrderedDict(), set()
    rules = [(r"^conv1\.weight$", "stem.conv1.weight"), (r"^bn1\.(\w+)$", r"stem.conv1.norm.\1"),
             (r"^layer(\d)\.(\d+)\.conv(\d)\.weight$", None), (r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$", None),
             (r"^layer(\d)\.(\d+)\.downsample\.0\.weight$", None), (r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$", None)]
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            used.add(key)
            continue
        for pattern, target in rules:
            match = re.match(pattern, key)
            if not match:
                continue
            if target is not None:
                name = match.expand(target)
            else:
                stage = int(match.group(1)) + 1
                block = match.group(2)
                if "downsample.0" in key:
                    name = f"res{stage}.{block}.shortcut.weight"
                elif "downsample.1" in key:
                    name = f"res{stage}.{block}.shortcut.norm.{match.group(3)}"
                elif ".conv" in key:
                    name = f"res{stage}.{block}.conv{match.group(3)}.weight"
                else:
                    name = f"res{stage}.{block}.conv{match.group(3)}.norm.{match.group(4)}"
            mapped[name] = value
            used.add(key)
            break
    _refuse_leftovers(state, used)
    if "stem.conv1.weight" not in mapped or not any(k.startswith("res5.") for k in mapped):
        raise ConversionError("no stem or no layer4 in this torchvision checkpoint; wrong architecture?")
    return mapped


def _refuse_leftovers(state, used):
    leftovers = [k for k in state if k not in used]
    if leftovers:
        raise ConversionError(f"{len(leftovers)} keys could not be mapped (nothing written): "
                              + ", ".join(leftovers[:10]) + (" ..." if len(leftovers) > 10 else ""))


def to_detectron2_checkpoint(mapped, bank=None, prefix="backbone.bottom_up.", author="mutualnet_det converter"):
    """A Detectron2 .pkl payload: backbone tensors under `prefix`, BN stats bank entries at scale 1.0."""
    model = OrderedDict((prefix + k, np.asarray(torch.as_tensor(v).detach().cpu().numpy())) for k, v in mapped.items())
    for width, stats in (bank or {}).items():
        for name, value in stats.items():
            model[f"bn_stats_bank.{configuration_key(width, 1.0)}.{prefix}{name}"] = torch.as_tensor(value).numpy()
    return {"model": model, "__author__": author, "matching_heuristics": False}


def convert_checkpoint(path: str, bn_widths=None, prefix="backbone.bottom_up.") -> Tuple[dict, str]:
    """(Detectron2 checkpoint payload, layout name) for the checkpoint at `path`."""
    state = load_source(path)
    layout = detect_layout(state)
    if layout == "detectron2":
        return state, layout
    if layout == "mutualnet":
        mapped, bank = convert_mutualnet(state, bn_widths)
        return to_detectron2_checkpoint(mapped, bank, prefix), layout
    return to_detectron2_checkpoint(convert_torchvision(state), None, prefix), layout
