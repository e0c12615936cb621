"""What demo/demo.py renders: its inputs (directories, globs, dataset records, video frames) and
the method named in the panel titles."""
import cv2
import numpy as np
import pytest
from helpers import tiny_cfg

from mutualnet_det.evaluation.visualization import expand_inputs, method_label, read_frames, select_records


def test_inputs_expand_directories_and_globs_sorted_and_keep_missing_paths(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.png").write_bytes(b"")
    paths = expand_inputs([str(tmp_path), str(tmp_path / "sub" / "*.png"), str(tmp_path / "missing.png")])
    assert paths == [str(tmp_path / n) for n in ("a.JPG", "b.png", "c.webp")] + \
        [str(tmp_path / "sub" / "z.png"), str(tmp_path / "missing.png")]  # not sub/ itself, not notes.txt


def test_records_are_the_first_ones_unless_picked_by_object_size():
    def record(name, sides):
        return {"file_name": name, "height": 200, "width": 200,
                "annotations": [{"bbox": [0, 0, side, side], "bbox_mode": 1, "category_id": 0} for side in sides]}

    records = [record("a", [10]), record("b", [10, 10]), record("c", [150])]
    assert [r["file_name"] for r in select_records(records, 2)] == ["a", "b"]
    assert [r["file_name"] for r in select_records(records, 2, most_small=1)] == ["b"]  # two small boxes
    assert [r["file_name"] for r in select_records(records, 2, most_large=1)] == ["c"]


def test_frames_of_a_video_are_numbered_and_an_image_is_frame_zero(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for value in (40, 120, 200):
        writer.write(np.full((24, 32, 3), value, dtype=np.uint8))
    writer.release()
    frames = list(read_frames(str(tmp_path / "clip.avi")))
    assert [number for number, _ in frames] == [0, 1, 2]
    assert [int(round(frame.mean(), -1)) for _, frame in frames] == [40, 120, 200]  # JPEG-compressed, in order
    cv2.imwrite(str(tmp_path / "still.png"), np.full((24, 32, 3), 7, dtype=np.uint8))
    ((number, image),) = read_frames(str(tmp_path / "still.png"))
    assert number == 0 and image.shape == (24, 32, 3) and (image == 7).all()
    with pytest.raises(ValueError, match="cannot open video"):
        list(read_frames(str(tmp_path / "missing.mp4")))


def test_method_label_names_the_method_and_distillation():
    assert method_label(tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "usnet"})) == "US-Net"
    assert method_label(tiny_cfg(**{"MUTUALNET.TRAIN.METHOD": "mutualnet", "MUTUALNET.TRAIN.INPLACE_DISTILL": True})) == \
        "MutualNet+distill"
