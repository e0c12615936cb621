"""Fine-tuning starts: a stock Detectron2 Mask R-CNN checkpoint (Detectron2's `.pth`, and a
model-zoo style `.pkl`) loads into the MutualNet model as its width-1.0 network, every weight used
and none missing, with an empty BN statistics bank, and at width 1.0 the two models' outputs are
the same before any training. Reference: Detectron2's own GeneralizedRCNN on the same inputs."""
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import tiny_cfg
from mutualnet_det.checkpoint import TrainingCheckpointer
from mutualnet_det.config import training_recipe
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.width import set_width


def stock_cfg(cfg):
    """The same architecture as Detectron2 builds it: stock meta-architecture and backbone."""
    stock = cfg.clone()
    stock.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    stock.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    return stock


def write_stock_checkpoint(cfg, folder, kind):
    torch.manual_seed(0)
    stock = build_model(stock_cfg(cfg))
    with torch.no_grad():  # BN statistics other than 0 / 1, so that loading them is seen
        for module in stock.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    if kind == "pth":
        DetectionCheckpointer(stock, save_dir=str(folder)).save("stock")
        return stock, str(folder / "stock.pth")
    path = folder / "model_final_stock.pkl"  # the model zoo's layout: numpy arrays, an author
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in stock.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    return stock, str(path)


@pytest.mark.parametrize("kind", ["pth", "pkl"])
@pytest.mark.parametrize("method", ["mutualnet", "usnet"])
def test_a_stock_checkpoint_starts_the_adaptive_model_as_its_width_1_network(tmp_path, kind, method):
    cfg = tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": method, "MUTUALNET.CPU_ROI_ALIGN": "torchvision",
                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
                      "MUTUALNET.TEST.FOLD_NORMS": False})  # compared with the stock model's layers
    stock, path = write_stock_checkpoint(cfg, tmp_path, kind)
    model = MutualNetTrainer.build_model(cfg)
    checkpointer = TrainingCheckpointer(model, str(tmp_path / "run"))
    checkpointer.recipe = training_recipe(cfg)
    checkpointer.resume_or_load(path, resume=True)  # no checkpoint in OUTPUT_DIR: MODEL.WEIGHTS starts it

    keys = checkpointer.starting_keys
    assert (keys.missing_keys, keys.unexpected_keys, keys.incorrect_shapes) == ([], [], [])
    assert model.bn_stats_bank.bank == {}
    ours, theirs = model.state_dict(), stock.state_dict()
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)

    stock.eval()
    model.eval()
    set_width(model, 1.0)
    generator = torch.Generator().manual_seed(1)
    images = [{"image": torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8)} for _ in range(2)]
    with torch.no_grad():
        expected, got = stock(images), model(images)
    for want, have in zip(expected, got):
        want, have = want["instances"], have["instances"]
        assert len(want) > 0 and len(have) == len(want)
        torch.testing.assert_close(have.pred_boxes.tensor, want.pred_boxes.tensor)
        torch.testing.assert_close(have.scores, want.scores)
        assert torch.equal(have.pred_classes, want.pred_classes)
        torch.testing.assert_close(have.pred_masks.float(), want.pred_masks.float())


def test_a_single_width_checkpoint_starts_fine_tuning_without_its_stale_statistics(tmp_path, caplog):
    """This project's single-width model (another width range: refused for evaluation) is a valid
    start; its banked BN statistics are dropped, its weights all taken."""
    single = tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "single", "MUTUALNET.WIDTH_RANGE": "(1.0, 1.0)",
                       "MUTUALNET.TEST.WIDTHS": "(1.0,)"})
    trained = MutualNetTrainer.build_model(single)
    trained.bn_stats_bank.store(trained, 1.0, 1.0)
    saver = TrainingCheckpointer(trained, str(tmp_path))
    saver.recipe = training_recipe(single)
    saver.save("model_final")

    cfg = tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "mutualnet"})
    model = MutualNetTrainer.build_model(cfg)
    checkpointer = TrainingCheckpointer(model, str(tmp_path / "run"))
    checkpointer.recipe = training_recipe(cfg)
    with caplog.at_level("INFO"):
        checkpointer.resume_or_load(str(tmp_path / "model_final.pth"), resume=True)
    keys = checkpointer.starting_keys
    assert (keys.missing_keys, keys.unexpected_keys, keys.incorrect_shapes) == ([], [], [])
    assert model.bn_stats_bank.bank == {}
    assert model.training_recipe == training_recipe(cfg)
    assert "width_range [1.0, 1.0] -> [0.25, 1.0]" in caplog.text
    for name, value in trained.state_dict().items():
        if not name.startswith("bn_stats_bank."):
            assert torch.equal(model.state_dict()[name], value), name
