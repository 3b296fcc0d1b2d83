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

Missing, empty or malformed files raise an error that names the file (and line) and the expected
format; so does a missing image (naming the annotation file and the line that refers to it).
Image sizes come from the image headers (no decoding, EXIF orientation applied as Detectron2's
mapper does). SKU-110K's csv also states the sizes, not always rightly (427 px wide for the
426 px ``test2.jpg`` of the official test split): the header wins, an :class:`ImageSizeWarning`
names the csv line, and every box must lie inside the real image up to ``box_tolerance`` pixels
(``check_image_sizes=False`` skips the header read, about 0.1 ms per image, see the README's
Datasets section, and trusts the stated sizes).
"""

from __future__ import annotations

import csv
import json
import os
import warnings

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

__all__ = [
    "ImageSizeWarning",
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


_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def _image_size(path: str, where: str) -> tuple[int, int]:
    """(height, width) of the image at ``path`` as Detectron2's mapper will see it: read from the
    header (``Image.open`` does not decode the pixels) with the EXIF orientation applied.
    ``where`` (``file:line`` of the annotation that refers to it) prefixes the errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION)
            except Exception:  # a broken EXIF block: detectron2 ignores it too
                orientation = None
    except OSError as e:
        raise ValueError(f"{where}: cannot read image {path}: {e}") from e
    if orientation in _EXIF_TRANSPOSED:
        width, height = height, width
    return height, width


def _require_records(count: int, path: str, what: str, expected: str) -> None:
    if count == 0:
        raise ValueError(f"{path}: no {what} (empty file); expected {expected}")


def load_crowdhuman_odgt(odgt_file: str, image_root: str) -> list[dict]:
    """CrowdHuman annotations with *visible* person boxes (paper setting of HNMS §4.1).

    Boxes tagged ``mask`` (crowd / reflection regions) and persons with ``extra.ignore == 1``
    become ``iscrowd=1`` instances: removed from training by Detectron2's mapper and treated as
    ignore regions by COCO evaluation.

    Raises:
        FileNotFoundError: a missing ``.odgt``, or a missing ``<image_root>/<ID>.jpg`` (naming
            ``odgt_file:line`` of the record that needs it).
        ValueError: an empty file, a malformed record or an unreadable image (naming
            ``odgt_file:line``).
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
            height, width = _image_size(file_name, f"{odgt_file}:{line_no}")
            dicts.append(dict(file_name=file_name, image_id=image_id, height=height, width=width,
                              annotations=annotations))  # fmt: skip
    _require_records(len(dicts), odgt_file, "records", CROWDHUMAN_FORMAT)
    return dicts


class ImageSizeWarning(UserWarning):
    """An annotation file states an image size that is not the image's (the image's is used)."""


def load_sku110k_csv(
    csv_file: str,
    image_root: str,
    check_image_sizes: bool = True,
    box_tolerance: float = 1.0,
) -> list[dict]:
    """SKU-110K annotations: one class ("object"), image sizes from the image headers.

    The csv states each image's size, and is sometimes wrong by a pixel: the official
    ``annotations_test.csv`` says 427x367 for ``test2.jpg``, whose JPEG header (and pixels) are
    426x367. The image is the truth: its header's size is used and an
    :class:`ImageSizeWarning` names the csv line (once per image); only a box that lies
    outside the real image by more than ``box_tolerance`` is an error.

    Args:
        csv_file: ``annotations_<split>.csv`` (rows of :data:`SKU110K_FORMAT`, no header).
        image_root: the directory of the images.
        check_image_sizes: read each image's size from its header (EXIF orientation applied, no
            decoding; ~0.1 ms per image). Off: trust the csv's sizes and only check that each
            image exists.
        box_tolerance: a box may overhang the image by at most this many pixels (rounding); a
            box further out means a wrong size or a truncated row.

    Raises:
        FileNotFoundError: a missing csv, or a missing image (naming ``csv_file:line``).
        ValueError: an empty csv; a malformed row, a box outside the image (by its header, or
            by the stated size when ``check_image_sizes`` is off) or two different stated sizes
            for one image (naming ``csv_file:line``).

    Warns:
        ImageSizeWarning: a stated size that is not the image's (naming the image's first line).
    """
    _require_file(csv_file, "SKU-110K annotation file (.csv)")
    by_image: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    # per image, the box reaching furthest out on each side: (coordinate, line, box), enough to
    # check every box once the real size is known without keeping them all (SKU-110K: 1.7M)
    extremes: dict[str, dict[str, tuple[float, int, tuple]]] = {}
    with open(csv_file, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or not any(v.strip() for v in row):
                continue
            where = f"{csv_file}:{line_no}"
            try:
                name = row[0]
                x1, y1, x2, y2 = (float(v) for v in row[1:5])
                width, height = int(row[6]), int(row[7])
                if len(row) != 8:
                    raise ValueError(f"{len(row)} columns")
                if width <= 0 or height <= 0:
                    raise ValueError(f"image size {width}x{height}")
            except (IndexError, ValueError) as e:
                raise ValueError(
                    f"{where}: malformed SKU-110K row {row!r} ({e}); expected {SKU110K_FORMAT}"
                ) from e
            record = by_image.get(name)
            if record is None:
                record = by_image[name] = dict(
                    file_name=os.path.join(image_root, name),
                    image_id=name,
                    height=height,
                    width=width,
                    annotations=[],
                )
                first_line[name] = line_no
                extremes[name] = {}
            elif (record["width"], record["height"]) != (width, height):
                raise ValueError(
                    f"{where}: {name} is stated as {width}x{height} here but "
                    f"{record['width']}x{record['height']} at line {first_line[name]} (width x "
                    "height); a truncated or edited row?"
                )
            box = (x1, y1, x2, y2)
            ext = extremes[name]
            for side, value in (("x1", -x1), ("y1", -y1), ("x2", x2), ("y2", y2)):
                if side not in ext or value > ext[side][0]:
                    ext[side] = (value, line_no, box)
            if x2 > x1 and y2 > y1:
                record["annotations"].append(
                    dict(bbox=[x1, y1, x2, y2], bbox_mode=BoxMode.XYXY_ABS, category_id=0)
                )
    _require_records(len(by_image), csv_file, "rows", SKU110K_FORMAT)
    for name, record in by_image.items():
        where = f"{csv_file}:{first_line[name]}"
        stated = (record["width"], record["height"])
        size_text = f"the stated image size {stated[0]}x{stated[1]}"
        if check_image_sizes:
            height, width = _image_size(record["file_name"], where)
            if (width, height) != stated:
                warnings.warn(
                    f"{where}: the csv states {stated[0]}x{stated[1]} for "
                    f"{record['file_name']}, whose header says {width}x{height} (width x height, "
                    "EXIF orientation applied); using the header's size",
                    ImageSizeWarning,
                    stacklevel=2,
                )
                record["height"], record["width"] = height, width
                size_text = (
                    f"the image size {width}x{height} (its header; the csv states "
                    f"{stated[0]}x{stated[1]})"
                )
        elif not os.path.isfile(record["file_name"]):
            raise FileNotFoundError(f"{where}: image not found: {record['file_name']}")
        t = box_tolerance
        limits = {"x1": t, "y1": t, "x2": record["width"] + t, "y2": record["height"] + t}
        outside = [e for side, e in extremes[name].items() if e[0] > limits[side]]
        if outside:
            _, line_no, (x1, y1, x2, y2) = min(outside, key=lambda e: e[1])
            raise ValueError(
                f"{csv_file}:{line_no}: box (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, "
                f"{y2:g}) lies outside {size_text} (width x height) by more than {t:g} px: a "
                f"wrong image size or a truncated row; expected {SKU110K_FORMAT}"
            )
    return list(by_image.values())


def load_carpk(root: str, split: str) -> list[dict]:
    """CARPK (``split`` in {"train", "test"}), one class ("car")."""
    list_file = os.path.join(root, "ImageSets", f"{split}.txt")
    _require_file(list_file, f"CARPK image list for split {split!r}")
    with open(list_file) as f:
        ids = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    _require_records(len(ids), list_file, "image ids", "one image id per line")
    dicts = []
    for list_line, image_id in ids:
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
        height, width = _image_size(file_name, f"{list_file}:{list_line}")
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


def register_sku110k(
    root: str,
    splits=("train", "val", "test"),
    check_image_sizes: bool = True,
    box_tolerance: float = 1.0,
) -> list[str]:
    """Register ``sku110k_<split>`` for each split; returns the registered names.
    ``check_image_sizes`` and ``box_tolerance``: see :func:`load_sku110k_csv`."""
    names = []
    for split in splits:
        csv_file = os.path.join(root, "annotations", f"annotations_{split}.csv")
        images = os.path.join(root, "images")

        def load(c=csv_file, i=images):
            return load_sku110k_csv(c, i, check_image_sizes, box_tolerance)

        _register(f"sku110k_{split}", load, ["object"])
        names.append(f"sku110k_{split}")
    return names


def register_carpk(root: str, splits=("train", "test")) -> list[str]:
    """Register ``carpk_<split>`` for each split; returns the registered names."""
    names = []
    for split in splits:
        _register(f"carpk_{split}", lambda s=split: load_carpk(root, s), ["car"])
        names.append(f"carpk_{split}")
    return names
