"""load_trained (the model the runtime tools and the demo run) and the default paths beside the
width sweep."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from helpers import SHAPES_CONFIG, tiny_cfg

from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.runtime.latency import default_latency_table_path, default_sweep_path, load_trained

TINY = f"""_BASE_: "{SHAPES_CONFIG}"
MODEL: {{RESNETS: {{STEM_OUT_CHANNELS: 16}}, FPN: {{OUT_CHANNELS: 32}}, ROI_BOX_HEAD: {{FC_DIM: 32}},
        ROI_MASK_HEAD: {{CONV_DIM: 16, NUM_CONV: 1}}}}
"""


def saved_model(folder, name, seed):
    torch.manual_seed(seed)
    model = MutualNetTrainer.build_model(tiny_cfg())
    model.bn_stats_bank.store(model, 1.0, 1.0)
    DetectionCheckpointer(model, str(folder)).save(name)
    return model


def test_weights_default_to_output_dir_model_final_and_an_explicit_path_wins(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    final, other = saved_model(tmp_path, "model_final", 1), saved_model(tmp_path, "other", 2)
    cfg, model = load_trained(str(config), ["OUTPUT_DIR", str(tmp_path)])
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "model_final.pth") and cfg.is_frozen() and not model.training
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, final.backbone.bottom_up.stem.conv1.weight)
    _, model = load_trained(str(config), ["OUTPUT_DIR", str(tmp_path)], weights=str(tmp_path / "other.pth"))
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, other.backbone.bottom_up.stem.conv1.weight)
    assert not torch.equal(other.backbone.bottom_up.stem.conv1.weight, final.backbone.bottom_up.stem.conv1.weight)
    with pytest.raises(ValueError, match="config file .*missing.yaml' does not exist"):
        load_trained(str(tmp_path / "missing.yaml"))


def test_sweep_and_latency_table_sit_in_the_inference_folder_of_the_first_test_set():
    cfg = tiny_cfg(OUTPUT_DIR="out")
    assert default_sweep_path(cfg) == "out/inference/shapes_val/width_sweep.json"
    assert default_latency_table_path(cfg) == "out/inference/shapes_val/latency_table.json"
