"""``python -m d2kit.predict``: a config of the repository on the user's images."""

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from d2kit import predict as predict_module
from d2kit.predict import PREDICTIONS_FILE, find_images, main

CONFIG = "configs/quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"


def _png(path, width, height, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the quick Faster R-CNN with random weights (seeded)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = predict_module.setup_cfg(CONFIG, [])
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


def _argv(inputs, output, weights, *extra):
    return [
        "--config-file", CONFIG, "--input", *inputs, "--output", str(output),
        "--score-threshold", "0", "MODEL.WEIGHTS", weights,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *extra,
    ]  # fmt: skip


def test_predict_writes_pictures_and_coco_json(tmp_path, weights):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a.png": (64, 48), "b.png": (40, 72)}  # (width, height)
    for seed, (name, (w, h)) in enumerate(sizes.items()):
        _png(images / name, w, h, seed)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    # a folder (the text file in it is skipped)
    main(_argv([str(images)], out, weights))
    with open(out / PREDICTIONS_FILE) as f:
        result = json.load(f)
    assert sorted(os.listdir(out)) == ["a.png", "b.png", PREDICTIONS_FILE]
    for name in ("a.png", "b.png"):
        with Image.open(out / name) as im:
            assert im.size == sizes[name]  # drawn at the image's own size
    assert [os.path.basename(i["file_name"]) for i in result["images"]] == ["a.png", "b.png"]
    by_id = {i["id"]: i for i in result["images"]}
    for i in result["images"]:
        assert (i["width"], i["height"]) == sizes[os.path.basename(i["file_name"])]
    assert result["score_threshold"] == 0.0 and result["weights"] == weights
    # synth_shapes: 3 classes, dataset ids 1..3
    assert [c["id"] for c in result["categories"]] == [1, 2, 3]
    assert {c["name"] for c in result["categories"]} == {"circle", "square", "triangle"}
    detections = result["annotations"]
    assert detections, "a random-weight model at score threshold 0 detects something"
    assert [d["id"] for d in detections] == list(range(1, len(detections) + 1))
    for d in detections:
        image = by_id[d["image_id"]]
        assert d["file_name"] == image["file_name"]
        assert d["category_id"] in (1, 2, 3) and 0.0 <= d["score"] <= 1.0
        x, y, w, h = d["bbox"]
        assert w >= 0 and h >= 0
        assert -1e-3 <= x and -1e-3 <= y
        assert x + w <= image["width"] + 1e-3 and y + h <= image["height"] + 1e-3
    # pycocotools reads it, and takes its annotations as a results list
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / PREDICTIONS_FILE))
        assert len(coco.loadRes(detections).getAnnIds()) == len(detections)
    assert len(coco.getAnnIds()) == len(detections)
    # the score threshold filters what is written
    out_high = tmp_path / "out_high"
    argv = _argv([str(images / "a.png"), str(images / "b.png")], out_high, weights)
    argv[argv.index("--score-threshold") + 1] = "0.5"
    main(argv)
    with open(out_high / PREDICTIONS_FILE) as f:
        high = json.load(f)
    assert all(d["score"] >= 0.5 for d in high["annotations"])
    assert len(high["annotations"]) == sum(d["score"] >= 0.5 for d in detections)


def test_predict_input_last_and_duplicate_stems(tmp_path, weights):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _png(tmp_path / "x" / "tile.png", 32, 32, 0)
    _png(tmp_path / "y" / "tile.png", 32, 32, 1)
    out = tmp_path / "out"
    main(
        ["--config-file", CONFIG, "--output", str(out), "--score-threshold", "0",
         "--input", str(tmp_path / "x" / "tile.png"), str(tmp_path / "*" / "tile.png"),
         "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    result = json.loads((out / PREDICTIONS_FILE).read_text())
    # the file named twice is predicted once; the same stem in two folders gets two pictures
    assert [i["visualization"] for i in result["images"]] == ["tile.png", "tile_1.png"]
    assert (out / "tile.png").is_file() and (out / "tile_1.png").is_file()


def test_find_images(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.JPG")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.tif")
    (tmp_path / "c.csv").write_text("")
    assert [os.path.basename(p) for p in find_images([str(tmp_path)])] == ["a.tif", "b.JPG"]


def test_predict_clear_errors(tmp_path, weights, capsys):
    _png(tmp_path / "a.png", 16, 16, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("")
    out = tmp_path / "out"
    cases = [
        (_argv([str(tmp_path / "missing.png")], out, weights), r"input not found: .*missing.png"),
        (_argv([str(empty)], out, weights), r"no images found in folder .*empty"),
        (_argv([str(tmp_path / "*.jpg")], out, weights), r"pattern matches no file"),
        (
            _argv([str(tmp_path / "a.png")], out, str(tmp_path / "nope.pth")),
            r"MODEL.WEIGHTS file not found: .*nope.pth",
        ),
        (_argv([str(tmp_path / "a.png")], out, ""), r"MODEL.WEIGHTS is empty"),
        (_argv([str(tmp_path / "a.png")], tmp_path, weights), r"would overwrite the input image"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err
        assert re.search(message, err), err
    assert not out.exists()  # nothing written before the inputs are checked
