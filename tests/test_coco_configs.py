"""The COCO configs end to end on a tiny COCO-layout dataset: train 2 iterations, evaluate at 2
widths, through tools/train_net.py as a user runs it (Detectron2's builtin coco_2017_* splits
read from DETECTRON2_DATASETS)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image

from helpers import REPO

CONFIGS = ["mutualnet_mask_rcnn_R_50_FPN_1x.yaml", "usnet_mask_rcnn_R_50_FPN_1x.yaml"]
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
         "INPUT.MAX_SIZE_TEST", "96", "MUTUALNET.TEST.WIDTHS", "(1.0, 0.25)", "MUTUALNET.BN_CALIB.NUM_BATCHES", "1",
         "MUTUALNET.TEST.FLOPS_NUM_IMAGES", "1", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]


def write_tiny_coco(root, seed=0):
    """coco/{train2017,val2017}/ with 4 and 2 images, annotations with COCO's 80 categories and
    polygon masks (COCO's format: a list of flat [x0, y0, x1, y1, ...] lists)."""
    rng = np.random.default_rng(seed)
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES if c["isthing"]]
    assert len(categories) == 80
    for split, count in (("train2017", 4), ("val2017", 2)):
        os.makedirs(os.path.join(root, "coco", split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            height, width = 80, 112
            image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
            name = f"{index:012d}.jpg"
            for k in range(2):
                x0, y0 = 8 + 48 * k, 10 + 20 * k
                box_w, box_h = 36, 30
                image[y0:y0 + box_h, x0:x0 + box_w] = 200 - 80 * k
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0,
                    "category_id": categories[(index + k) % 5]["id"], "bbox": [x0, y0, box_w, box_h],
                    "area": float(box_w * box_h),
                    "segmentation": [[x0, y0, x0 + box_w, y0, x0 + box_w, y0 + box_h, x0, y0 + box_h]]})
            Image.fromarray(image).save(os.path.join(root, "coco", split, name))
            images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
        with open(os.path.join(root, "coco", "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def train_net(config, datasets, *opts):
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
               os.path.join(REPO, "configs", "COCO-InstanceSegmentation", config)]
    return subprocess.run(command + list(opts), capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


@pytest.mark.parametrize("config", CONFIGS)
def test_coco_config_trains_and_evaluates_at_two_widths(tmp_path, config):
    write_tiny_coco(tmp_path / "datasets")
    trained = tmp_path / "train"
    run = train_net(config, tmp_path / "datasets", *SMALL, "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(trained))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (trained / "model_final.pth").is_file()
    evaluated = tmp_path / "eval"
    run = train_net(config, tmp_path / "datasets", "--eval-only", *SMALL, "MODEL.WEIGHTS",
                    str(trained / "model_final.pth"), "OUTPUT_DIR", str(evaluated))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    with open(evaluated / "inference" / "coco_2017_val" / "width_sweep.json") as f:
        records = json.load(f)
    assert [(r["width"], r["resolution_scale"]) for r in records] == [(1.0, 1.0), (0.25, 1.0)]
    assert all(r["bn_stats"] == "bank" for r in records)  # calibrated after training, in the checkpoint
    assert records[0]["gflops_backbone"] > records[1]["gflops_backbone"] > 0
    assert all("AP" in r["bbox"] and "AP" in r["segm"] for r in records)


def test_missing_initial_weights_fail_before_any_work_saying_what_to_do(tmp_path):
    write_tiny_coco(tmp_path / "datasets")
    run = train_net(CONFIGS[0], tmp_path / "datasets", *SMALL, "OUTPUT_DIR", str(tmp_path / "out"))
    assert run.returncode != 0
    message = run.stderr
    assert "checkpoints/mutualnet_r50_imagenet_d2.pkl" in message
    assert "tools/convert_mutualnet_imagenet.py" in message and "ImageNet initialisation" in message
    assert 'MODEL.WEIGHTS ""' in message
    assert "Starting training" not in run.stdout + message


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_stopped_training_saves_a_checkpoint_and_exits_130_saying_how_to_resume(tmp_path, stop):
    write_tiny_coco(tmp_path / "datasets")
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
               os.path.join(REPO, "configs", "COCO-InstanceSegmentation", CONFIGS[0]), *SMALL,
               "SOLVER.MAX_ITER", "1000", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "out")]
    # SIGINT as a terminal gives it, also when this test runs where it is ignored (nohup ... &)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, process.kill)  # a training that does not stop fails, not hangs
    watchdog.start()
    output, stopped = [], False
    try:
        for line in process.stdout:
            output.append(line)
            if " iter: " in line and not stopped:  # Detectron2's first metrics line: 20 steps done
                process.send_signal(stop)  # once: a second signal could cut the checkpoint short
                stopped = True
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 130, "".join(output)[-3000:]
    text = "".join(output)
    assert "Traceback" not in text
    assert "interrupted; run the same command with --resume to continue" in text
    assert (tmp_path / "out" / "last_checkpoint").is_file(), text[-3000:]
    saved = (tmp_path / "out" / "last_checkpoint").read_text()
    assert saved.startswith("model_") and (tmp_path / "out" / saved).is_file() and saved != "model_final.pth"


def test_the_fine_tuning_config_starts_from_a_stock_zoo_checkpoint_and_trains(tmp_path):
    """A model-zoo style .pkl of Detectron2's own R50-FPN Mask R-CNN (stock GeneralizedRCNN, FrozenBN,
    as in the zoo) starts MutualNet fine-tuning: every weight taken, none missing, then it trains."""
    import pickle

    from detectron2.modeling import build_model

    from mutualnet_det.config import load_config

    config = "mutualnet_finetune_mask_rcnn_R_50_FPN_1x.yaml"
    cfg = load_config(os.path.join(REPO, "configs", "COCO-InstanceSegmentation", config), [])
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/")
    stock = cfg.clone()
    stock.defrost()
    stock.merge_from_list(["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.BACKBONE.NAME",
                           "build_resnet_fpn_backbone", "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.DEVICE", "cpu"])
    zoo = tmp_path / "model_final_zoo.pkl"
    with open(zoo, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in build_model(stock).state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    write_tiny_coco(tmp_path / "datasets")
    run = train_net(config, tmp_path / "datasets", *SMALL, "MODEL.WEIGHTS", str(zoo), "OUTPUT_DIR", str(tmp_path / "ft"))
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "not found in the checkpoint" not in log and "not used by the model" not in log, log[-4000:]
    assert (tmp_path / "ft" / "model_final.pth").is_file()
