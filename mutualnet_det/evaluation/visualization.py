"""Side-by-side renderings of slimmable models (e.g. MutualNet vs US-Net) at chosen widths.

Each panel is Detectron2's Visualizer drawing of one model's detections (masks, boxes, class,
score) at one (width, resolution scale), every detection tagged S/M/L by COCO's area thresholds
(mask area when masks are predicted, else box area), under a title bar with the method, width,
scale, GFLOPs of that configuration and the number of detections of each size.

demo/demo.py's work lives here too: which images to render (`select_records`, `expand_inputs`,
`read_frames`), the models to render (`load_slimmable_predictor`), and the two loops that write
its files (`render_comparison_files`, `render_adaptive_files`).
"""
import csv
import glob
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..bn_calibration import use_configuration
from ..data.rescale import scaled_test_input
from ..flops import model_gflops

SMALL_MAX_AREA = 32 ** 2  # COCO: small < 32^2, large > 96^2 (pixels, original image)
LARGE_MIN_AREA = 96 ** 2
SIZE_CLASSES = ("small", "medium", "large")
TITLE_HEIGHT = 44
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # taken from a directory input
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # read frame by frame
METHOD_LABELS = {"mutualnet": "MutualNet", "usnet": "US-Net", "single": "single"}  # by MUTUALNET.TRAIN.METHOD


def size_class(area: float) -> str:
    if area < SMALL_MAX_AREA:
        return "small"
    return "large" if area > LARGE_MIN_AREA else "medium"


def instance_areas(instances) -> np.ndarray:
    """Areas of predicted instances in pixels: mask areas if present, else box areas."""
    if instances.has("pred_masks"):
        return instances.pred_masks.flatten(1).sum(1).cpu().numpy().astype(float)
    return instances.pred_boxes.area().cpu().numpy()


def count_by_size(areas: Sequence[float]) -> Dict[str, int]:
    counts = dict.fromkeys(SIZE_CLASSES, 0)
    for area in areas:
        counts[size_class(area)] += 1
    return counts


def _summary(counts: Dict[str, int]) -> str:
    return "  ".join(f"{size} {count}" for size, count in counts.items())


@dataclass
class Panel:
    title: str
    image: np.ndarray  # RGB, with its title bar
    counts: Dict[str, int] = field(default_factory=dict)
    instances: Optional[object] = None


class SlimmablePredictor:
    """Runs one model at a (width, resolution scale) on RGB/BGR images, like DefaultPredictor."""

    def __init__(self, cfg, model, method: str, calibration_batches=None):
        self.cfg, self.model, self.method = cfg, model.eval(), method
        self.calibration_batches = calibration_batches
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray, width: float, resolution_scale: float, output_size=None):
        """(instances in original image coordinates, or in `output_size` (height, width) ones when
        given, as Detectron2 does with an input's "height"/"width"; GFLOPs of this configuration)."""
        use_configuration(self.model, width, resolution_scale, self.calibration_batches,
                          self.cfg.MUTUALNET.BN_CALIB.NUM_BATCHES)
        self.model.eval()
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        inputs = scaled_test_input(image, self.cfg, resolution_scale)
        if output_size is not None:
            inputs["height"], inputs["width"] = output_size
        instances = self.model([inputs])[0]["instances"].to("cpu")
        return instances, model_gflops(self.model, inputs)


def _title_bar(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    bar = Image.new("RGB", (image.shape[1], TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    font = ImageFont.load_default()
    for row, line in enumerate(lines):
        draw.text((4, 3 + 20 * row), line, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(bar), image], axis=0)


def prediction_panel(image_rgb, instances, metadata, title: str, threshold: float, area_scale: float = 1.0) -> Panel:
    """`area_scale`: original pixels per drawn pixel, squared (size classes are the original's)."""
    instances = instances[instances.scores >= threshold]
    areas = instance_areas(instances) * area_scale
    names = metadata.get("thing_classes", None)
    labels = [f"{names[c] if names else c} {s:.0%} {size_class(a)[0].upper()}"
              for c, s, a in zip(instances.pred_classes.tolist(), instances.scores.tolist(), areas)]
    visualizer = Visualizer(image_rgb, metadata)
    drawn = visualizer.overlay_instances(
        boxes=instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None,
        masks=instances.pred_masks.numpy() if instances.has("pred_masks") else None,
        labels=labels).get_image()
    counts = count_by_size(areas)
    return Panel(title, _title_bar(drawn, [title, f"detections: {_summary(counts)}"]), counts, instances)


def annotation_area(annotation, height, width) -> float:
    """Object area as COCO counts it: the mask's when there is a segmentation, else the box's."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):  # RLE
        counts = segmentation["counts"]
        rle = dict(segmentation, counts=counts.encode() if isinstance(counts, str) else counts)
        if isinstance(counts, list):
            rle = mask_util.frPyObjects(segmentation, height, width)
        return float(mask_util.area(rle))
    if segmentation:  # polygons
        return float(mask_util.area(mask_util.merge(mask_util.frPyObjects(segmentation, height, width))))
    x, y, w, h = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYWH_ABS)
    return float(w * h)


def ground_truth_sizes(dataset_dict) -> Dict[str, int]:
    """Ground-truth objects of a dataset record per COCO size class."""
    height, width = dataset_dict["height"], dataset_dict["width"]
    return count_by_size([annotation_area(a, height, width) for a in dataset_dict.get("annotations", [])])


def pick_by_object_size(dataset_dicts: Sequence[Dict], most_small: int = 0, most_large: int = 0) -> List[Dict]:
    """The `most_small` records with the most small ground-truth objects, then the `most_large`
    others with the most large ones (ties: the dataset's order), for comparisons of methods on
    small and on large objects chosen by a rule rather than by eye."""
    sizes = [ground_truth_sizes(d) for d in dataset_dicts]
    order = sorted(range(len(dataset_dicts)), key=lambda i: -sizes[i]["small"])[:most_small]
    rest = [i for i in range(len(dataset_dicts)) if i not in order]
    order += sorted(rest, key=lambda i: -sizes[i]["large"])[:most_large]
    return [dataset_dicts[i] for i in order]


def ground_truth_panel(image_rgb, dataset_dict, metadata, original_size=None) -> Panel:
    """`original_size` (height, width): the annotations' image size when `image_rgb` is a
    reduced copy (they are resized to it for drawing; size classes stay the original's)."""
    annotations = dataset_dict.get("annotations", [])
    height, width = original_size or image_rgb.shape[:2]
    areas = [annotation_area(a, height, width) for a in annotations]
    if (height, width) != image_rgb.shape[:2]:
        from detectron2.data import detection_utils
        from detectron2.data import transforms as T

        resize = T.TransformList([T.ResizeTransform(height, width, *image_rgb.shape[:2])])
        dataset_dict = dict(dataset_dict, annotations=[
            detection_utils.transform_instance_annotations(dict(a), resize, image_rgb.shape[:2]) for a in annotations])
    drawn = Visualizer(image_rgb, metadata).draw_dataset_dict(dataset_dict).get_image()
    counts = count_by_size(areas)
    return Panel("ground truth", _title_bar(drawn, ["ground truth", f"objects: {_summary(counts)}"]), counts)


def compose_grid(rows: List[List[Panel]]) -> np.ndarray:
    """Stack panels: one row per width, one column per model (+ ground truth); pads to equal size."""
    height = max(p.image.shape[0] for row in rows for p in row)
    width = max(p.image.shape[1] for row in rows for p in row)
    canvas = np.full((height * len(rows), width * max(len(r) for r in rows), 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            h, w = panel.image.shape[:2]
            canvas[r * height:r * height + h, c * width:c * width + w] = panel.image
    return canvas


def render_comparison(image_bgr, predictors: Sequence[SlimmablePredictor], widths: Sequence[float],
                      resolution_scale: float, metadata, threshold: float, dataset_dict=None):
    """Rows: widths; columns: predictors (and ground truth when `dataset_dict` is given).

    The models see the whole image (through their own test-time resize); panels are drawn at
    most MAX_PANEL_SIDE pixels on the longer side, so memory stays bounded for any input size
    (the outputs, masks included, come back at the panel's size, Detectron2's way)."""
    display_bgr = bounded_for_display(image_bgr)
    image_rgb = display_bgr[:, :, ::-1]
    area_scale = (image_bgr.shape[0] / display_bgr.shape[0]) * (image_bgr.shape[1] / display_bgr.shape[1])
    rows = []
    for width in widths:
        row = []
        for predictor in predictors:
            instances, gflops = predictor(image_bgr, width, resolution_scale, output_size=display_bgr.shape[:2])
            title = f"{predictor.method}  width {width:g}  scale {resolution_scale:g}  {gflops:.2f} GFLOPs"
            row.append(prediction_panel(image_rgb, instances, metadata, title, threshold, area_scale))
        if dataset_dict is not None:
            row.append(ground_truth_panel(image_rgb, dataset_dict, metadata, original_size=image_bgr.shape[:2]))
        rows.append(row)
    return compose_grid(rows), rows


MAX_PANEL_SIDE = 1333  # pixels; Detectron2's default test-time MAX_SIZE


def bounded_for_display(image: np.ndarray, max_side: int = MAX_PANEL_SIDE) -> np.ndarray:
    """The image itself when its longer side is at most `max_side`, else a copy shrunk to it
    (area interpolation)."""
    import cv2

    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    factor = max_side / max(height, width)
    return cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                      interpolation=cv2.INTER_AREA)


def method_label(cfg) -> str:
    """The panel title's name of the training method (MUTUALNET.TRAIN.METHOD, "+distill" with
    inplace distillation)."""
    return METHOD_LABELS[cfg.MUTUALNET.TRAIN.METHOD] + ("+distill" if cfg.MUTUALNET.TRAIN.INPLACE_DISTILL else "")


def load_slimmable_predictor(config_file: str, opts: Sequence = (), weights: str = None) -> SlimmablePredictor:
    """A SlimmablePredictor of a trained config (`runtime.latency.load_trained`: weights `weights`,
    else MODEL.WEIGHTS, else <OUTPUT_DIR>/model_final.pth), calibrating BN statistics on training
    batches for configurations its checkpoint has not banked."""
    from ..bn_calibration import calibration_batches
    from ..runtime.latency import load_trained

    cfg, model = load_trained(config_file, opts, weights)
    return SlimmablePredictor(cfg, model, method_label(cfg), calibration_batches(cfg))


def select_records(dataset_dicts: Sequence[Dict], num_images: int, most_small: int = 0, most_large: int = 0) -> List[Dict]:
    """The dataset records to render: by object size (`pick_by_object_size`) when `most_small` or
    `most_large` is set, else the first `num_images`."""
    if most_small or most_large:
        return pick_by_object_size(dataset_dicts, most_small, most_large)
    return list(dataset_dicts[:num_images])


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Image paths of the inputs, in order: a directory's image files (sorted), a glob's matches
    (sorted), or the path itself when nothing matches (a missing file is reported when read)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            matched = sorted(glob.glob(os.path.expanduser(pattern)))
            paths += matched or [pattern]
    return paths


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def read_frames(path: str) -> Iterator[Tuple[int, np.ndarray]]:
    """(frame number, BGR image) of a video file, or (0, image) of an image file."""
    import cv2
    from detectron2.data.detection_utils import read_image

    if not is_video(path):
        yield 0, read_image(path, format="BGR")
        return
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"cannot open video {path!r}")
    try:
        number = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            yield number, frame
            number += 1
    finally:
        video.release()


def render_comparison_files(items: Sequence[Tuple[str, Optional[Dict]]], predictors: Sequence[SlimmablePredictor],
                            widths: Sequence[float], resolution_scale: float, metadata, threshold: float,
                            output: str) -> int:
    """<output>/<stem>_comparison.png (`render_comparison`) for each (path, dataset record or
    None); an unreadable image is skipped with a message. Returns the number skipped."""
    import cv2
    from detectron2.data.detection_utils import read_image

    failures = 0
    for path, dataset_dict in tqdm(items, desc="rendering"):
        try:
            image = read_image(path, format="BGR")
        except Exception as err:
            tqdm.write(f"skipped {path}: cannot read it as an image ({type(err).__name__}: {err})")
            failures += 1
            continue
        canvas, _ = render_comparison(image, predictors, widths, resolution_scale, metadata, threshold, dataset_dict)
        out_path = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + "_comparison.png")
        cv2.imwrite(out_path, canvas[:, :, ::-1])
        tqdm.write(f"wrote {out_path}")
    return failures


ADAPTIVE_LOG_COLUMNS = ("input", "frame", "width", "resolution_scale", "threads", "latency_ms", "switch_ms", "within_budget")


def render_adaptive_files(predictor, paths: Sequence[str], metadata, budget_ms: float, threshold: float,
                          output: str) -> Tuple[str, int]:
    """Run an AdaptivePredictor on every frame of `paths` (images or videos): <stem>_adaptive.png
    per image, <stem>_adaptive.mp4 (10 frames/s) per video, each frame titled with the
    configuration chosen (width, scale, torch threads) and its time against `budget_ms`, and
    <output>/adaptive_frames.csv with one row per frame (ms to 0.001). An input that fails is
    skipped with a message, the others still run. Returns (the CSV's path, inputs skipped)."""
    import cv2

    log_path = os.path.join(output, "adaptive_frames.csv")
    failures = 0
    with open(log_path, "w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(ADAPTIVE_LOG_COLUMNS)
        for path in tqdm(paths, desc="adaptive"):
            video_out, stem = None, os.path.splitext(os.path.basename(path))[0]
            try:
                for number, image in read_frames(path):
                    instances = predictor(image)["instances"].to("cpu")
                    frame = predictor.last
                    title = (f"w {frame.width:g} s {frame.resolution_scale:g} t {frame.threads}  {frame.latency_ms:.0f}/"
                             f"{budget_ms:g} ms{'  switched' if frame.switched else ''}")
                    drawn = prediction_panel(image[:, :, ::-1], instances, metadata, title, threshold).image
                    tqdm.write(f"{path} frame {number}: width {frame.width:g}, scale {frame.resolution_scale:g}, "
                               f"{frame.threads} torch thread(s), {frame.latency_ms:.1f} ms "
                               f"({'within' if frame.within_budget else 'over'} the budget)"
                               + (f", switched in {frame.switch_ms:.2f} ms" if frame.switched else ""))
                    writer.writerow([path, number, frame.width, frame.resolution_scale, frame.threads,
                                     f"{frame.latency_ms:.3f}", f"{frame.switch_ms:.3f}", int(frame.within_budget)])
                    if is_video(path):
                        if video_out is None:
                            video_out = cv2.VideoWriter(os.path.join(output, stem + "_adaptive.mp4"),
                                                        cv2.VideoWriter_fourcc(*"mp4v"), 10, drawn.shape[1::-1])
                        video_out.write(drawn[:, :, ::-1])
                    else:
                        cv2.imwrite(os.path.join(output, stem + "_adaptive.png"), drawn[:, :, ::-1])
            except Exception as err:  # an unreadable input is skipped, the others still run
                tqdm.write(f"skipped {path}: {type(err).__name__}: {err}")
                failures += 1
            finally:
                if video_out is not None:
                    video_out.release()
    return log_path, failures
