"""Checkpoint converters: official MutualNet layout and torchvision, against independent forwards."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from helpers import tiny_cfg

from mutualnet_det import set_width
from mutualnet_det.bn_calibration import use_configuration
from mutualnet_det.deploy.converters import ConversionError, convert_checkpoint
from mutualnet_det.engine.trainer import MutualNetTrainer
from tools_loader import convert_main

BN_WIDTHS = (0.25, 0.5, 0.75, 1.0)
STAGES = (3, 4, 6, 3)


def official_make_divisible(value):  # the official rule: divisor 1, never more than 10% down
    rounded = max(1, int(value + 0.5))
    return rounded + 1 if rounded < 0.9 * value else rounded


def official_channels(channels, width, ratio):
    return int(official_make_divisible(channels * width / ratio) * ratio)


def official_state(seed=0):
    """A state dict with exactly the key layout and shapes of the official MutualNet ResNet-50,
    wrapped as the official training code saves it (`model`, DataParallel `module.` prefix)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, out, inp, k):
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=generator) * (2.0 / (inp * k * k)) ** 0.5

    def bn(name, channels, ratio):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(channels, generator=generator)
        state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=generator)
        for index, width in enumerate(BN_WIDTHS):
            c = official_channels(channels, width, ratio)
            state[f"{name}.bn.{index}.running_mean"] = 0.1 * torch.randn(c, generator=generator)
            state[f"{name}.bn.{index}.running_var"] = 0.5 + torch.rand(c, generator=generator)
            state[f"{name}.bn.{index}.num_batches_tracked"] = torch.tensor(100)

    conv("features.0.0", 64, 3, 7)
    bn("features.0.1", 64, 0.25)
    channels, index = 64, 1
    for stage, blocks in enumerate(STAGES):
        outp = 4 * (64 << stage)
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            midp = outp // 4
            prefix = f"features.{index}"
            conv(f"{prefix}.body.0", midp, channels, 1)
            bn(f"{prefix}.body.1", midp, 0.25)
            conv(f"{prefix}.body.3", midp, midp, 3)
            bn(f"{prefix}.body.4", midp, 0.25)
            conv(f"{prefix}.body.6", outp, midp, 1)
            bn(f"{prefix}.body.7", outp, 1)
            if not (stride == 1 and channels == outp):
                conv(f"{prefix}.shortcut.0", outp, channels, 1)
                bn(f"{prefix}.shortcut.1", outp, 1)
            channels, index = outp, index + 1
    state["classifier.0.weight"] = torch.randn(1000, 2048, generator=generator)
    state["classifier.0.bias"] = torch.zeros(1000)
    return {"model": {f"module.{k}": v for k, v in state.items()}}


def official_features(saved, x, width):
    """res2..res5 of the official model at `width` (eval mode, that width's BN statistics)."""
    state = {k[len("module."):]: v for k, v in saved["model"].items()}
    index = BN_WIDTHS.index(width)

    def conv_bn(y, conv_name, bn_name, out, stride, padding):
        y = F.conv2d(y, state[f"{conv_name}.weight"][:out, :y.shape[1]], None, stride, padding)
        c = y.shape[1]
        return F.batch_norm(y, state[f"{bn_name}.bn.{index}.running_mean"][:c], state[f"{bn_name}.bn.{index}.running_var"][:c],
                            state[f"{bn_name}.weight"][:c], state[f"{bn_name}.bias"][:c], False, 0.0, 1e-5)

    y = F.relu(conv_bn(x, "features.0.0", "features.0.1", official_channels(64, width, 0.25), 2, 3))
    y = F.max_pool2d(y, 3, 2, 1)
    features, block_index = {}, 1
    for stage, blocks in enumerate(STAGES):
        outp = 4 * (64 << stage)
        inner, out = official_channels(outp // 4, width, 0.25), official_channels(outp, width, 1)
        for block in range(blocks):
            p = f"features.{block_index}"
            stride = 2 if block == 0 and stage > 0 else 1
            h = F.relu(conv_bn(y, f"{p}.body.0", f"{p}.body.1", inner, 1, 0))
            h = F.relu(conv_bn(h, f"{p}.body.3", f"{p}.body.4", inner, stride, 1))
            h = conv_bn(h, f"{p}.body.6", f"{p}.body.7", out, 1, 0)
            shortcut = conv_bn(y, f"{p}.shortcut.0", f"{p}.shortcut.1", out, stride, 0) if f"{p}.shortcut.0.weight" in state else y
            y = F.relu(h + shortcut)
            block_index += 1
        features[f"res{stage + 2}"] = y
    return features


def r50_model(**overrides):
    settings = {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256, "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
                "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.NORM": "BN",
                "MUTUALNET.TEST.FOLD_NORMS": False}  # compared with the source networks' layers
    settings.update(overrides)
    return MutualNetTrainer.build_model(tiny_cfg(**settings)).eval()


def load_converted(model, payload, tmp_path):
    path = str(tmp_path / "converted.pkl")
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    expected = {f"backbone.bottom_up.{k}" for k in model.backbone.bottom_up.state_dict() if not k.endswith("num_batches_tracked")}
    weights = {k for k in payload["model"] if not k.startswith("bn_stats_bank.")}
    assert weights == expected  # no missing, no unexpected backbone key
    DetectionCheckpointer(model).load(path)
    return path


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "mutualnet_r50.pt"
    saved = official_state()
    torch.save(saved, path)
    return str(path), saved


def test_official_mutualnet_checkpoint_matches_the_official_model_at_every_width(official_checkpoint, tmp_path):
    path, saved = official_checkpoint
    payload, layout = convert_checkpoint(path, bn_widths=BN_WIDTHS)
    assert layout == "mutualnet"
    model = r50_model()
    load_converted(model, payload, tmp_path)
    assert model.bn_stats_bank.configurations() == [(w, 1.0) for w in BN_WIDTHS]
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for width in (1.0, 0.75, 0.5, 0.25):
            assert use_configuration(model, width, 1.0) == "bank"
            ours = model.backbone.bottom_up(x)
            theirs = official_features(saved, x, width)
            for name in ("res2", "res3", "res4", "res5"):
                assert ours[name].shape == theirs[name].shape, (width, name)
                assert torch.allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-4), (width, name)


def test_torchvision_resnet50_matches_torchvision_forward(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    for module in reference.modules():  # non-trivial statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "tv.pth")
    torch.save(reference.state_dict(), path)
    payload, layout = convert_checkpoint(path)
    assert layout == "torchvision"
    model = r50_model()
    load_converted(model, payload, tmp_path)
    set_width(model, 1.0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = {}
        for index, layer in enumerate((reference.layer1, reference.layer2, reference.layer3, reference.layer4)):
            y = layer(y)
            expected[f"res{index + 2}"] = y
        ours = model.backbone.bottom_up(x)
    for name, value in expected.items():
        assert torch.allclose(ours[name], value, rtol=1e-4, atol=1e-4), name


def test_torchvision_resnet18_loads_with_no_missing_keys(tmp_path):
    path = str(tmp_path / "tv18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    payload, _ = convert_checkpoint(path)
    load_converted(MutualNetTrainer.build_model(tiny_cfg(**{"MODEL.RESNETS.STEM_OUT_CHANNELS": 64})), payload, tmp_path)


def test_converted_backbone_loads_into_slimmable_heads_model_whose_heads_stay_initialised(tmp_path):
    path = str(tmp_path / "tv18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    payload, _ = convert_checkpoint(path)
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(tiny_cfg(**{"MODEL.RESNETS.STEM_OUT_CHANNELS": 64, "MUTUALNET.SLIMMABLE_HEADS": True}))
    initial = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.bottom_up.")}
    load_converted(model, payload, tmp_path)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())  # FPN and heads: initialisation
    assert torch.equal(state["backbone.bottom_up.res5.1.conv2.weight"],
                       torch.as_tensor(payload["model"]["backbone.bottom_up.res5.1.conv2.weight"]))


def test_truncated_unmappable_and_wrong_architecture_are_refused(official_checkpoint, tmp_path):
    path, saved = official_checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(path, "rb").read()[:5000])
    with pytest.raises(ConversionError, match="cannot read"):
        convert_checkpoint(str(truncated), BN_WIDTHS)

    extra = {"model": dict(saved["model"], **{"module.features.3.attention.weight": torch.zeros(3)})}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match="could not be mapped.*features.3.attention.weight"):
        convert_checkpoint(str(tmp_path / "extra.pt"), BN_WIDTHS)

    missing_block = {k: v for k, v in saved["model"].items() if not k.startswith("module.features.16.")}
    torch.save({"model": missing_block}, tmp_path / "r47.pt")
    with pytest.raises(ConversionError, match="not a ResNet-50/101/152"):
        convert_checkpoint(str(tmp_path / "r47.pt"), BN_WIDTHS)

    with pytest.raises(ConversionError, match="--bn-widths"):
        convert_checkpoint(path)

    torch.save({"blocks.0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="unknown checkpoint layout"):
        convert_checkpoint(str(tmp_path / "other.pt"))


def test_cli_refuses_without_writing_and_writes_on_success(official_checkpoint, tmp_path):
    path, _ = official_checkpoint
    output = tmp_path / "out.pkl"
    with pytest.raises(SystemExit, match="--bn-widths"):
        convert_main([path, str(output)])
    assert not output.exists()
    convert_main([path, str(output), "--bn-widths", *map(str, BN_WIDTHS)])
    assert output.exists() and os.path.getsize(output) > 1e6
