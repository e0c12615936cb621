"""The embedded dataset: deterministic synthetic instance segmentation ("shapes").

Images of circles, squares and triangles (and ellipses) on textured backgrounds, objects drawn in
random order so later ones occlude earlier ones (masks are the visible part). Object sizes are
drawn from three bands so COCO's small (< 32^2 px), medium and large (> 96^2 px) areas are all
populated and APs/APm/APl are defined. Written once as COCO json + PNGs under
$DETECTRON2_DATASETS/shapes (default ./datasets), verified by a manifest of sha256 digests, and
regenerated when files are missing or corrupt.
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "ellipse")
FORMAT_VERSION = 1
# Object side lengths in pixels per size band: small, medium, large (COCO thresholds 32 and 96).
SIZE_BANDS = ((10, 26), (40, 80), (110, 170))
MIN_VISIBLE_FRACTION = 0.35  # drop objects occluded more than this


@dataclass(frozen=True)
class ShapesSplit:
    name: str
    num_images: int
    seed: int
    image_size: int = 256


SPLITS = {
    "shapes_train": ShapesSplit("shapes_train", num_images=400, seed=1),
    "shapes_val": ShapesSplit("shapes_val", num_images=60, seed=2),
}


def dataset_root():
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")


def _background(rng, size):
    """Noise, a colour gradient and stripes, so the background is not trivially separable."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3)
    gradient = rng.uniform(-60, 60, 3)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 20)
    stripes = 25 * np.sin(2 * np.pi * freq * (xs * np.cos(angle) + ys * np.sin(angle)))
    image = base + gradient * xs[..., None] + stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_mask(rng, kind, size):
    """Binary mask (size x size) of one shape at a random place and scale."""
    band = SIZE_BANDS[rng.choice(3, p=(0.4, 0.35, 0.25))]
    side = rng.uniform(*band)
    cx, cy = rng.uniform(side / 2, size - side / 2, 2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    half = side / 2
    if kind == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=1)
    elif kind == "ellipse":
        draw.ellipse([cx - half, cy - half * 0.55, cx + half, cy + half * 0.55], fill=1)
    elif kind == "square":
        theta = rng.uniform(0, np.pi / 2)
        corners = [(cx + half * np.sqrt(2) * np.cos(theta + k * np.pi / 2),
                    cy + half * np.sqrt(2) * np.sin(theta + k * np.pi / 2)) for k in range(4)]
        draw.polygon(corners, fill=1)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        corners = [(cx + half * np.cos(theta + k * 2 * np.pi / 3),
                    cy + half * np.sin(theta + k * 2 * np.pi / 3)) for k in range(3)]
        draw.polygon(corners, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_image(rng, image_size):
    """One image and its visible instance masks with class ids."""
    image = _background(rng, image_size)
    masks, classes, full_areas = [], [], []
    for _ in range(rng.integers(3, 9)):
        class_id = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, CLASSES[class_id], image_size)
        if mask.sum() < 16:
            continue
        colour = rng.uniform(0, 255, 3)
        image[mask] = np.clip(colour + rng.normal(0, 8, (mask.sum(), 3)), 0, 255).astype(np.uint8)
        masks = [m & ~mask for m in masks]  # the new shape hides what lies under it
        masks.append(mask)
        classes.append(class_id)
        full_areas.append(mask.sum())
    return image, [(m, c) for m, c, full in zip(masks, classes, full_areas)
                   if m.sum() >= max(16, MIN_VISIBLE_FRACTION * full)]


def _annotation(mask, class_id, image_id, ann_id):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_util.toBbox(rle).tolist()
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": class_id + 1, "segmentation": rle,
            "area": float(mask.sum()), "bbox": [x, y, w, h], "iscrowd": 0}


def generate_split(split: ShapesSplit, root: str):
    """Write the split's PNGs and COCO json under `root` (deterministic in split.seed)."""
    rng = np.random.default_rng(split.seed)
    image_dir = os.path.join(root, split.name)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, split.num_images + 1):
        image, instances = render_image(rng, split.image_size)
        file_name = f"{image_id:05d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name,
                       "height": split.image_size, "width": split.image_size})
        for mask, class_id in instances:
            annotations.append(_annotation(mask, class_id, image_id, len(annotations) + 1))
    coco = {
        "info": {"description": f"MutualNet-Det embedded dataset {split.name}", "version": FORMAT_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    with open(os.path.join(root, f"{split.name}.json"), "w") as f:
        json.dump(coco, f)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _split_files(split, root):
    image_dir = os.path.join(root, split.name)
    return [os.path.join(root, f"{split.name}.json")] + [
        os.path.join(image_dir, f"{i:05d}.png") for i in range(1, split.num_images + 1)]


def _manifest_path(split, root):
    return os.path.join(root, f"{split.name}.manifest.json")


def _is_intact(split, root):
    try:
        with open(_manifest_path(split, root)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get("version") != FORMAT_VERSION or manifest.get("split") != split.__dict__:
        return False
    try:
        return all(manifest["sha256"].get(os.path.relpath(p, root)) == _sha256(p)
                   for p in _split_files(split, root))
    except OSError:
        return False


def ensure_split(split: ShapesSplit, root: str = None) -> str:
    """Generate the split unless an intact copy exists; return the path of its COCO json.

    An intact copy is used as it is, also in a read-only folder (a shared or mounted dataset):
    nothing is written. Processes that start at once on a fresh clone (the main job's two
    trainings, `launch`'s workers) would otherwise write and read the same files together: one
    generates under a lock file while the others wait, then find it intact."""
    root = root or dataset_root()
    json_path = os.path.join(root, f"{split.name}.json")
    if _is_intact(split, root):
        return json_path
    try:
        os.makedirs(root, exist_ok=True)
        lock = FileLock(os.path.join(root, f".{split.name}.lock"))
        lock.acquire()
    except OSError as err:
        raise OSError(f"the embedded dataset {split.name} under {root} is missing or corrupt and cannot be "
                      f"generated there ({err.strerror}): set DETECTRON2_DATASETS to a writable folder") from None
    try:
        if not _is_intact(split, root):
            logger.info(f"Generating embedded dataset {split.name} under {root} ...")
            generate_split(split, root)
            manifest = {"version": FORMAT_VERSION, "split": split.__dict__,
                        "sha256": {os.path.relpath(p, root): _sha256(p) for p in _split_files(split, root)}}
            with open(_manifest_path(split, root), "w") as f:
                json.dump(manifest, f)
    finally:
        lock.release()
    return json_path


def register_shapes(root: str = None):
    """Register shapes_train / shapes_val in Detectron2's catalogs (generated on first use)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = root or dataset_root()
    for name, split in SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        json_file = os.path.join(root, f"{name}.json")
        image_root = os.path.join(root, name)

        def load(split=split, json_file=json_file, image_root=image_root):
            ensure_split(split, root)
            return load_coco_json(json_file, image_root, split.name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=list(CLASSES), json_file=json_file,
                                      image_root=image_root, evaluator_type="coco")
