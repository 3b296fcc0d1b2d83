import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_utils

import d2kit  # noqa: F401
from d2kit.data import synthetic
from d2kit.data.synthetic import SYNTH_SPECS, ensure_synthetic, generate_image


@pytest.mark.parametrize("name", ["synth_shapes_train", "synth_crowd_val"])
def test_generation_is_deterministic(name):
    spec = SYNTH_SPECS[name]
    a_img, a_objs = generate_image(spec, 3)
    b_img, b_objs = generate_image(spec, 3)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_objs == b_objs
    c_img, _ = generate_image(spec, 4)
    assert not np.array_equal(a_img, c_img), "different indices must give different images"


def test_train_and_val_differ():
    train_img, _ = generate_image(SYNTH_SPECS["synth_shapes_train"], 0)
    val_img, _ = generate_image(SYNTH_SPECS["synth_shapes_val"], 0)
    assert not np.array_equal(train_img, val_img), "held-out split must not repeat training"


def _pairwise_iou(boxes):
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area[:, None] + area[None, :] - inter)


@pytest.mark.parametrize("index", range(5))
def test_shapes_are_valid(index):
    spec = SYNTH_SPECS["synth_shapes_val"]
    image, objects = generate_image(spec, index)
    assert image.shape == (spec.image_size, spec.image_size, 3) and image.dtype == np.uint8
    assert spec.min_objects <= len(objects) <= spec.max_objects
    boxes = np.array([o["bbox"] for o in objects])
    assert (boxes >= 0).all() and (boxes <= spec.image_size).all(), "boxes inside the image"
    assert (boxes[:, 2:] - boxes[:, :2] >= 4).all()
    iou = _pairwise_iou(boxes)
    np.fill_diagonal(iou, 0)
    assert (iou == 0).all(), "shapes never overlap"
    for obj in objects:
        assert 0 <= obj["category_id"] < len(spec.classes)
        # the mask (rasterised polygon) is consistent with the box
        rle = mask_utils.frPyObjects([obj["polygon"]], spec.image_size, spec.image_size)
        mask = mask_utils.decode(mask_utils.merge(rle))
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = obj["bbox"]
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
        assert obj["area"] == pytest.approx(mask.sum(), rel=0.15)


def test_crowd_is_dense_and_overlapping():
    spec = SYNTH_SPECS["synth_crowd_val"]
    counts, any_overlap = [], False
    for index in range(4):
        _, objects = generate_image(spec, index)
        counts.append(len(objects))
        boxes = np.array([o["bbox"] for o in objects])
        iou = _pairwise_iou(boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= spec.max_overlap + 1e-9
        any_overlap |= bool((iou > 0.05).any())
        assert (boxes >= 0).all() and (boxes <= spec.image_size).all()
    assert min(counts) >= 50 and max(counts) <= 300, counts
    assert any_overlap, "crowded scenes must contain overlapping objects"


@pytest.fixture
def tiny_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("D2KIT_DATASETS", str(tmp_path / "data"))
    tiny = dataclasses.replace(SYNTH_SPECS["synth_shapes_val"], num_images=5)
    monkeypatch.setitem(SYNTH_SPECS, "synth_shapes_val", tiny)
    return tiny


def test_ensure_writes_coco_and_caches(tiny_specs, tmp_path):
    json_file, image_root = ensure_synthetic("synth_shapes_val")
    assert json_file.startswith(str(tmp_path / "data"))
    coco = json.load(open(json_file))
    assert len(coco["images"]) == 5 and len(os.listdir(image_root)) == 5
    assert [c["name"] for c in coco["categories"]] == list(tiny_specs.classes)
    img = cv2.imread(os.path.join(image_root, coco["images"][0]["file_name"]))
    np.testing.assert_array_equal(img, generate_image(tiny_specs, 0)[0])
    for ann in coco["annotations"]:
        assert ann["segmentation"] and ann["iscrowd"] == 0 and ann["bbox"][2] > 0
    mtime = os.path.getmtime(json_file)
    ensure_synthetic("synth_shapes_val")
    assert os.path.getmtime(json_file) == mtime, "a current cache is reused, not regenerated"


def test_stale_cache_is_regenerated(tiny_specs, monkeypatch):
    json_file, _ = ensure_synthetic("synth_shapes_val")
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    ensure_synthetic("synth_shapes_val")
    info = json.load(open(json_file))["info"]
    assert info["generator_version"] == synthetic.GENERATOR_VERSION


def test_subset_holds_first_images(tiny_specs):
    sub_json, _ = ensure_synthetic("synth_shapes_val", subset=2)
    coco = json.load(open(sub_json))
    assert [img["id"] for img in coco["images"]] == [1, 2]
    assert {a["image_id"] for a in coco["annotations"]} <= {1, 2}


def test_unknown_split_is_a_clear_error():
    with pytest.raises(KeyError, match="known"):
        ensure_synthetic("synth_nothing")


@pytest.mark.parametrize(
    "name, num_classes, masks",
    [("synth_shapes_train", 3, True), ("synth_shapes_val", 3, True),
     ("synth_crowd_train", 2, False), ("synth_crowd_val", 2, False)],
)  # fmt: skip
def test_registered_in_catalogs(name, num_classes, masks):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == num_classes and meta.evaluator_type == "coco"
    assert SYNTH_SPECS[name].kind == ("shapes" if masks else "crowd")


def test_mini_split_loads_through_the_catalog():
    dicts = DatasetCatalog.get("synth_shapes_val_mini")
    assert len(dicts) == 8
    first = dicts[0]
    assert first["height"] == first["width"] == 128 and os.path.isfile(first["file_name"])
    ann = first["annotations"][0]
    assert 0 <= ann["category_id"] < 3 and len(ann["segmentation"][0]) >= 6
    assert os.path.isfile(MetadataCatalog.get("synth_shapes_val_mini").json_file)
