"""Deterministic synthetic detection datasets, cached on disk as COCO json + PNG.

Two families, both generated from a seed so that every machine gets the same bytes:

* ``shapes``: 128x128 images with 1-4 non-overlapping shapes (circle, square, triangle) of
  random colour, rotation and size on a textured background, with instance masks (polygons).
* ``crowd``: 256x256 dense scenes of 50-300 small rectangles and ellipses that overlap
  (pairwise box IoU up to 0.5): the crowded regime of HNMS (CARPK / SKU-110K-like), boxes only.

A split is generated lazily the first time it is loaded, under ``datasets_root()/<name>/``
(``$D2KIT_DATASETS`` relocates it), and regenerated when its spec or the generator version
changes. Generation is guarded by a file lock so that several DDP workers can ask for it at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from ..paths import datasets_root

__all__ = ["SynthSpec", "SYNTH_SPECS", "generate_image", "ensure_synthetic"]

logger = logging.getLogger(__name__)

#: Bump when the rendering changes, so that stale caches are regenerated.
GENERATOR_VERSION = 2

SHAPE_CLASSES = ("circle", "square", "triangle")
CROWD_CLASSES = ("rect", "ellipse")


@dataclass(frozen=True)
class SynthSpec:
    """What one synthetic split contains. All sizes are in pixels."""

    kind: str  # "shapes" or "crowd"
    num_images: int
    image_size: int
    seed: int
    min_objects: int
    max_objects: int
    min_size: int
    max_size: int
    # largest pairwise box IoU allowed between two objects of one image (0: no overlap)
    max_overlap: float

    @property
    def classes(self) -> tuple[str, ...]:
        return SHAPE_CLASSES if self.kind == "shapes" else CROWD_CLASSES


_SHAPES = dict(kind="shapes", image_size=128, min_objects=1, max_objects=4, min_size=22,
               max_size=56, max_overlap=0.0)  # fmt: skip
_CROWD = dict(kind="crowd", image_size=256, min_objects=50, max_objects=300, min_size=10,
              max_size=28, max_overlap=0.5)  # fmt: skip

SYNTH_SPECS: dict[str, SynthSpec] = {
    "synth_shapes_train": SynthSpec(num_images=400, seed=1000, **_SHAPES),
    "synth_shapes_val": SynthSpec(num_images=100, seed=2000, **_SHAPES),
    "synth_crowd_train": SynthSpec(num_images=200, seed=3000, **_CROWD),
    "synth_crowd_val": SynthSpec(num_images=50, seed=4000, **_CROWD),
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour gradient plus mild noise, uint8 HxWx3."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0.0, 1.0, size)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    img = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) float64 of a shape of diameter ``size`` centred at (cx, cy)."""
    r = size / 2
    if kind in ("circle", "ellipse"):
        theta = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        pts = np.stack([np.cos(theta), np.sin(theta)], 1) * r
        if kind == "ellipse":
            pts[:, 1] *= 0.6
    elif kind in ("square", "rect"):
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * r / math.sqrt(2)
        if kind == "rect":
            pts[:, 1] *= 0.6
    elif kind == "triangle":
        theta = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) - math.pi / 2
        pts = np.stack([np.cos(theta), np.sin(theta)], 1) * r
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (M, 4) xyxy boxes."""
    if len(boxes) == 0:
        return np.zeros((0,))
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple:
    """A colour at least 90 (L2 in RGB) away from the background's mean colour."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - mean) > 90:
            break
    return tuple(int(c) for c in colour)


def generate_image(spec: SynthSpec, index: int) -> tuple[np.ndarray, list[dict]]:
    """Render image ``index`` of ``spec`` (deterministic in (spec.seed, index)).

    Returns:
        image: uint8 (S, S, 3), BGR as cv2 writes it.
        objects: dicts with ``bbox`` (xyxy float, inside the image), ``category_id`` (index into
            ``spec.classes``), ``polygon`` (flat [x0, y0, x1, y1, ...], the drawn outline) and
            ``area`` (polygon area, pixels).
    """
    rng = np.random.default_rng([spec.seed, index])
    size = spec.image_size
    image = _background(rng, size)
    objects: list[dict] = []
    boxes = np.zeros((0, 4))
    target = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    for _ in range(target * 20):
        if len(objects) == target:
            break
        cls = int(rng.integers(len(spec.classes)))
        obj_size = rng.uniform(spec.min_size, spec.max_size)
        if spec.kind == "shapes":
            angle = rng.uniform(0, 2 * math.pi)
        else:  # crowd objects stay axis-aligned (cars, shelf items), in either orientation
            angle = rng.choice([0, math.pi / 2])
        cx, cy = rng.uniform(obj_size / 2 + 1, size - obj_size / 2 - 1, size=2)
        poly = _polygon(spec.classes[cls], cx, cy, obj_size, angle)
        poly = np.clip(poly, 0, size - 1)
        box = np.concatenate([poly.min(0), poly.max(0)])
        if (box[2:] - box[:2]).min() < 4:
            continue
        if spec.max_overlap <= 0:
            # keep a 2 px gap so that masks never touch
            grown = box + np.array([-2, -2, 2, 2])
            if (_box_iou(grown, boxes) > 0).any():
                continue
        elif (_box_iou(box, boxes) > spec.max_overlap).any():
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        colour = _contrasting_colour(rng, image[y0 : y1 + 1, x0 : x1 + 1])
        cv2.fillPoly(image, [np.round(poly * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
        area = 0.5 * abs(
            np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1))
        )
        objects.append(
            dict(bbox=box.tolist(), category_id=cls, polygon=poly.reshape(-1).tolist(), area=area)
        )
        boxes = np.concatenate([boxes, box[None]], 0)
    return image, objects


def _spec_fingerprint(spec: SynthSpec) -> dict:
    return dict(generator_version=GENERATOR_VERSION, **dataclasses.asdict(spec))


def _write_split(spec: SynthSpec, out_dir: str, with_masks: bool) -> None:
    os.makedirs(os.path.join(out_dir, "images"))
    images, annotations = [], []
    for index in range(spec.num_images):
        image, objects = generate_image(spec, index)
        file_name = f"{index:06d}.png"
        cv2.imwrite(os.path.join(out_dir, "images", file_name), image)
        images.append(dict(id=index + 1, file_name=file_name, width=spec.image_size,
                           height=spec.image_size))  # fmt: skip
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            ann = dict(id=len(annotations) + 1, image_id=index + 1,
                       category_id=obj["category_id"] + 1, bbox=[x0, y0, x1 - x0, y1 - y0],
                       area=obj["area"], iscrowd=0)  # fmt: skip
            if with_masks:
                ann["segmentation"] = [obj["polygon"]]
            annotations.append(ann)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(spec.classes)]
    coco = dict(info=_spec_fingerprint(spec), images=images, annotations=annotations,
                categories=categories)  # fmt: skip
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)


def _write_subset(src_json: str, dst_json: str, num_images: int) -> None:
    with open(src_json) as f:
        coco = json.load(f)
    keep = {img["id"] for img in coco["images"][:num_images]}
    coco["images"] = [img for img in coco["images"] if img["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    coco["info"] = dict(coco["info"], subset_of=os.path.basename(src_json), num_images=num_images)
    tmp = dst_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, dst_json)


def split_dir(name: str) -> str:
    """Cache directory of synthetic split ``name`` (a key of ``SYNTH_SPECS``)."""
    return os.path.join(datasets_root(), name)


def _is_current(json_file: str, spec: SynthSpec) -> bool:
    if not os.path.isfile(json_file):
        return False
    try:
        with open(json_file) as f:
            info = json.load(f).get("info", {})
    except (OSError, json.JSONDecodeError):
        return False
    return {k: info.get(k) for k in _spec_fingerprint(spec)} == _spec_fingerprint(spec)


def ensure_synthetic(name: str, subset: int | None = None) -> tuple[str, str]:
    """Generate split ``name`` if it is missing or stale; return (json_file, image_root).

    Args:
        name: a key of ``SYNTH_SPECS``.
        subset: if given, also write (and return) ``annotations_first<subset>.json`` holding only
            the first ``subset`` images.
    """
    if name not in SYNTH_SPECS:
        raise KeyError(f"unknown synthetic split {name!r}; known: {sorted(SYNTH_SPECS)}")
    spec = SYNTH_SPECS[name]
    out_dir = split_dir(name)
    json_file = os.path.join(out_dir, "annotations.json")
    image_root = os.path.join(out_dir, "images")
    os.makedirs(datasets_root(), exist_ok=True)
    with open(os.path.join(datasets_root(), f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(json_file, spec):
            logger.info(f"Generating synthetic dataset {name} ({spec.num_images} images) ...")
            tmp_dir = tempfile.mkdtemp(prefix=f".{name}.", dir=datasets_root())
            try:
                _write_split(spec, os.path.join(tmp_dir, name), with_masks=spec.kind == "shapes")
                if os.path.exists(out_dir):
                    shutil.rmtree(out_dir)
                os.replace(os.path.join(tmp_dir, name), out_dir)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            logger.info(f"Wrote {name} to {out_dir}")
        if subset is not None:
            sub_json = os.path.join(out_dir, f"annotations_first{subset}.json")
            if not _is_current(sub_json, spec):
                _write_subset(json_file, sub_json, subset)
            json_file = sub_json
    return json_file, image_root
