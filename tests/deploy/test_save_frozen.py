"""save_frozen: the files tools/freeze_width.py writes, read back as a user would (the config file,
then Detectron2's build_model and checkpointer)."""
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers import tiny_cfg

from mutualnet_det import add_mutualnet_config
from mutualnet_det.deploy.freeze import freeze_width, save_frozen
from mutualnet_det.engine.trainer import MutualNetTrainer


def test_frozen_checkpoint_and_config_named_by_width_and_scale_rebuild_the_frozen_model(tmp_path):
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 5})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    model.bn_stats_bank.store(model, 0.5, 0.5)
    frozen = freeze_width(model, 0.5, 0.5).eval()
    weights_path, config_path = save_frozen(frozen, cfg, 0.5, 0.5, str(tmp_path / "out"))
    assert (weights_path, config_path) == (str(tmp_path / "out" / "model_frozen_w0.5_s0.5.pth"),
                                           str(tmp_path / "out" / "config_frozen_w0.5_s0.5.yaml"))
    written = get_cfg()
    add_mutualnet_config(written)
    written.merge_from_file(config_path)
    assert written.MODEL.WEIGHTS == weights_path and written.MUTUALNET.FROZEN_WIDTH == 0.5
    assert (written.INPUT.MIN_SIZE_TEST, written.INPUT.MAX_SIZE_TEST) == (32, 32)  # 64 px x scale 0.5
    rebuilt = build_model(written).eval()
    DetectionCheckpointer(rebuilt).load(written.MODEL.WEIGHTS)
    image = {"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), "height": 32, "width": 32}
    with torch.no_grad():
        ours, theirs = frozen([image])[0]["instances"], rebuilt([image])[0]["instances"]
    assert len(ours) == len(theirs) == 5 and torch.allclose(ours.scores, theirs.scores)
    # at scale 1.0 the name has no scale part
    model.bn_stats_bank.store(model, 0.25, 1.0)
    assert save_frozen(freeze_width(model, 0.25), cfg, 0.25, 1.0, str(tmp_path))[0].endswith("model_frozen_w0.25.pth")
