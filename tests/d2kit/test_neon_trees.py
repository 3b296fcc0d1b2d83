"""NEON tree crowns: VOC parsing, the tiling rule, the fixed split layout, fetching and caching the
wheel (pip mocked: no test touches the network), registration and COCO evaluation of ignore
regions, and the exact 90-degree rotation of the overhead augmentation."""

import hashlib
import json
import logging
import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from d2kit.config import add_d2kit_config
from d2kit.data import neon
from d2kit.data.neon import (
    NEON_TREES_FILES,
    TEST_IMAGES,
    YELL_LARGE,
    YELL_SMALL,
    ensure_neon_trees,
    fetch_neon_trees,
    neon_trees_layout,
    parse_voc_xml,
    register_neon_trees,
    tile_boxes,
    tile_grid,
)
from d2kit.data.overhead_aug import (
    RandomRotation90,
    RandomSaturationFormat,
    Rotate90Transform,
    build_overhead_augmentation,
)

# A miniature of the real layout with tile_size 20: the large image's held-out band is its bottom
# 2 * 20 = 40 rows. Boxes (xmin, ymin, xmax, ymax) per image; W x H per image.
TILE = 20
FIXTURE = {
    YELL_LARGE: ((60, 80), [(2, 2, 12, 12), (30, 5, 45, 18), (20, 30, 30, 50), (5, 50, 15, 60)]),
    YELL_SMALL: ((30, 30), [(3, 3, 13, 13), (18, 16, 28, 26)]),
    "OSBS_029": ((20, 20), [(1, 1, 9, 9), (10, 12, 20, 20)]),
    "SOAP_061": ((20, 20), [(4, 4, 14, 16)]),
}


def _xml(filename, width, height, boxes, name="Tree"):
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>RGB</folder><filename>{filename}</filename><size><width>{width}"
        f"</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def _write_image(path, width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def source(tmp_path):
    """A folder laid out like the wheel's deepforest/data (tiny images)."""
    root = tmp_path / "data"
    root.mkdir()
    for i, (stem, ((w, h), boxes)) in enumerate(FIXTURE.items()):
        _write_image(root / f"{stem}.png", w, h, seed=i)
        # RectLabel may name the .tif the boxes were drawn on
        filename = f"{stem}.tif" if stem == "OSBS_029" else f"{stem}.png"
        label = "Dead" if stem == "SOAP_061" else "Tree"
        (root / f"{stem}.xml").write_text(_xml(filename, w, h, boxes, label))
    return root


def _fake_wheel(path, source_dir):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("deepforest/__init__.py", "raise ImportError('never imported')\n")
        zf.writestr("deepforest-2.1.0.dist-info/METADATA", "Name: deepforest\n")
        for name in sorted(os.listdir(source_dir)):
            zf.write(os.path.join(source_dir, name), f"deepforest/data/{name}")
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ------------------------------------------------------------------------------------ parsing


def test_parse_voc_xml_finds_the_png_and_keeps_boxes(source):
    ann = parse_voc_xml(str(source / "OSBS_029.xml"))  # the XML names OSBS_029.tif
    assert ann.image_file == str(source / "OSBS_029.png")
    assert (ann.width, ann.height) == (20, 20)
    np.testing.assert_array_equal(ann.boxes, [[1, 1, 9, 9], [10, 12, 20, 20]])
    assert ann.labels == ["Tree", "Tree"] and ann.boxes.dtype == np.float64


def test_parse_voc_xml_clips_within_tolerance(source):
    (source / "SOAP_061.xml").write_text(_xml("SOAP_061.png", 20, 20, [(-0.5, 2, 20.8, 9)]))
    ann = parse_voc_xml(str(source / "SOAP_061.xml"))
    np.testing.assert_array_equal(ann.boxes, [[0, 2, 20, 9]])


BAD_OBJECTS = {
    "missing bndbox": ("<object><name>Tree</name></object>", "missing <bndbox>"),
    "non-numeric": (
        "<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>a</ymin><xmax>5</xmax>"
        "<ymax>6</ymax></bndbox></object>",
        "<ymin> is not a number: 'a'",
    ),
    "missing coordinate": (
        "<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax>"
        "</bndbox></object>",
        "no <ymax>",
    ),
    "xmax <= xmin": (
        "<object><name>Tree</name><bndbox><xmin>5</xmin><ymin>2</ymin><xmax>5</xmax>"
        "<ymax>6</ymax></bndbox></object>",
        "need xmax > xmin",
    ),
    "outside the image": (
        "<object><name>Tree</name><bndbox><xmin>10</xmin><ymin>2</ymin><xmax>23</xmax>"
        "<ymax>6</ymax></bndbox></object>",
        "outside the 20x20 (width x height) image by more than 1 px",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OBJECTS))
def test_malformed_xml_names_file_and_problem(source, case):
    obj, message = BAD_OBJECTS[case]
    good = _xml("SOAP_061.png", 20, 20, [(1, 1, 5, 5)]).replace("</annotation>", "")
    xml_file = source / "SOAP_061.xml"
    xml_file.write_text(good + obj + "</annotation>")
    with pytest.raises(ValueError) as info:
        parse_voc_xml(str(xml_file))
    assert str(xml_file) in str(info.value) and "object 2" in str(info.value)
    assert message in str(info.value)


def test_broken_xml_and_size_mismatch_name_the_file(source):
    xml_file = source / "SOAP_061.xml"
    xml_file.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not well-formed XML") as info:
        parse_voc_xml(str(xml_file))
    assert str(xml_file) in str(info.value)
    xml_file.write_text(_xml("SOAP_061.png", 30, 20, []))
    with pytest.raises(ValueError, match=r"<size> says 30x20 but .*SOAP_061.png is 20x20"):
        parse_voc_xml(str(xml_file))


# ------------------------------------------------------------------------------------- tiling


def test_tile_boxes_rule_hand_example():
    tile = (100, 200, 200, 300)  # a 100 px tile whose origin is (100, 200)
    boxes = np.array(
        [
            [110, 210, 130, 230],  # wholly inside: kept as is
            [186, 240, 206, 260],  # 14 of 20 px wide inside: 70 % -> kept, clipped
            [194, 270, 214, 290],  # 6 of 20 px inside: 30 % -> ignore region, clipped
            [220, 210, 240, 230],  # outside: dropped
            [200, 210, 210, 220],  # touches the right edge only (zero area): dropped
            [90, 190, 110, 210],  # corner: 10 x 10 of 20 x 20 inside = 25 % -> ignore
            [150, 290, 160, 310],  # exactly 50 % inside: kept (at least min_visible)
        ],
        dtype=float,
    )
    out, iscrowd, index = tile_boxes(boxes, tile, min_visible=0.5)
    np.testing.assert_array_equal(index, [0, 1, 2, 5, 6])
    np.testing.assert_array_equal(iscrowd, [0, 0, 1, 1, 0])
    # in the tile's pixels
    np.testing.assert_allclose(
        out,
        [[10, 10, 30, 30], [86, 40, 100, 60], [94, 70, 100, 90], [0, 0, 10, 10], [50, 90, 60, 100]],
    )
    _, iscrowd, _ = tile_boxes(boxes, tile, min_visible=0.75)  # 70 % is now too little
    np.testing.assert_array_equal(iscrowd, [0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="min_visible"):
        tile_boxes(boxes, tile, min_visible=0)


def test_tile_grid_shifts_edge_tiles_inward():
    # 900 wide, 1000 tall, 400 px tiles: x at 0, 400 and 500 (shifted to end at 900), y at 0,
    # 400 and 600
    tiles = tile_grid(1000, 900, 400)
    assert [t[:2] for t in tiles[:3]] == [(0, 0), (400, 0), (500, 0)]
    assert sorted({t[1] for t in tiles}) == [0, 400, 600] and len(tiles) == 9
    assert all(t[2] - t[0] == 400 and t[3] - t[1] == 400 for t in tiles)
    # overlap 100 (stride 300) inside region x [100, 900), y [0, 500): x 100, 400, 500; y 0, 100
    tiles = tile_grid(1000, 900, 400, overlap=100, region=(100, 0, 900, 500))
    assert sorted({t[0] for t in tiles}) == [100, 400, 500]
    assert sorted({t[1] for t in tiles}) == [0, 100]
    # a region smaller than a tile gets one tile of its own size
    assert tile_grid(300, 250, 400) == [(0, 0, 250, 300)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 40, overlap=40)
    with pytest.raises(ValueError, match="region"):
        tile_grid(100, 100, 40, region=(0, 50, 100, 120))


def test_real_layout_is_spatially_disjoint():
    sizes = {name: (h, w) for name, (w, h, _) in NEON_TREES_FILES.items()}
    layout = neon_trees_layout(sizes)  # the registered splits' defaults (400 px tiles)
    assert [len(layout[s]) for s in ("train", "val", "test")] == [64, 12, 2]
    h, w = sizes[YELL_LARGE]
    train, val = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for tile in layout["train"]:
        assert tile.x1 - tile.x0 == 400 and tile.y1 - tile.y0 == 400
        if tile.image == YELL_LARGE:
            train[tile.y0 : tile.y1, tile.x0 : tile.x1] = True
    for tile in layout["val"]:
        assert tile.image == YELL_LARGE
        val[tile.y0 : tile.y1, tile.x0 : tile.x1] = True
    assert not (train & val).any()  # no training pixel (overlap margins included) in val
    assert val[h - 800 :].all() and not val[: h - 800].any()  # val is the bottom 800 rows
    assert train[: h - 800].all()  # the rest of the image is used for training
    assert {t.image for t in layout["train"]} == {YELL_LARGE, YELL_SMALL}
    assert [tuple(t) for t in layout["test"]] == [
        (name, 0, 0, 400, 400) for name in TEST_IMAGES
    ]  # fmt: skip


# ------------------------------------------------------------------------------------ fetching


def test_download_failure_says_what_failed(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no route\n")

    monkeypatch.setattr(neon.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError) as info:
        fetch_neon_trees(str(tmp_path / "cache"))
    message = str(info.value)
    assert "pip download deepforest==2.1.0 --no-deps --only-binary=:all:" in message
    assert "exit status 1" in message and "ERROR: no route" in message
    assert neon.WHEEL_NAME in message and "root=" in message


def test_checksum_mismatch(tmp_path, source, monkeypatch):
    def fake_download(dest_dir):
        path = os.path.join(dest_dir, neon.WHEEL_NAME)
        _fake_wheel(path, source)
        return path

    got = _fake_wheel(tmp_path / "w.whl", source)  # the same bytes
    monkeypatch.setattr(neon, "_pip_download", fake_download)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as info:
        fetch_neon_trees(str(cache))
    assert f"expected {neon.WHEEL_SHA256}, got {got}" in str(info.value)
    assert not (cache / neon.MARKER_FILE).exists() and not (cache / "OSBS_029.xml").exists()


def test_fetch_extracts_only_data_and_reuses_the_cache(tmp_path, source, monkeypatch):
    wheel = tmp_path / neon.WHEEL_NAME
    sha = _fake_wheel(wheel, source)
    monkeypatch.setattr(neon, "WHEEL_SHA256", sha)
    calls = []

    def fake_download(dest_dir):
        calls.append(dest_dir)
        target = os.path.join(dest_dir, neon.WHEEL_NAME)
        with open(wheel, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        return target

    monkeypatch.setattr(neon, "_pip_download", fake_download)
    cache = tmp_path / "cache"
    assert fetch_neon_trees(str(cache)) == str(cache)
    assert len(calls) == 1
    names = {p for p in os.listdir(cache) if not p.startswith(".")}
    assert names == {f"{stem}{ext}" for stem in FIXTURE for ext in (".png", ".xml")}
    assert json.loads((cache / neon.MARKER_FILE).read_text())["sha256"] == sha

    def no_download(dest_dir):
        raise AssertionError("pip must not run when the cache is complete")

    monkeypatch.setattr(neon, "_pip_download", no_download)
    fetch_neon_trees(str(cache))
    paths = ensure_neon_trees(cache_dir=str(cache), tile_size=TILE)
    mtime = os.path.getmtime(paths["train"][0])
    assert ensure_neon_trees(cache_dir=str(cache), tile_size=TILE) == paths
    assert os.path.getmtime(paths["train"][0]) == mtime  # the tiles are reused too


# ------------------------------------------------------------------- registration, evaluation


@pytest.fixture
def registered(tmp_path, source):
    names = register_neon_trees(root=str(source), cache_dir=str(tmp_path / "cache"), tile_size=TILE)
    yield names
    register_neon_trees()  # back to the default registration (nothing is fetched)


def test_registered_splits(registered, source, caplog):
    assert registered == ["neon_trees_train", "neon_trees_val", "neon_trees_test"]
    with caplog.at_level(logging.INFO, logger="d2kit.data.neon"):
        dicts = {name.split("_")[-1]: DatasetCatalog.get(name) for name in registered}
    assert "neon_trees_test: 2 images (whole images), 3 tree boxes + 0 ignore" in caplog.text
    # test: the two other-site images whole, exactly their XML boxes
    test = dicts["test"]
    assert [(d["width"], d["height"]) for d in test] == [(20, 20), (20, 20)]
    assert [len(d["annotations"]) for d in test] == [2, 1]
    assert all(a["iscrowd"] == 0 and a["category_id"] == 0 for d in test for a in d["annotations"])
    # val: the bottom 40 rows of the large image in 20 px tiles without overlap (3 x 2);
    # the box (20, 30, 30, 50) across the band's edge is 50 % inside the tile at (20, 40)
    val = dicts["val"]
    origins = [tuple(int(v) for v in d["file_name"].split("_x")[-1][:-4].split("_y")) for d in val]
    assert origins == [(0, 40), (20, 40), (40, 40), (0, 60), (20, 60), (40, 60)]
    (cut,) = [d for d in val if d["file_name"].endswith("_x20_y40.png")]
    assert [(a["bbox"], a["iscrowd"]) for a in cut["annotations"]] == [([0, 0, 10, 10], 0)]
    # train: tiles of the top 40 rows (overlap 5) and of the second image; none in the band
    for d in dicts["train"]:
        if YELL_LARGE in d["file_name"]:
            y0 = int(d["file_name"].split("_y")[-1][:-4])
            assert y0 + d["height"] <= 40
    # the tile's pixels are the source's
    tile = np.asarray(Image.open(cut["file_name"]))
    full = np.asarray(Image.open(source / f"{YELL_LARGE}.png"))
    np.testing.assert_array_equal(tile, full[40:60, 20:40])
    meta = MetadataCatalog.get("neon_trees_val")
    assert meta.thing_classes == ["tree"] and os.path.isfile(meta.json_file)


def _predict(evaluator, record, boxes, scores):
    h, w = record["height"], record["width"]
    instances = Instances((h, w))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])


def _free_spot(record, boxes):
    """A 2 x 2 box that touches no annotated box of ``record``."""
    for y in range(record["height"] - 2):
        for x in range(record["width"] - 2):
            if all(x + 2 <= b[0] or b[2] <= x or y + 2 <= b[1] or b[3] <= y for b in boxes):
                return [x, y, x + 2, y + 2]
    raise AssertionError("no free spot")


@pytest.mark.parametrize("on_ignore_region", [True, False])
def test_coco_eval_ignores_detections_on_ignore_regions(registered, tmp_path, on_ignore_region):
    """Perfect detections plus one top-scoring extra detection: on an ignore region it is
    neither a true nor a false positive (AP stays 100); on background it is a false positive."""
    records = DatasetCatalog.get("neon_trees_train")
    evaluator = COCOEvaluator("neon_trees_train", output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    crowd_record = next(r for r in records if any(a["iscrowd"] for a in r["annotations"]))
    for record in records:
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in record["annotations"])]
        keep = [b for b, a in zip(xyxy, record["annotations"]) if not a["iscrowd"]]
        boxes, scores = list(keep), [0.9] * len(keep)
        if record is crowd_record:
            crowd = next(b for b, a in zip(xyxy, record["annotations"]) if a["iscrowd"])
            boxes.append(crowd if on_ignore_region else _free_spot(record, xyxy))
            scores.append(1.0)
        _predict(evaluator, record, boxes, scores)
    ap = evaluator.evaluate()["bbox"]["AP"]
    assert ap == pytest.approx(100.0) if on_ignore_region else ap < 99.0


def test_training_mapper_drops_ignore_regions(registered):
    (record,) = [r for r in DatasetCatalog.get("neon_trees_train") if r["image_id"] == 1]
    record = dict(record, annotations=[*record["annotations"]])
    record["annotations"].append(dict(record["annotations"][0], iscrowd=1))
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (20,), 20, "none"
    out = DatasetMapper(cfg, is_train=True)(record)
    positives = [a for a in record["annotations"] if not a["iscrowd"]]
    assert len(out["instances"]) == len(positives)


# -------------------------------------------------------------------------------- augmentation


def test_rotate90_maps_a_box_exactly():
    # a 4 x 6 (height x width) image; the box (x0, y0, x1, y1) = (1, 0, 3, 2) covers columns 1-2
    # of rows 0-1. Rotated 90 degrees counter-clockwise the image is 6 x 4 and (x, y) goes to
    # (y, 6 - x): the box becomes (0, 3, 2, 5), i.e. rows 3-4 of columns 0-1.
    image = np.zeros((4, 6), np.uint8)
    image[0:2, 1:3] = 1
    t = Rotate90Transform(1, 4, 6)
    np.testing.assert_array_equal(t.apply_box(np.array([[1.0, 0, 3, 2]])), [[0, 3, 2, 5]])
    rotated = t.apply_image(image)
    assert rotated.shape == (6, 4)
    np.testing.assert_array_equal(np.argwhere(rotated), [[3, 0], [3, 1], [4, 0], [4, 1]])
    for k in (1, 2, 3):  # the pixels' bounding box equals the mapped box for every k
        t = Rotate90Transform(k, 4, 6)
        rows, cols = np.nonzero(t.apply_image(image))
        pixel_box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        np.testing.assert_array_equal(t.apply_box(np.array([[1.0, 0, 3, 2]]))[0], pixel_box)
        back = t.inverse()
        np.testing.assert_array_equal(back.apply_image(t.apply_image(image)), image)
        np.testing.assert_allclose(back.apply_box(t.apply_box(np.array([[1.0, 0, 3, 2]]))),
                                   [[1, 0, 3, 2]])  # fmt: skip


def test_overhead_aug_config():
    cfg = get_cfg()
    assert build_overhead_augmentation(cfg) == []  # no key: nothing added
    add_d2kit_config(cfg)
    assert build_overhead_augmentation(cfg) == []  # off by default
    cfg.INPUT.OVERHEAD_AUG.ENABLED = True
    augs = build_overhead_augmentation(cfg)
    # Detectron2's default INPUT.RANDOM_FLIP already flips horizontally
    assert [type(a) for a in augs] == [T.RandomFlip, RandomRotation90, T.RandomBrightness,
                                       T.RandomContrast, RandomSaturationFormat]  # fmt: skip
    assert augs[0].vertical and not augs[0].horizontal
    cfg.INPUT.RANDOM_FLIP, cfg.INPUT.OVERHEAD_AUG.SATURATION = "none", ()
    assert [type(a) for a in build_overhead_augmentation(cfg)][:2] == [T.RandomFlip, T.RandomFlip]
    cfg.INPUT.OVERHEAD_AUG.CONTRAST = (1.2, 0.8)
    with pytest.raises(ValueError, match="CONTRAST"):
        build_overhead_augmentation(cfg)


def test_overhead_aug_keeps_boxes_on_their_pixels():
    """Through Detectron2's AugmentationList: a bright square stays inside its mapped box."""
    cfg = get_cfg()
    add_d2kit_config(cfg)
    cfg.INPUT.OVERHEAD_AUG.ENABLED = True
    image = np.zeros((20, 30, 3), np.uint8)
    image[2:8, 5:9] = 200
    np.random.seed(0)
    for _ in range(8):
        aug_input = T.AugInput(image.copy(), boxes=np.array([[5.0, 2, 9, 8]]))
        T.AugmentationList(build_overhead_augmentation(cfg))(aug_input)
        x0, y0, x1, y1 = aug_input.boxes[0].astype(int)
        out = aug_input.image.max(axis=2)
        assert (out[y0:y1, x0:x1] > 100).all() and (out > 100).sum() == 24
