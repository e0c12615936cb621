import hashlib
import json
import os

import numpy as np
from detectron2.data import DatasetCatalog
from pycocotools import mask as mask_util

from mutualnet_det.data.shapes import ShapesSplit, ensure_split, generate_split

SMALL = ShapesSplit("shapes_test_small", num_images=40, seed=7, image_size=256)


def digest_tree(root):
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return result


def test_generation_is_deterministic(tmp_path):
    generate_split(SMALL, str(tmp_path / "a"))
    generate_split(SMALL, str(tmp_path / "b"))
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    other = ShapesSplit("shapes_test_small", num_images=40, seed=8)
    generate_split(other, str(tmp_path / "c"))
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_objects_cover_all_coco_size_ranges_and_masks_match_annotations(tmp_path):
    json_path = ensure_split(SMALL, str(tmp_path))
    coco = json.load(open(json_path))
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert (areas < 32 ** 2).sum() >= 10
    assert ((areas >= 32 ** 2) & (areas <= 96 ** 2)).sum() >= 10
    assert (areas > 96 ** 2).sum() >= 5
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4}
    for ann in coco["annotations"][:50]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert mask_util.area(rle) == ann["area"]
        assert np.allclose(mask_util.toBbox(rle), ann["bbox"])


def test_corrupt_or_missing_files_are_regenerated(tmp_path):
    json_path = ensure_split(SMALL, str(tmp_path))
    original = digest_tree(tmp_path)
    image = tmp_path / SMALL.name / "00003.png"
    image.write_bytes(b"not a png")
    ensure_split(SMALL, str(tmp_path))
    assert digest_tree(tmp_path) == original
    os.remove(json_path)
    ensure_split(SMALL, str(tmp_path))
    assert digest_tree(tmp_path) == original


def test_registered_splits_load_through_detectron2():
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 60
    assert all(ann["bbox_mode"] is not None for d in dicts for ann in d["annotations"])


def test_generation_waits_for_another_process_holding_the_split_lock(tmp_path):
    """Two trainings starting at once on a fresh clone once read a half-written json: the second
    caller must wait for the first one's generation, then find the split intact."""
    import threading
    from filelock import FileLock

    lock = FileLock(str(tmp_path / f".{SMALL.name}.lock"))
    lock.acquire()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (ensure_split(SMALL, str(tmp_path)), done.set()))
    worker.start()
    assert not done.wait(timeout=1.5)  # blocked on the lock: nothing generated meanwhile
    assert not (tmp_path / SMALL.name).exists()  # generation makes its image folder first
    lock.release()
    worker.join(timeout=120)
    assert done.is_set()
    with open(tmp_path / f"{SMALL.name}.json") as f:
        assert len(json.load(f)["images"]) == SMALL.num_images


def test_an_intact_set_in_a_read_only_folder_is_used_as_it_is(tmp_path, monkeypatch):
    """Nothing is written when the set is intact (not even the lock file), so a read-only or
    shared folder works; a folder that cannot be written is named when regeneration is needed.
    (Tests run as root, which chmod does not stop: writing is refused by a patch instead.)"""
    import pytest
    import mutualnet_det.data.shapes as shapes

    json_path = ensure_split(SMALL, str(tmp_path))
    for lock in tmp_path.glob(".*.lock"):
        lock.unlink()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shapes.FileLock, "acquire", refused)
    monkeypatch.setattr(shapes, "generate_split", refused)
    assert ensure_split(SMALL, str(tmp_path)) == json_path
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    with open(json_path, "a") as f:
        f.write(" ")  # corrupt: now it must be regenerated, which this folder refuses
    with pytest.raises(OSError, match=rf"under {tmp_path} is missing or corrupt and cannot be generated there "
                                      r"\(Permission denied\): set DETECTRON2_DATASETS to a writable folder"):
        ensure_split(SMALL, str(tmp_path))
