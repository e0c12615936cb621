"""The inference benchmark on a tiny random-weight model: the stock Detectron2 twin computes what
the slimmable model computes at width 1.0 (so their time ratio is the slimmable layers' cost), and
the rows cover every (scale, width) with the stock time only at width 1.0."""
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from helpers import tiny_cfg

from mutualnet_det.benchmark.inference import SCALES, WIDTHS, inference_benchmark, stock_model, width_one_weights
from mutualnet_det.data.rescale import scaled_test_input
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.modeling.slimmable_ops import SlimmableConv2d
from mutualnet_det.width import set_width


def test_stock_twin_holds_the_width_one_weights_and_detects_the_same():
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 5})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    set_width(model, 1.0)
    stock = stock_model(cfg, "cpu")
    result = stock.load_state_dict(width_one_weights(model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not any(isinstance(m, SlimmableConv2d) for m in stock.modules())  # Detectron2's own layers
    image = read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], format="BGR")
    inputs = scaled_test_input(image, cfg, 1.0)
    with torch.no_grad():
        ours, theirs = model([inputs])[0]["instances"], stock([inputs])[0]["instances"]
    assert len(ours) == len(theirs) == 5
    assert torch.allclose(ours.pred_boxes.tensor, theirs.pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(ours.scores, theirs.scores, atol=1e-5)


def test_rows_cover_every_scale_and_width_and_backbone_rows_scale_one():
    cfg = tiny_cfg(**{"MUTUALNET.BN_CALIB.NUM_BATCHES": 1})
    rows, backbone_rows = inference_benchmark(cfg, None, "cpu", repeats=1)
    assert [(r["resolution_scale"], r["width"]) for r in rows] == [(s, w) for s in SCALES for w in WIDTHS]
    assert [r["width"] for r in rows if "stock_detectron2" in r] == [1.0, 1.0]  # one per scale
    assert all(r["slimmable"]["repeats"] == r["frozen"]["repeats"] == 1 for r in rows)
    assert [r["width"] for r in backbone_rows] == list(WIDTHS)
    backbone_gflops = [r["gflops"] for r in backbone_rows]
    assert backbone_gflops == sorted(backbone_gflops, reverse=True) and backbone_gflops[-1] < backbone_gflops[0] / 4
