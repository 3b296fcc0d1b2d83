"""Loaders for real crowded-scene datasets in their native formats.

Each ``load_*`` returns Detectron2 dataset dicts (XYXY_ABS boxes, contiguous category ids);
each ``register_*`` takes the dataset root and registers the splits under fixed names. Nothing
is downloaded: point the function at the dataset as distributed by its authors.

============  ======================================================  ============================
dataset       files under ``root``                                    registered names
============  ======================================================  ============================
CrowdHuman    ``annotation_{train,val}.odgt``, ``Images/<ID>.jpg``      ``crowdhuman_{train,val}``
SKU-110K      ``annotations/annotations_{train,val,test}.csv``,         ``sku110k_{train,val,test}``
              ``images/<image_name>``
CARPK         ``Annotations/<id>.txt``, ``Images/<id>.png``,            ``carpk_{train,test}``
              ``ImageSets/{train,test}.txt``
============  ======================================================  ============================

Missing or malformed files raise an error that names the file (and line) and the expected
format.
"""

from __future__ import annotations

import csv
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

__all__ = [
    "load_crowdhuman_odgt",
    "load_sku110k_csv",
    "load_carpk",
    "register_crowdhuman",
    "register_sku110k",
    "register_carpk",
]

CROWDHUMAN_FORMAT = (
    "one JSON object per line: {'ID': str, 'gtboxes': [{'tag': 'person'|'mask', "
    "'vbox': [x, y, w, h], 'extra': {'ignore': 0|1}}, ...]}"
)
SKU110K_FORMAT = "CSV rows without header: image_name,x1,y1,x2,y2,class,image_width,image_height"
CARPK_FORMAT = "one box per line: 'x1 y1 x2 y2 class_id' (whitespace separated)"


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) read from the image header."""
    _require_file(path, "image")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return height, width


def load_crowdhuman_odgt(odgt_file: str, image_root: str) -> list[dict]:
    """CrowdHuman annotations with *visible* person boxes (paper setting of HNMS §4.1).

    Boxes tagged ``mask`` (crowd / reflection regions) and persons with ``extra.ignore == 1``
    become ``iscrowd=1`` instances: removed from training by Detectron2's mapper and treated as
    ignore regions by COCO evaluation.
    """
    _require_file(odgt_file, "CrowdHuman annotation file (.odgt)")
    dicts = []
    with open(odgt_file) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image_id = record["ID"]
                annotations = []
                for gt in record["gtboxes"]:
                    x, y, w, h = (float(v) for v in gt["vbox"])
                    ignore = gt["tag"] != "person" or gt.get("extra", {}).get("ignore", 0) == 1
                    if w <= 0 or h <= 0:
                        continue
                    annotations.append(
                        dict(
                            bbox=[x, y, x + w, y + h],
                            bbox_mode=BoxMode.XYXY_ABS,
                            category_id=0,
                            iscrowd=int(ignore),
                        )  # fmt: skip
                    )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{odgt_file}:{line_no}: malformed CrowdHuman record ({e!r}); "
                    f"expected {CROWDHUMAN_FORMAT}"
                ) from e
            file_name = os.path.join(image_root, f"{image_id}.jpg")
            height, width = _image_size(file_name)
            dicts.append(dict(file_name=file_name, image_id=image_id, height=height, width=width,
                              annotations=annotations))  # fmt: skip
    return dicts


def load_sku110k_csv(csv_file: str, image_root: str) -> list[dict]:
    """SKU-110K annotations: one class ("object"), image sizes from the csv."""
    _require_file(csv_file, "SKU-110K annotation file (.csv)")
    by_image: dict[str, dict] = {}
    with open(csv_file, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            try:
                name = row[0]
                x1, y1, x2, y2 = (float(v) for v in row[1:5])
                width, height = int(row[6]), int(row[7])
                if len(row) != 8:
                    raise ValueError(f"{len(row)} columns")
            except (IndexError, ValueError) as e:
                raise ValueError(
                    f"{csv_file}:{line_no}: malformed SKU-110K row {row!r} ({e}); "
                    f"expected {SKU110K_FORMAT}"
                ) from e
            record = by_image.setdefault(
                name,
                dict(
                    file_name=os.path.join(image_root, name),
                    image_id=name,
                    height=height,
                    width=width,
                    annotations=[],
                ),  # fmt: skip
            )
            if x2 > x1 and y2 > y1:
                record["annotations"].append(
                    dict(bbox=[x1, y1, x2, y2], bbox_mode=BoxMode.XYXY_ABS, category_id=0)
                )
    return list(by_image.values())


def load_carpk(root: str, split: str) -> list[dict]:
    """CARPK (``split`` in {"train", "test"}), one class ("car")."""
    list_file = os.path.join(root, "ImageSets", f"{split}.txt")
    _require_file(list_file, f"CARPK image list for split {split!r}")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    dicts = []
    for image_id in ids:
        ann_file = os.path.join(root, "Annotations", f"{image_id}.txt")
        _require_file(ann_file, "CARPK annotation file")
        annotations = []
        with open(ann_file) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    x1, y1, x2, y2 = (float(v) for v in line.split()[:4])
                    if len(line.split()) != 5:
                        raise ValueError(f"{len(line.split())} fields")
                except ValueError as e:
                    raise ValueError(
                        f"{ann_file}:{line_no}: malformed CARPK box {line.strip()!r} ({e}); "
                        f"expected {CARPK_FORMAT}"
                    ) from e
                if x2 > x1 and y2 > y1:
                    annotations.append(
                        dict(bbox=[x1, y1, x2, y2], bbox_mode=BoxMode.XYXY_ABS, category_id=0)
                    )
        file_name = os.path.join(root, "Images", f"{image_id}.png")
        height, width = _image_size(file_name)
        dicts.append(dict(file_name=file_name, image_id=image_id, height=height, width=width,
                          annotations=annotations))  # fmt: skip
    return dicts


def _register(name: str, loader, thing_classes: list[str]) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(thing_classes=thing_classes, evaluator_type="coco")


def register_crowdhuman(root: str, splits=("train", "val")) -> list[str]:
    """Register ``crowdhuman_<split>`` for each split; returns the registered names."""
    names = []
    for split in splits:
        odgt = os.path.join(root, f"annotation_{split}.odgt")
        images = os.path.join(root, "Images")
        _register(f"crowdhuman_{split}", lambda o=odgt, i=images: load_crowdhuman_odgt(o, i),
                  ["person"])  # fmt: skip
        names.append(f"crowdhuman_{split}")
    return names


def register_sku110k(root: str, splits=("train", "val", "test")) -> list[str]:
    """Register ``sku110k_<split>`` for each split; returns the registered names."""
    names = []
    for split in splits:
        csv_file = os.path.join(root, "annotations", f"annotations_{split}.csv")
        images = os.path.join(root, "images")
        _register(f"sku110k_{split}", lambda c=csv_file, i=images: load_sku110k_csv(c, i),
                  ["object"])  # fmt: skip
        names.append(f"sku110k_{split}")
    return names


def register_carpk(root: str, splits=("train", "test")) -> list[str]:
    """Register ``carpk_<split>`` for each split; returns the registered names."""
    names = []
    for split in splits:
        _register(f"carpk_{split}", lambda s=split: load_carpk(root, s), ["car"])
        names.append(f"carpk_{split}")
    return names
