"""The width sweep end to end on the tiny model, the query table and the error paths."""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from helpers import REPO, tiny_cfg

import mutualnet_det
from mutualnet_det.checkpoint import CheckpointError, load_weights
from mutualnet_det.config import validate_mutualnet_config
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.evaluation.query_table import best_config, pareto_front
from mutualnet_det.width import get_width


def test_sweep_visits_each_configuration_once_and_costs_fall(tmp_path):
    cfg = tiny_cfg(**{"OUTPUT_DIR": str(tmp_path), "MUTUALNET.TEST.WIDTHS": (1.0, 0.25),
                      "MUTUALNET.TEST.RESOLUTION_SCALES": (1.0, 0.5), "TEST.DETECTIONS_PER_IMAGE": 10})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg)
    evaluated = []  # (width, image side) of each inference-mode forward pass, in order
    model.register_forward_pre_hook(lambda module, args: evaluated.extend(
        (get_width(module), int(item["image"].shape[-1])) for item in args[0] if not module.training))
    results = MutualNetTrainer.test(cfg, model)
    records = json.load(open(tmp_path / "inference" / "shapes_val" / "width_sweep.json"))
    assert [(r["width"], r["resolution_scale"]) for r in records] == [(1.0, 1.0), (1.0, 0.5), (0.25, 1.0), (0.25, 0.5)]
    assert sorted(results) == sorted(f"shapes_val/w{w:g}_s{s:g}" for w in (1.0, 0.25) for s in (1.0, 0.5))
    assert all(r["bn_stats"] == "calibrated" for r in records)  # random-init model: empty bank
    assert all(r["trained_as"] == {"method": "mutualnet", "width_range": [0.25, 1.0], "channel_divisor": 8,
                                   "slimmable_heads": False, "resolution_scales": [1.0, 0.857142857, 0.714285714, 0.571428571],
                                   "inplace_distill": False, "distill_mode": "soft_labels"} for r in records)
    # each sweep also keeps its own stamped files, the newest under the usual name
    stamped = sorted((tmp_path / "inference" / "shapes_val").glob("width_sweep_*.json"))
    assert len(stamped) == 1 and json.load(open(stamped[0])) == records
    assert (0.25, 0.5) in model.bn_stats_bank
    # the model sees each configuration's images at the test size (64 px) x scale, in the FLOPs
    # count and in every evaluated image (60 in shapes_val), one configuration after another
    runs = [(key, len(list(group))) for key, group in itertools.groupby(evaluated)]
    assert [key for key, _ in runs] == [(1.0, 64), (1.0, 32), (0.25, 64), (0.25, 32)]
    assert all(count >= len(DatasetCatalog.get("shapes_val")) == 60 for _, count in runs)
    by_config = {(r["width"], r["resolution_scale"]): r for r in records}
    for key in ("gflops", "gflops_backbone", "params"):
        assert by_config[(1.0, 1.0)][key] > by_config[(0.25, 1.0)][key]
    assert by_config[(1.0, 1.0)]["gflops"] > by_config[(1.0, 0.5)]["gflops"] > by_config[(0.25, 0.5)]["gflops"]
    assert by_config[(1.0, 1.0)]["gflops_backbone"] > 3 * by_config[(1.0, 0.5)]["gflops_backbone"]
    assert by_config[(1.0, 1.0)]["params"] == sum(p.numel() for p in model.parameters())
    assert all(set(r["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "segm" in r for r in records)
    assert os.path.isfile(tmp_path / "inference" / "shapes_val" / "width_sweep.csv")


def record(width, scale, gflops, ap):
    return {"width": width, "resolution_scale": scale, "gflops": gflops, "bbox": {"AP": ap}}


HAND_SWEEP = [record(1.0, 1.0, 10.0, 40.0), record(1.0, 0.6, 4.0, 33.0), record(0.5, 1.0, 4.5, 31.0),
              record(0.75, 0.8, 5.0, 35.0), record(0.25, 1.0, 2.0, 20.0), record(0.5, 0.6, 2.5, 19.0),
              record(0.75, 1.0, 6.0, 34.0)]


def test_pareto_front_and_budget_queries_on_a_hand_made_sweep():
    front = pareto_front(HAND_SWEEP)
    # by hand: 2.0/20 kept, 2.5/19 dominated, 4.0/33 kept, 4.5/31 dominated, 5.0/35 kept, 6.0/34 dominated, 10/40 kept
    assert [(r["width"], r["resolution_scale"]) for r in front] == [(0.25, 1.0), (1.0, 0.6), (0.75, 0.8), (1.0, 1.0)]
    assert mutualnet_det.best_config(front, 4.9)["resolution_scale"] == 0.6
    assert best_config(front, 100)["gflops"] == 10.0
    assert best_config(front, 2.0)["width"] == 0.25
    with pytest.raises(ValueError, match="below the cheapest configuration"):
        best_config(front, 1.9)


@pytest.mark.parametrize("key,value,message", [
    ("MUTUALNET.TEST.WIDTHS", (1.0, 0.1), "outside this model's width range"),
    ("MUTUALNET.TEST.WIDTHS", (), "MUTUALNET.TEST.WIDTHS is empty"),
    ("MUTUALNET.TEST.RESOLUTION_SCALES", (), "non-empty list of scales"),
    ("MUTUALNET.TRAIN.RESOLUTION_SCALES", (1.0, -0.5), "MUTUALNET.TRAIN.RESOLUTION_SCALES"),
    ("MUTUALNET.WIDTH_RANGE", (0.0, 1.0), "0 < narrowest <= widest <= 1.0"),
    ("MUTUALNET.TRAIN.METHOD", "slimmable", "accepted: ('mutualnet', 'usnet', 'single')"),
    ("MUTUALNET.TRAIN.DISTILL_MODE", "hard", "accepted: ('soft_labels', 'add')"),
    ("MUTUALNET.TRAIN.CLIP_GRAD_NORM_PER_MEMBER", -1.0, "must be >= 0"),
])
def test_bad_config_values_fail_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_mutualnet_config(tiny_cfg(**{key: value}))


def test_distillation_without_a_widest_member_rejected():
    with pytest.raises(ValueError, match="INPLACE_DISTILL"):
        validate_mutualnet_config(tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "single", "MUTUALNET.TRAIN.INPLACE_DISTILL": True}))


def test_bad_weights_files_fail_clearly(tmp_path):
    model = MutualNetTrainer.build_model(tiny_cfg())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        load_weights(model, str(corrupt))
    other = MutualNetTrainer.build_model(tiny_cfg(**{"MODEL.FPN.OUT_CHANNELS": 48}))
    DetectionCheckpointer(other, str(tmp_path)).save("other")
    with pytest.raises(CheckpointError, match="does not fit the model.*other shapes"):
        load_weights(model, str(tmp_path / "other.pth"))


def test_eval_only_cli_stops_before_any_evaluation_on_missing_weights(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
         os.path.join(REPO, "configs", "Shapes", "mutualnet_mask_rcnn_R_18_FPN.yaml"), "--eval-only",
         "MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not exist" in result.stderr
    assert "Start inference" not in result.stdout + result.stderr


def full_record(width, scale, gflops, ap, segm_ap=None, proposals=1000):
    result = {"width": width, "resolution_scale": scale, "proposals": proposals, "bn_stats": "bank", "gflops": gflops,
              "gflops_backbone": gflops / 2, "params": 2_500_000,
              "bbox": {"AP": ap, "AP50": ap + 20, "AP75": ap + 1, "APs": ap - 10, "APm": ap, "APl": ap + 10}}
    if segm_ap is not None:
        result["segm"] = {"AP": segm_ap, "AP50": 0.0, "AP75": 0.0, "APs": 1.0, "APm": 2.0, "APl": 3.0}
    return result


def test_sweep_configurations_widest_and_largest_first_without_repeats():
    from mutualnet_det.evaluation.width_sweep import sweep_configurations

    cfg = tiny_cfg(**{"MUTUALNET.TEST.WIDTHS": (0.5, 1, 0.25, 0.5), "MUTUALNET.TEST.RESOLUTION_SCALES": (0.6, 1.0)})
    configurations = sweep_configurations(cfg)
    assert configurations == [(1.0, 1.0), (1.0, 0.6), (0.5, 1.0), (0.5, 0.6), (0.25, 1.0), (0.25, 0.6)]
    assert all(isinstance(value, float) for pair in configurations for value in pair)


def test_written_sweep_files_by_hand(tmp_path):
    """The json holds the records as given; the csv has one row per record with the metric
    columns in a fixed order (empty where a task is missing); each sweep keeps its stamped copy,
    a second one in the same second gets the suffix _2."""
    import csv
    from mutualnet_det.evaluation.width_sweep import write_sweep

    records = [full_record(1.0, 1.0, 4.0, 30.0, segm_ap=25.0), full_record(0.25, 0.6, 1.0, 10.0, proposals=50)]
    folder = tmp_path / "inference" / "shapes_val"  # made by write_sweep
    path = write_sweep(records, str(folder))
    assert path == str(folder / "width_sweep.json")
    assert json.load(open(path)) == records
    rows = list(csv.reader(open(folder / "width_sweep.csv")))
    assert rows[0] == ["width", "resolution_scale", "proposals", "gflops", "gflops_backbone", "params", "bn_stats",
                       "bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl",
                       "segm_AP", "segm_AP50", "segm_AP75", "segm_APs", "segm_APm", "segm_APl"]
    assert rows[1] == ["1.0", "1.0", "1000", "4.0", "2.0", "2500000", "bank", "30.0", "50.0", "31.0", "20.0", "30.0", "40.0",
                       "25.0", "0.0", "0.0", "1.0", "2.0", "3.0"]
    assert rows[2][:13] == ["0.25", "0.6", "50", "1.0", "0.5", "2500000", "bank", "10.0", "30.0", "11.0", "0.0", "10.0",
                            "20.0"]
    assert rows[2][13:] == [""] * 6 and len(rows) == 3
    stamped = sorted(p.name for p in folder.glob("width_sweep_*"))
    assert len(stamped) == 2 and stamped[0].endswith(".csv") and stamped[1].endswith(".json")
    assert json.load(open(folder / stamped[1])) == records
    assert list(csv.reader(open(folder / stamped[0]))) == rows
    assert not list(folder.glob("*.tmp"))
    assert open(path).read() == json.dumps(records, indent=1)  # indented one space, as written
    import re

    assert re.fullmatch(r"width_sweep_\d{4}-\d{2}-\d{2}T\d{6}\.json", stamped[1])

    from mutualnet_det.evaluation import width_sweep

    stem = stamped[1][:-len(".json")]
    assert width_sweep._free_stem(str(folder), stem) == stem + "_2"
    (folder / (stem + "_2.json")).write_text("[]")
    assert width_sweep._free_stem(str(folder), stem) == stem + "_3"
    assert width_sweep._free_stem(str(folder), "width_sweep_other") == "width_sweep_other"
    write_sweep(records[:1], str(folder))  # a second sweep into the existing folder
    assert json.load(open(path)) == records[:1] and len(list(folder.glob("width_sweep_*.json"))) == 3


def test_sweep_table_text_by_hand():
    from mutualnet_det.evaluation.width_sweep import format_sweep

    records = [full_record(1.0, 1.0, 4.0, 30.0, segm_ap=25.0), full_record(0.25, 0.6, 1.0, 10.0, proposals=50)]
    records[0]["params"] = 2_145_001  # 2.145001 M: "2.15" (a divisor a hair off 1e6 would print 2.14)
    lines = format_sweep(records).splitlines()
    assert lines[0].split() == ["width", "scale", "proposals", "GFLOPs", "GFLOPs", "bb", "params", "(M)", "box", "AP",
                                "APs", "APl", "mask", "AP", "APs", "APl"]
    assert lines[2].split() == ["1.00", "1.00", "1000", "4.00", "2.00", "2.15", "30.00", "20.00", "40.00", "25.00", "1.00",
                                "3.00"]
    assert lines[3].split() == ["0.25", "0.60", "50", "1.00", "0.50", "2.50", "10.00", "0.00", "20.00", "nan", "nan", "nan"]


def two_image_dataset(tmp_path):
    """shapes_val's first two images as a dataset of their own, with their COCO json, so that a
    whole sweep runs in seconds."""
    from detectron2.data import MetadataCatalog

    name = "shapes_val_first_two"
    records = DatasetCatalog.get("shapes_val")[:2]
    metadata = MetadataCatalog.get("shapes_val")
    coco = json.load(open(metadata.json_file))
    image_ids = {r["image_id"] for r in records}
    coco["images"] = [image for image in coco["images"] if image["id"] in image_ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in image_ids]
    json_file = tmp_path / "first_two.json"
    json_file.write_text(json.dumps(coco))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(json_file=str(json_file), **{k: v for k, v in metadata.as_dict().items()
                                                               if k not in ("name", "json_file")})
    return name


def test_a_sweep_on_two_images_records_each_configuration_from_bank_or_calibration(tmp_path, caplog):
    """run_width_sweep end to end on two images: the configurations in order, each evaluated at its
    width on images at its scale; statistics from the bank where banked, calibrated otherwise;
    costs that fall with width and scale; the training record; COCO metrics of both tasks; the files."""
    from mutualnet_det.bn_calibration import calibration_batches
    from mutualnet_det.config import training_recipe
    from mutualnet_det.evaluation.width_sweep import METRICS, build_evaluator, run_width_sweep

    name = two_image_dataset(tmp_path)
    cfg = tiny_cfg(**{"OUTPUT_DIR": str(tmp_path), "DATASETS.TEST": (name,), "MUTUALNET.TEST.WIDTHS": (0.25, 1.0),
                      "MUTUALNET.TEST.RESOLUTION_SCALES": (0.5, 1.0), "TEST.DETECTIONS_PER_IMAGE": 10,
                      "MUTUALNET.BN_CALIB.NUM_BATCHES": 1})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg)
    model.bn_stats_bank.store(model, 1.0, 1.0)  # banked: used as is; the other three are calibrated
    evaluated = []  # (width, image side) of each inference-mode forward pass
    model.register_forward_pre_hook(lambda module, args: evaluated.extend(
        (get_width(module), int(item["image"].shape[-1])) for item in args[0] if not module.training))
    batches, drawn = calibration_batches(cfg), []

    def counted_batches(scale):
        for batch in batches(scale):
            drawn.append(scale)
            yield batch

    import logging

    with caplog.at_level(logging.INFO, logger="mutualnet_det.evaluation.width_sweep"):
        results = run_width_sweep(cfg, model, counted_batches)
    sweep_json = tmp_path / "inference" / name / "width_sweep.json"
    assert f"Width sweep on {name} (written to {sweep_json}):" in caplog.text and "box AP" in caplog.text

    records = results[name]
    assert drawn == [0.5, 1.0, 0.5]  # NUM_BATCHES 1 for each of the three configurations calibrated
    assert list(results) == [name]
    assert [(r["width"], r["resolution_scale"]) for r in records] == [(1.0, 1.0), (1.0, 0.5), (0.25, 1.0), (0.25, 0.5)]
    assert [r["bn_stats"] for r in records] == ["bank", "calibrated", "calibrated", "calibrated"]
    assert all(r["trained_as"] == training_recipe(cfg) for r in records)
    runs = [(key, len(list(group))) for key, group in itertools.groupby(evaluated)]
    assert [key for key, _ in runs] == [(1.0, 64), (1.0, 32), (0.25, 64), (0.25, 32)]
    # the FLOPs count's one image (FLOPS_NUM_IMAGES) through the GFLOPs and the parameter count, then both images
    assert all(count == 4 for _, count in runs), runs
    by_config = {(r["width"], r["resolution_scale"]): r for r in records}
    assert by_config[(1.0, 1.0)]["gflops"] > by_config[(1.0, 0.5)]["gflops"] > by_config[(0.25, 0.5)]["gflops"]
    assert by_config[(1.0, 1.0)]["params"] == sum(p.numel() for p in model.parameters()) > by_config[(0.25, 1.0)]["params"]
    assert all(set(r["bbox"]) >= set(METRICS) and set(r["segm"]) >= set(METRICS) for r in records)
    written = json.load(open(tmp_path / "inference" / name / "width_sweep.json"))
    assert json.dumps(written) == json.dumps(records)  # (a class without detections has AP NaN)
    assert build_evaluator(tiny_cfg(**{"MODEL.MASK_ON": False}), name)._tasks == ("bbox",)
    assert build_evaluator(cfg, name, str(tmp_path / "evaluator"))._output_dir == str(tmp_path / "evaluator")
    # weights loaded from a checkpoint carry how they were trained: that, not this config's, is recorded
    from mutualnet_det.evaluation.width_sweep import evaluate_configuration

    model.training_recipe = dict(training_recipe(cfg), method="usnet")
    assert evaluate_configuration(cfg, model, name, 1.0, 1.0)["trained_as"]["method"] == "usnet"
