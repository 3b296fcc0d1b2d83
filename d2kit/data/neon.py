"""NEON tree crowns: airborne RGB orthophotos (0.1 m/px) with hand-drawn crown boxes.

The images and their Pascal VOC (RectLabel) annotations ship in ``deepforest/data/`` of the
``deepforest`` wheel, version 2.1.0 (MIT licence), pinned here by file name and sha256. On the
first load of a registered split the wheel is fetched with pip (``pip download``, no
dependencies, never installed or imported), checked against the sha256, and only
``deepforest/data/*`` is extracted into ``<datasets_root()>/neon_trees/`` (``datasets_root``
honours ``$D2KIT_DATASETS``); a marker file there records the sha256 and later loads read the
cache. Without network access, either put ``deepforest-2.1.0-py3-none-any.whl`` into that folder
(it is checked and extracted instead of downloaded) or pass ``root=`` a folder that holds the
extracted files (``OSBS_029.xml``, ``OSBS_029.png``, ...).

Source files (one class, "tree"; SOAP's labels "Alive"/"Dead" both count as trees):

==========================================  ===========  =====  =========================
image (``.png`` + ``.xml``)                  W x H (px)   boxes  used for
==========================================  ===========  =====  =========================
``2019_YELL_2_528000_4978000_image_crop2``  2299 x 2472   574   train (top), val (bottom)
``2019_YELL_2_541000_4977000_image_crop``   1249 x 1035   279   train
``OSBS_029``                                  400 x 400     61   test
``SOAP_061``                                  400 x 400     37   test
==========================================  ===========  =====  =========================

Splits (fixed; spatially disjoint; ``T`` = ``tile_size``, 400 by default):

``neon_trees_train``
    Tiles of ``T`` x ``T`` px with an overlap of ``T // 4`` (100 px: a crown up to 100 px wide
    and tall lies whole in some tile; the largest are 108 px) of the second Yellowstone image
    and of the large one *above* its held-out band, i.e. rows ``[0, H - 2T)`` =
    ``[0, 1672)``. Tiles are cut inside that region, so no training pixel (overlap margins
    included) lies in the band. With the defaults: 48 + 16 = 64 tiles.
``neon_trees_val``
    The held-out band: the bottom ``2T`` rows (``[1672, 2472)``, 800 px, two tile rows) of the
    large Yellowstone image, full width, tiles without overlap (12 tiles; the right-most
    column is shifted inward, so it shares 101 px with its neighbour). 193 of the 853
    Yellowstone crowns (23 %) have at least half their area in the band. A crown across the
    band's top edge is cut there as at any tile edge: its two parts may appear in train and in
    val, but no pixel does.
``neon_trees_test``
    ``OSBS_029`` and ``SOAP_061`` whole (other NEON sites), untiled, with exactly their 61 and
    37 XML boxes.

Tiling rule (:func:`tile_boxes`): a box wholly inside a tile is kept; a box cut by the tile's
edge is clipped to the tile and kept if at least ``min_visible`` (0.5) of its area lies inside,
else kept as an ignore region (``iscrowd: 1``, clipped); a box that does not overlap the tile
(zero-area contact included) is dropped. COCO evaluation ignores a detection that matches an
``iscrowd`` box (neither a true nor a false positive) and never counts the box as missed.
Detectron2's ``DatasetMapper`` removes ``iscrowd`` boxes from the training targets, so they are
never positives; Detectron2's matchers have no ignore regions, so anchors and proposals over a
cut crown's sliver count as background there (with the 100 px training overlap such a crown
is whole in a neighbouring tile).

Tiles are written once as PNG files (``<image>_x<x0>_y<y0>.png``, the tile's origin in the source
image) under ``<cache>/tiles_<T>px_minvis<min_visible>/neon_trees_<split>/`` next to one COCO
json per split (the metadata's ``json_file``, read by ``COCOEvaluator``); they are rewritten
when the source annotations or the layout change. Box coordinates are taken as written in the
XML, as continuous pixel coordinates (no ``-1`` shift), and clipped to the image; a box that
leaves the image by more than ``box_tolerance`` (1 px) is an error.

Training on these tiles wants the augmentation for overhead imagery of
:mod:`d2kit.data.overhead_aug` (``INPUT.OVERHEAD_AUG``, on in the NEON configs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image

from ..paths import datasets_root

__all__ = [
    "NEON_TREES_CLASSES",
    "NEON_TREES_FILES",
    "NEON_TREES_SPLITS",
    "WHEEL_NAME",
    "WHEEL_SHA256",
    "Tile",
    "VocAnnotation",
    "tile_grid",
    "tile_boxes",
    "neon_trees_regions",
    "neon_trees_layout",
    "parse_voc_xml",
    "fetch_neon_trees",
    "ensure_neon_trees",
    "load_neon_trees",
    "register_neon_trees",
    "neon_trees_cache_dir",
]

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "deepforest==2.1.0"
WHEEL_NAME = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
WHEEL_DATA_PREFIX = "deepforest/data/"
MARKER_FILE = ".deepforest_wheel.json"

NEON_TREES_CLASSES = ["tree"]
NEON_TREES_SPLITS = ("train", "val", "test")
YELL_LARGE = "2019_YELL_2_528000_4978000_image_crop2"
YELL_SMALL = "2019_YELL_2_541000_4977000_image_crop"
TEST_IMAGES = ("OSBS_029", "SOAP_061")
#: (width, height, number of boxes) of the annotated images in the pinned wheel.
NEON_TREES_FILES = {
    YELL_LARGE: (2299, 2472, 574),
    YELL_SMALL: (1249, 1035, 279),
    "OSBS_029": (400, 400, 61),
    "SOAP_061": (400, 400, 37),
}
#: Held-out band of the large image: its bottom VAL_BAND_TILES * tile_size rows.
VAL_BAND_TILES = 2
#: Bumped whenever the tiles or their annotations would come out differently.
LAYOUT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Tiling (pure functions)
# --------------------------------------------------------------------------------------------


class Tile(NamedTuple):
    """A tile of source image ``image``: pixels ``[x0, x1) x [y0, y1)``."""

    image: str
    x0: int
    y0: int
    x1: int
    y1: int


def _axis_starts(lo: int, hi: int, size: int, stride: int) -> list[int]:
    if hi - lo <= size:
        return [lo]
    starts = list(range(lo, hi - size, stride))
    starts.append(hi - size)  # the last tile is shifted inward to end at hi
    return starts


def tile_grid(
    height: int,
    width: int,
    tile_size: int = 400,
    overlap: int = 0,
    region: tuple[int, int, int, int] | None = None,
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` (ints, row-major) covering ``region`` of an image.

    Tiles are ``tile_size`` px squares at a stride of ``tile_size - overlap``; the last tile of
    a row/column is shifted inward so that it ends on the region's edge (it then overlaps its
    neighbour by more than ``overlap``). A region narrower than ``tile_size`` gets one tile of
    the region's width (the same for the height). Every tile lies inside ``region``.

    Args:
        height, width: image size in pixels (> 0).
        tile_size: tile side in pixels (> 0).
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile_size``.
        region: ``(x0, y0, x1, y1)`` inside the image with ``x1 > x0``, ``y1 > y0``; None: the
            whole image.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
    rx0, ry0, rx1, ry1 = region if region is not None else (0, 0, width, height)
    if not (0 <= rx0 < rx1 <= width and 0 <= ry0 < ry1 <= height):
        raise ValueError(
            f"region (x0, y0, x1, y1) = {tuple(region)} is empty or not inside the "
            f"{width}x{height} (width x height) image"
        )
    stride = tile_size - overlap
    tiles = []
    for y0 in _axis_starts(ry0, ry1, tile_size, stride):
        for x0 in _axis_starts(rx0, rx1, tile_size, stride):
            tiles.append((x0, y0, min(x0 + tile_size, rx1), min(y0 + tile_size, ry1)))
    return tiles


def tile_boxes(
    boxes: np.ndarray, tile: tuple[float, float, float, float], min_visible: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign boxes to a tile.

    Args:
        boxes: (N, 4) XYXY boxes (x1 > x0, y1 > y0) in the source image's pixels.
        tile: ``(x0, y0, x1, y1)`` of the tile in the same pixels.
        min_visible: fraction in (0, 1]: a box with at least this fraction of its area inside
            the tile is kept (clipped); one with less, but more than zero, becomes an ignore
            region (clipped, ``iscrowd=1``); one with no area inside is dropped.

    Returns:
        boxes: (M, 4) float64, clipped to the tile, in the *tile's* pixels (origin at
            ``(tile[0], tile[1])``).
        iscrowd: (M,) int64, 0 (kept) or 1 (ignore).
        index: (M,) int64, row of each output box in the input ``boxes``.
    """
    if not 0 < min_visible <= 1:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tx0, ty0, tx1, ty1 = (float(v) for v in tile)
    clipped = np.stack(
        [
            np.clip(boxes[:, 0], tx0, tx1),
            np.clip(boxes[:, 1], ty0, ty1),
            np.clip(boxes[:, 2], tx0, tx1),
            np.clip(boxes[:, 3], ty0, ty1),
        ],
        axis=1,
    )
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    touching = inside > 0
    visible = np.where(touching, inside / np.where(area > 0, area, 1.0), 0.0)
    index = np.nonzero(touching)[0]
    iscrowd = (visible[index] < min_visible).astype(np.int64)
    out = clipped[index] - np.array([tx0, ty0, tx0, ty0])
    return out, iscrowd, index.astype(np.int64)


def neon_trees_regions(
    sizes: dict[str, tuple[int, int]], tile_size: int = 400
) -> dict[str, list[tuple[str, tuple[int, int, int, int]]]]:
    """The fixed split regions: ``{split: [(image, (x0, y0, x1, y1)), ...]}``.

    Args:
        sizes: ``{image: (height, width)}`` of the four images (see :data:`NEON_TREES_FILES`).
        tile_size: the tile side; the held-out band is ``VAL_BAND_TILES * tile_size`` rows.
    """
    missing = [name for name in (YELL_LARGE, YELL_SMALL, *TEST_IMAGES) if name not in sizes]
    if missing:
        raise KeyError(f"image sizes missing for {missing}")
    h, w = sizes[YELL_LARGE]
    band = VAL_BAND_TILES * tile_size
    if h <= band:
        raise ValueError(
            f"{YELL_LARGE} has {h} rows: too few for a held-out band of {band} rows "
            f"({VAL_BAND_TILES} x tile_size {tile_size}) plus training rows"
        )
    hs, ws = sizes[YELL_SMALL]
    return {
        "train": [(YELL_LARGE, (0, 0, w, h - band)), (YELL_SMALL, (0, 0, ws, hs))],
        "val": [(YELL_LARGE, (0, h - band, w, h))],
        "test": [(name, (0, 0, sizes[name][1], sizes[name][0])) for name in TEST_IMAGES],
    }


def _split_overlap(split: str, tile_size: int) -> int | None:
    """Tile overlap per split; None: whole images, untiled."""
    return {"train": tile_size // 4, "val": 0, "test": None}[split]


def neon_trees_layout(
    sizes: dict[str, tuple[int, int]], tile_size: int = 400
) -> dict[str, list[Tile]]:
    """Every tile of every split (``{split: [Tile, ...]}``), from the image sizes
    ``{image: (height, width)}``; see the module docstring for the layout."""
    layout: dict[str, list[Tile]] = {}
    for split, parts in neon_trees_regions(sizes, tile_size).items():
        overlap = _split_overlap(split, tile_size)
        tiles = []
        for image, region in parts:
            if overlap is None:
                tiles.append(Tile(image, *region))
                continue
            h, w = sizes[image]
            tiles += [Tile(image, *t) for t in tile_grid(h, w, tile_size, overlap, region)]
        layout[split] = tiles
    return layout


# --------------------------------------------------------------------------------------------
# Pascal VOC XML
# --------------------------------------------------------------------------------------------


@dataclass
class VocAnnotation:
    """One parsed VOC XML file: ``boxes`` (N, 4) float64 XYXY clipped to the image,
    ``labels`` (N names as written), the image path and its size."""

    xml_file: str
    image_file: str
    width: int
    height: int
    boxes: np.ndarray
    labels: list[str]


def _find_image(xml_file: str, named: str | None) -> str:
    """The image of an XML file: ``<xml stem>.png`` next to it, else the named file's stem with
    ``.png``, else the named file itself (RectLabel may name the ``.tif`` the boxes were drawn
    on)."""
    folder = os.path.dirname(xml_file)
    stem = os.path.splitext(os.path.basename(xml_file))[0]
    candidates = [os.path.join(folder, stem + ".png")]
    if named:
        base = os.path.basename(named)
        candidates += [os.path.join(folder, os.path.splitext(base)[0] + ".png")]
        candidates += [os.path.join(folder, base)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{xml_file}: image not found; looked at {candidates}")


def _xml_int(node, tag: str, xml_file: str) -> int | None:
    text = node.findtext(tag)
    if text is None:
        return None
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{xml_file}: <size>/<{tag}> is not a number: {text!r}") from None
    if value <= 0:
        raise ValueError(f"{xml_file}: <size>/<{tag}> must be positive, got {value}")
    return value


def parse_voc_xml(xml_file: str, box_tolerance: float = 1.0) -> VocAnnotation:
    """Read a Pascal VOC XML file and find its image (see :func:`_find_image`).

    The image's size is read from its header and must equal ``<size>`` where that is given.
    Each ``<object>`` needs a ``<bndbox>`` with numeric ``xmin ymin xmax ymax``,
    ``xmax > xmin``, ``ymax > ymin``, inside the image up to ``box_tolerance`` px (then
    clipped to it).

    Raises:
        FileNotFoundError: a missing XML or image file.
        ValueError: unparsable XML, a size mismatch, or a bad box; the message names the file,
            the object (1-based, in file order) and what is wrong.
    """
    if not os.path.isfile(xml_file):
        raise FileNotFoundError(f"VOC annotation file not found: {xml_file}")
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_file}: not well-formed XML ({e})") from e
    if root.tag != "annotation":
        raise ValueError(f"{xml_file}: root element is <{root.tag}>, expected <annotation>")
    image_file = _find_image(xml_file, root.findtext("filename"))
    try:
        with Image.open(image_file) as im:
            width, height = im.size
    except OSError as e:
        raise ValueError(f"{xml_file}: cannot read image {image_file}: {e}") from e
    size = root.find("size")
    if size is not None:
        stated = (_xml_int(size, "width", xml_file), _xml_int(size, "height", xml_file))
        if None not in stated and stated != (width, height):
            raise ValueError(
                f"{xml_file}: <size> says {stated[0]}x{stated[1]} but {image_file} is "
                f"{width}x{height} (width x height)"
            )
    boxes, labels = [], []
    t = box_tolerance
    for i, obj in enumerate(root.iter("object"), 1):
        where = f"{xml_file}: object {i} ({obj.findtext('name')!r})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{where}: missing <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(tag)
            if text is None:
                raise ValueError(f"{where}: <bndbox> has no <{tag}>")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: <{tag}> is not a number: {text!r}") from None
            if not np.isfinite(value):
                raise ValueError(f"{where}: <{tag}> is not finite: {text!r}")
            coords.append(value)
        x0, y0, x1, y1 = coords
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"{where}: empty box, need xmax > xmin and ymax > ymin, got (xmin, ymin, xmax, "
                f"ymax) = ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
            )
        inside = x0 < width and y0 < height and x1 > 0 and y1 > 0
        if not inside or x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
            raise ValueError(
                f"{where}: box (xmin, ymin, xmax, ymax) = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies "
                f"outside the {width}x{height} (width x height) image by more than {t:g} px"
            )
        boxes.append([max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)])
        labels.append(obj.findtext("name") or "")
    return VocAnnotation(
        xml_file=xml_file,
        image_file=image_file,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=labels,
    )


# --------------------------------------------------------------------------------------------
# Fetching the wheel
# --------------------------------------------------------------------------------------------


def neon_trees_cache_dir() -> str:
    """``<datasets_root()>/neon_trees``: the extracted files, the marker and the tiles."""
    return os.path.join(datasets_root(), "neon_trees")


def _required_files() -> list[str]:
    return [name + ext for name in NEON_TREES_FILES for ext in (".xml", ".png")]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(dest_dir: str) -> str:
    """Download the pinned wheel into ``dest_dir`` with pip; return its path.

    Raises:
        RuntimeError: pip could not run or failed (the message holds the command and the end
            of its output), or it did not write the wheel.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps",
        "--only-binary=:all:", "--ignore-requires-python", "-d", dest_dir,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run `{' '.join(cmd)}`: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit status {proc.returncode}:\n{tail}")
    path = os.path.join(dest_dir, WHEEL_NAME)
    if not os.path.isfile(path):
        found = sorted(os.listdir(dest_dir))
        raise RuntimeError(f"`{' '.join(cmd)}` did not write {WHEEL_NAME} (found {found})")
    return path


def _verify_sha256(path: str) -> None:
    got = _sha256(path)
    if got != WHEEL_SHA256:
        raise ValueError(
            f"{path}: sha256 mismatch for {WHEEL_NAME}: expected {WHEEL_SHA256}, got {got}. "
            "The file is corrupt or not the pinned release; delete it and load again."
        )


def _extract_data(wheel: str, cache_dir: str) -> list[str]:
    """Extract ``deepforest/data/*`` of ``wheel`` into ``cache_dir``; return the names."""
    tmp = tempfile.mkdtemp(prefix=".extract.", dir=cache_dir)
    try:
        names = []
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.infolist():
                    if not member.filename.startswith(WHEEL_DATA_PREFIX) or member.is_dir():
                        continue
                    rel = member.filename[len(WHEEL_DATA_PREFIX) :]
                    parts = rel.split("/")
                    if any(p in ("", ".", "..") for p in parts) or "\\" in rel:
                        raise ValueError(f"{wheel}: unsafe member name {member.filename!r}")
                    target = os.path.join(tmp, *parts)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    names.append(rel)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{wheel}: not a readable wheel (zip) file: {e}") from e
        missing = sorted(set(_required_files()) - set(names))
        if missing:
            raise ValueError(f"{wheel}: {WHEEL_DATA_PREFIX} lacks {missing}")
        for rel in names:
            target = os.path.join(cache_dir, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(tmp, rel), target)
        return sorted(names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_is_complete(cache_dir: str) -> bool:
    try:
        with open(os.path.join(cache_dir, MARKER_FILE)) as f:
            marker = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    if marker.get("sha256") != WHEEL_SHA256:
        return False
    return all(os.path.isfile(os.path.join(cache_dir, name)) for name in _required_files())


class _Lock:
    """An exclusive lock on ``<folder>/.lock`` (several processes may load at once)."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, ".lock")

    def __enter__(self):
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def fetch_neon_trees(cache_dir: str | None = None) -> str:
    """Make sure the extracted files are in ``cache_dir`` (default
    :func:`neon_trees_cache_dir`); return it.

    A complete cache (marker with the pinned sha256 and every annotated image) is used as is.
    Otherwise the wheel is taken from ``cache_dir`` if it lies there, else downloaded with pip
    into a temporary folder; its sha256 is checked, ``deepforest/data/*`` is extracted and the
    marker written. A downloaded wheel is deleted afterwards; one the user put there is kept.

    Raises:
        RuntimeError: the download failed (the message holds the command and its output).
        ValueError: a sha256 mismatch (expected vs got) or a wheel without the data files.
    """
    cache_dir = os.path.abspath(cache_dir or neon_trees_cache_dir())
    with _Lock(cache_dir):
        if _cache_is_complete(cache_dir):
            return cache_dir
        local = os.path.join(cache_dir, WHEEL_NAME)
        download_dir = None
        try:
            if os.path.isfile(local):
                wheel = local
                logger.info(f"NEON trees: using {wheel}")
            else:
                download_dir = tempfile.mkdtemp(prefix=".download.", dir=cache_dir)
                logger.info(f"NEON trees: downloading {WHEEL_REQUIREMENT} with pip ...")
                try:
                    wheel = _pip_download(download_dir)
                except RuntimeError as e:
                    raise RuntimeError(
                        f"NEON trees: downloading the data failed: {e}\nWithout network access, "
                        f"put {WHEEL_NAME} (sha256 {WHEEL_SHA256}) into {cache_dir}, or pass "
                        f"root= a folder holding the files of its {WHEEL_DATA_PREFIX} "
                        f"({', '.join(_required_files())})."
                    ) from e
            _verify_sha256(wheel)
            names = _extract_data(wheel, cache_dir)
        finally:
            if download_dir is not None:
                shutil.rmtree(download_dir, ignore_errors=True)
        marker = dict(wheel=WHEEL_NAME, sha256=WHEEL_SHA256, prefix=WHEEL_DATA_PREFIX, files=names)
        tmp = os.path.join(cache_dir, MARKER_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(marker, f, indent=1)
        os.replace(tmp, os.path.join(cache_dir, MARKER_FILE))
        logger.info(f"NEON trees: extracted {len(names)} files into {cache_dir}")
    return cache_dir


# --------------------------------------------------------------------------------------------
# Tiles, COCO json, registration
# --------------------------------------------------------------------------------------------


def _tiles_dir(cache_dir: str, tile_size: int, min_visible: float) -> str:
    return os.path.join(cache_dir, f"tiles_{tile_size}px_minvis{min_visible:g}")


def _fingerprint(source_dir: str, tile_size: int, min_visible: float, box_tolerance: float):
    sources = {}
    for name in NEON_TREES_FILES:
        xml_file = os.path.join(source_dir, name + ".xml")
        if not os.path.isfile(xml_file):
            raise FileNotFoundError(
                f"NEON trees: {xml_file} not found; the folder must hold "
                f"{', '.join(_required_files())}"
            )
        png = os.path.join(source_dir, name + ".png")
        png_bytes = os.path.getsize(png) if os.path.isfile(png) else None
        sources[name] = dict(xml_sha256=_sha256(xml_file), png_bytes=png_bytes)
    return dict(layout_version=LAYOUT_VERSION, tile_size=tile_size, min_visible=min_visible,
                val_band_tiles=VAL_BAND_TILES, box_tolerance=box_tolerance,
                sources=sources)  # fmt: skip


def _is_current(tiles_dir: str, fingerprint: dict) -> bool:
    for split in NEON_TREES_SPLITS:
        try:
            with open(os.path.join(tiles_dir, f"neon_trees_{split}.json")) as f:
                info = json.load(f).get("info", {})
        except (OSError, json.JSONDecodeError):
            return False
        if info.get("fingerprint") != fingerprint:
            return False
    return True


def _write_tiles(source_dir, out_dir, tile_size, min_visible, box_tolerance, fingerprint):
    annotations = {}
    for name in NEON_TREES_FILES:
        ann = parse_voc_xml(os.path.join(source_dir, name + ".xml"), box_tolerance)
        annotations[name] = ann
    sizes = {name: (a.height, a.width) for name, a in annotations.items()}
    layout = neon_trees_layout(sizes, tile_size)
    pixels: dict[str, Image.Image] = {}
    for split, tiles in layout.items():
        name = f"neon_trees_{split}"
        os.makedirs(os.path.join(out_dir, name))
        images, coco_annotations = [], []
        for tile in tiles:
            if tile.image not in pixels:
                with Image.open(annotations[tile.image].image_file) as im:
                    pixels[tile.image] = im.convert("RGB")
            file_name = f"{tile.image}_x{tile.x0}_y{tile.y0}.png"
            crop = pixels[tile.image].crop((tile.x0, tile.y0, tile.x1, tile.y1))
            crop.save(os.path.join(out_dir, name, file_name))
            image_id = len(images) + 1
            images.append(dict(id=image_id, file_name=file_name, width=tile.x1 - tile.x0,
                               height=tile.y1 - tile.y0, source=tile.image,
                               origin=[tile.x0, tile.y0]))  # fmt: skip
            boxes, iscrowd, _ = tile_boxes(annotations[tile.image].boxes, tile[1:], min_visible)
            for (x0, y0, x1, y1), crowd in zip(boxes.tolist(), iscrowd.tolist()):
                coco_annotations.append(
                    dict(
                        id=len(coco_annotations) + 1,
                        image_id=image_id,
                        category_id=1,
                        bbox=[x0, y0, x1 - x0, y1 - y0],
                        area=(x1 - x0) * (y1 - y0),
                        iscrowd=int(crowd),
                    )
                )
        coco = dict(
            info=dict(description=f"NEON tree crowns, {name}", fingerprint=fingerprint),
            images=images,
            annotations=coco_annotations,
            categories=[dict(id=1, name=NEON_TREES_CLASSES[0])],
        )
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(coco, f)


def ensure_neon_trees(
    root: str | None = None,
    cache_dir: str | None = None,
    tile_size: int = 400,
    min_visible: float = 0.5,
    box_tolerance: float = 1.0,
) -> dict[str, tuple[str, str]]:
    """Fetch (unless ``root`` is given) and tile; return ``{split: (json_file, image_root)}``.

    Args:
        root: a folder holding the extracted ``deepforest/data`` files; None: fetch the wheel
            into ``cache_dir`` (see :func:`fetch_neon_trees`).
        cache_dir: where the wheel's files and the tiles go (default
            :func:`neon_trees_cache_dir`).
        tile_size, min_visible: see the module docstring and :func:`tile_boxes`.
        box_tolerance: see :func:`parse_voc_xml`.
    """
    cache_dir = os.path.abspath(cache_dir or neon_trees_cache_dir())
    source_dir = os.path.abspath(root) if root is not None else fetch_neon_trees(cache_dir)
    tiles_dir = _tiles_dir(cache_dir, tile_size, min_visible)
    with _Lock(cache_dir):
        fingerprint = _fingerprint(source_dir, tile_size, min_visible, box_tolerance)
        if not _is_current(tiles_dir, fingerprint):
            logger.info(f"NEON trees: writing {tile_size} px tiles to {tiles_dir} ...")
            tmp = tempfile.mkdtemp(prefix=".tiles.", dir=cache_dir)
            try:
                out = os.path.join(tmp, "tiles")
                _write_tiles(source_dir, out, tile_size, min_visible, box_tolerance, fingerprint)
                if os.path.exists(tiles_dir):
                    shutil.rmtree(tiles_dir)
                os.replace(out, tiles_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return {
        split: (
            os.path.join(tiles_dir, f"neon_trees_{split}.json"),
            os.path.join(tiles_dir, f"neon_trees_{split}"),
        )
        for split in NEON_TREES_SPLITS
    }


def load_neon_trees(
    split: str,
    root: str | None = None,
    cache_dir: str | None = None,
    tile_size: int = 400,
    min_visible: float = 0.5,
) -> list[dict]:
    """Detectron2 dataset dicts of ``neon_trees_<split>`` (fetched and tiled on first use;
    ``iscrowd=1`` marks ignore regions). Logs the number of tiles and boxes."""
    if split not in NEON_TREES_SPLITS:
        raise KeyError(f"unknown NEON trees split {split!r}; known: {NEON_TREES_SPLITS}")
    json_file, image_root = ensure_neon_trees(root, cache_dir, tile_size, min_visible)[split]
    name = f"neon_trees_{split}"
    dicts = load_coco_json(json_file, image_root, name)
    crowd = sum(a.get("iscrowd", 0) for d in dicts for a in d["annotations"])
    total = sum(len(d["annotations"]) for d in dicts)
    overlap = _split_overlap(split, tile_size)
    how = "whole images" if overlap is None else f"{tile_size} px tiles, overlap {overlap} px"
    logger.info(
        f"{name}: {len(dicts)} images ({how}), {total - crowd} tree boxes "
        f"+ {crowd} ignore regions (iscrowd)"
    )
    return dicts


def register_neon_trees(
    root: str | None = None,
    cache_dir: str | None = None,
    tile_size: int = 400,
    min_visible: float = 0.5,
) -> list[str]:
    """Register ``neon_trees_{train,val,test}`` (replacing earlier registrations); nothing is
    fetched or tiled until a split is loaded. Arguments: see :func:`ensure_neon_trees`.
    Returns the registered names."""
    cache_dir = os.path.abspath(cache_dir or neon_trees_cache_dir())
    tiles_dir = _tiles_dir(cache_dir, tile_size, min_visible)
    names = []
    for split in NEON_TREES_SPLITS:
        name = f"neon_trees_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        def load(s=split):
            return load_neon_trees(s, root, cache_dir, tile_size, min_visible)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(NEON_TREES_CLASSES),
            thing_dataset_id_to_contiguous_id={1: 0},
            json_file=os.path.join(tiles_dir, f"{name}.json"),
            image_root=os.path.join(tiles_dir, name),
            evaluator_type="coco",
        )
        names.append(name)
    return names
