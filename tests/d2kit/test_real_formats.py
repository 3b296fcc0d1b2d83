import json
import os
import warnings

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from d2kit.data import (
    load_carpk,
    load_crowdhuman_odgt,
    load_sku110k_csv,
    register_carpk,
    register_crowdhuman,
    register_sku110k,
)
from d2kit.data.real import ImageSizeWarning


def _image(path, width, height, fmt, orientation=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    kwargs = {}
    if orientation is not None:  # EXIF orientation tag (6: rotate 90° on display)
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path, fmt, **kwargs)


@pytest.fixture
def crowdhuman(tmp_path):
    root = tmp_path / "CrowdHuman"
    _image(str(root / "Images" / "273271,c9db000d5146c15.jpg"), 64, 48, "JPEG")
    record = {
        "ID": "273271,c9db000d5146c15",
        "gtboxes": [
            {"tag": "person", "vbox": [1, 2, 10, 20], "fbox": [0, 0, 12, 30], "extra": {}},
            {"tag": "person", "vbox": [5, 5, 8, 8], "extra": {"ignore": 1}},
            {"tag": "mask", "vbox": [30, 10, 20, 20], "extra": {"ignore": 1}},
            {"tag": "person", "vbox": [3, 3, 0, 5], "extra": {}},  # zero width: dropped
        ],
    }
    (root / "annotation_val.odgt").write_text(json.dumps(record) + "\n\n")
    return root


def test_crowdhuman_visible_boxes_and_ignore_regions(crowdhuman):
    (d,) = load_crowdhuman_odgt(str(crowdhuman / "annotation_val.odgt"), str(crowdhuman / "Images"))
    assert (d["height"], d["width"]) == (48, 64)
    boxes = [a["bbox"] for a in d["annotations"]]
    assert boxes == [[1, 2, 11, 22], [5, 5, 13, 13], [30, 10, 50, 30]]  # vbox, xywh -> xyxy
    assert [a["iscrowd"] for a in d["annotations"]] == [0, 1, 1]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])


def test_crowdhuman_register(crowdhuman):
    (name,) = register_crowdhuman(str(crowdhuman), splits=("val",))
    assert name == "crowdhuman_val" and len(DatasetCatalog.get(name)) == 1
    assert MetadataCatalog.get(name).thing_classes == ["person"]


def test_crowdhuman_bad_files(tmp_path, crowdhuman):
    with pytest.raises(FileNotFoundError, match="annotation_train.odgt"):
        load_crowdhuman_odgt(str(tmp_path / "annotation_train.odgt"), str(tmp_path))
    bad = tmp_path / "bad.odgt"
    bad.write_text('{"ID": "x", "gtboxes": [{"tag": "person"}]}\n')
    with pytest.raises(ValueError, match=r"bad.odgt:1: malformed CrowdHuman record.*vbox"):
        load_crowdhuman_odgt(str(bad), str(tmp_path))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="expected one JSON object per line"):
        load_crowdhuman_odgt(str(bad), str(tmp_path))
    missing_image = tmp_path / "noimg.odgt"
    missing_image.write_text('{"ID": "nope", "gtboxes": []}\n')
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_crowdhuman_odgt(str(missing_image), str(crowdhuman / "Images"))


@pytest.fixture
def sku(tmp_path):
    root = tmp_path / "SKU110K"
    (root / "annotations").mkdir(parents=True)
    rows = [
        "test_0.jpg,10,20,30,40,object,100,80",
        "test_0.jpg,50,20,70,60,object,100,80",
        "test_1.jpg,1,1,5,5,object,32,32",
        "test_1.jpg,8,8,8,12,object,32,32",  # zero width: dropped
    ]
    (root / "annotations" / "annotations_test.csv").write_text("\n".join(rows) + "\n")
    _image(str(root / "images" / "test_0.jpg"), 100, 80, "JPEG")
    _image(str(root / "images" / "test_1.jpg"), 32, 32, "JPEG")
    return root


def test_sku110k_rows_grouped_by_image(sku):
    dicts = load_sku110k_csv(str(sku / "annotations" / "annotations_test.csv"), str(sku / "images"))
    assert [d["image_id"] for d in dicts] == ["test_0.jpg", "test_1.jpg"]
    assert (dicts[0]["height"], dicts[0]["width"]) == (80, 100)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[10, 20, 30, 40], [50, 20, 70, 60]]
    assert len(dicts[1]["annotations"]) == 1
    (name,) = register_sku110k(str(sku), splits=("test",))
    assert len(DatasetCatalog.get(name)) == 2


def test_sku110k_bad_files(tmp_path, sku):
    with pytest.raises(FileNotFoundError, match="annotations_val.csv"):
        load_sku110k_csv(str(sku / "annotations" / "annotations_val.csv"), "")
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,1,2,3\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: malformed SKU-110K row.*image_name,x1"):
        load_sku110k_csv(str(bad), "")
    bad.write_text("a.jpg,1,2,x,4,object,10,10\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        load_sku110k_csv(str(bad), "")


@pytest.fixture
def carpk(tmp_path):
    root = tmp_path / "CARPK"
    (root / "ImageSets").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "test.txt").write_text("20160331_NTU_00001\n")
    (root / "Annotations" / "20160331_NTU_00001.txt").write_text("1 2 11 12 1\n20 20 40 30 1\n")
    _image(str(root / "Images" / "20160331_NTU_00001.png"), 72, 40, "PNG")
    return root


def test_carpk(carpk):
    (d,) = load_carpk(str(carpk), "test")
    assert (d["height"], d["width"]) == (40, 72)
    assert [a["bbox"] for a in d["annotations"]] == [[1, 2, 11, 12], [20, 20, 40, 30]]
    (name,) = register_carpk(str(carpk), splits=("test",))
    assert name == "carpk_test" and MetadataCatalog.get(name).thing_classes == ["car"]


def test_carpk_bad_files(carpk):
    with pytest.raises(FileNotFoundError, match=r"split 'train'.*train.txt"):
        load_carpk(str(carpk), "train")
    (carpk / "Annotations" / "20160331_NTU_00001.txt").write_text("1 2 11\n")
    with pytest.raises(ValueError, match=r"20160331_NTU_00001.txt:1: malformed CARPK box"):
        load_carpk(str(carpk), "test")
    (carpk / "ImageSets" / "test.txt").write_text("missing_id\n")
    with pytest.raises(FileNotFoundError, match="missing_id.txt"):
        load_carpk(str(carpk), "test")


# ---------------------------------------------------------------- bad input names file and line


def test_empty_files_raise_naming_the_file(tmp_path, crowdhuman, sku, carpk):
    # used to load as zero images; training then failed with "Dataset ... is empty!"
    for text in ("", "\n\n"):
        odgt = tmp_path / "annotation_empty.odgt"
        odgt.write_text(text)
        with pytest.raises(ValueError, match=r"annotation_empty.odgt: no records \(empty file\)"):
            load_crowdhuman_odgt(str(odgt), str(crowdhuman / "Images"))
        csv_file = tmp_path / "annotations_empty.csv"
        csv_file.write_text(text)
        with pytest.raises(ValueError, match=r"annotations_empty.csv: no rows \(empty file\)"):
            load_sku110k_csv(str(csv_file), str(sku / "images"))
        (carpk / "ImageSets" / "test.txt").write_text(text)
        with pytest.raises(ValueError, match=r"ImageSets/test.txt: no image ids \(empty file\)"):
            load_carpk(str(carpk), "test")


def _csv(tmp_path, *rows):
    path = tmp_path / "annotations_x.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_sku110k_boxes_outside_the_stated_size_name_the_line(tmp_path, sku):
    images = str(sku / "images")
    # the height 80 cut short to 8: without the header read, the boxes of line 2 lie below the
    # stated image
    path = _csv(
        tmp_path, "test_0.jpg,10,2,30,7,object,100,8", "test_0.jpg,10,20,30,40,object,100,8"
    )
    with pytest.raises(ValueError, match=r"annotations_x.csv:2: box .* outside the stated image "
                                         r"size 100x8 .* truncated"):  # fmt: skip
        load_sku110k_csv(path, images, check_image_sizes=False)
    # with it (the default), the header's 100x80 is the size and the boxes are inside
    with pytest.warns(ImageSizeWarning, match=r"annotations_x.csv:1: the csv states 100x8"):
        (d,) = load_sku110k_csv(path, images)
    assert (d["width"], d["height"]) == (100, 80) and len(d["annotations"]) == 2
    path = _csv(tmp_path, "test_1.jpg,-2.5,1,5,5,object,32,32")
    with pytest.raises(ValueError, match=r"annotations_x.csv:1: box"):
        load_sku110k_csv(path, images)
    # a pixel of rounding is fine
    path = _csv(tmp_path, "test_1.jpg,-1,-0.5,33,32.9,object,32,32")
    assert load_sku110k_csv(path, images)[0]["annotations"][0]["bbox"] == [-1, -0.5, 33, 32.9]


def test_sku110k_rows_of_one_image_must_state_one_size(tmp_path, sku):
    path = _csv(tmp_path, "test_0.jpg,1,1,5,5,object,100,80", "test_0.jpg,1,1,5,5,object,100,8")
    with pytest.raises(ValueError, match=r"annotations_x.csv:2: test_0.jpg is stated as 100x8 "
                                         r"here but 100x80 at line 1"):  # fmt: skip
        load_sku110k_csv(path, str(sku / "images"))


def test_sku110k_stated_size_is_checked_against_the_image_header(tmp_path, sku):
    images = str(sku / "images")
    # 101 px wide in the csv, 100 px in the file: the header wins, with a warning naming the line
    path = _csv(tmp_path, "test_1.jpg,1,1,5,5,object,32,32", "test_0.jpg,1,1,5,5,object,101,80")
    expected = (
        r"annotations_x.csv:2: the csv states 101x80 for .*test_0.jpg, whose header says 100x80"
    )
    with pytest.warns(ImageSizeWarning, match=expected):
        dicts = load_sku110k_csv(path, images)
    assert [(d["width"], d["height"]) for d in dicts] == [(32, 32), (100, 80)]
    # the option that skips the header read trusts the csv (and still checks that the image
    # exists)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dicts = load_sku110k_csv(path, images, check_image_sizes=False)
    assert [(d["width"], d["height"]) for d in dicts] == [(32, 32), (101, 80)]
    (name,) = register_sku110k(str(sku), splits=("test",), check_image_sizes=False)
    assert len(DatasetCatalog.get(name)) == 2


def test_sku110k_official_test2_width_quirk(tmp_path):
    """The official annotations_test.csv states 427x367 for test2.jpg, a 426x367 JPEG."""
    images = tmp_path / "images"
    _image(str(images / "test2.jpg"), 426, 367, "JPEG")
    _image(str(images / "test1.jpg"), 64, 48, "JPEG")
    rows = [
        "test1.jpg,1,1,20,20,object,64,48",
        "test2.jpg,10,20,120,200,object,427,367",
        "test2.jpg,300,0,427,366,object,427,367",  # to the stated edge: 1 px over the real one
        "test2.jpg,0,100,50,367,object,427,367",
    ]
    path = _csv(tmp_path, *rows)
    with pytest.warns(ImageSizeWarning) as record:
        dicts = load_sku110k_csv(path, str(images))
    assert len(record) == 1  # once per image, not once per row
    message = str(record[0].message)
    assert "annotations_x.csv:2: the csv states 427x367 for" in message
    assert "test2.jpg, whose header says 426x367" in message and "using the header's" in message
    d = dicts[1]
    assert (d["image_id"], d["width"], d["height"]) == ("test2.jpg", 426, 367)
    assert [a["bbox"] for a in d["annotations"]] == [
        [10, 20, 120, 200], [300, 0, 427, 366], [0, 100, 50, 367]
    ]  # fmt: skip
    # a box more than box_tolerance outside the real image is still an error, naming its line
    # and both sizes
    path = _csv(tmp_path, *rows, "test2.jpg,400,0,427.5,10,object,427,367")
    with pytest.warns(ImageSizeWarning):
        with pytest.raises(ValueError, match=r"annotations_x.csv:5: box .* lies outside the image "
                                             r"size 426x367 \(its header; the csv states "
                                             r"427x367\) .* by more than 1 px"):  # fmt: skip
            load_sku110k_csv(path, str(images))
    # a larger tolerance accepts it
    with pytest.warns(ImageSizeWarning):
        assert len(load_sku110k_csv(path, str(images), box_tolerance=2.0)[1]["annotations"]) == 4


def test_sku110k_size_follows_the_exif_orientation(tmp_path, sku):
    # stored 40 x 30, displayed (and read by detectron2's mapper) 30 x 40
    _image(str(sku / "images" / "rot.jpg"), 40, 30, "JPEG", orientation=6)
    (d,) = load_sku110k_csv(_csv(tmp_path, "rot.jpg,1,1,5,5,object,30,40"), str(sku / "images"))
    assert (d["width"], d["height"]) == (30, 40)
    with pytest.warns(ImageSizeWarning, match="whose header says 30x40"):
        path = _csv(tmp_path, "rot.jpg,1,1,5,5,object,40,30")
        (d,) = load_sku110k_csv(path, str(sku / "images"))
    assert (d["width"], d["height"]) == (30, 40)


def test_missing_images_name_the_annotation_file_and_line(tmp_path, sku, crowdhuman, carpk):
    path = _csv(tmp_path, "test_0.jpg,1,1,5,5,object,100,80", "gone.jpg,1,1,5,5,object,100,80")
    for check in (True, False):
        with pytest.raises(FileNotFoundError, match=r"annotations_x.csv:2: image not found: "
                                                    r".*gone.jpg"):  # fmt: skip
            load_sku110k_csv(path, str(sku / "images"), check_image_sizes=check)
    odgt = crowdhuman / "annotation_val.odgt"
    odgt.write_text(odgt.read_text().strip() + "\n" + '{"ID": "nope", "gtboxes": []}\n')
    with pytest.raises(FileNotFoundError, match=r"annotation_val.odgt:2: image not found: .*nope"):
        load_crowdhuman_odgt(str(odgt), str(crowdhuman / "Images"))
    (carpk / "ImageSets" / "test.txt").write_text("20160331_NTU_00001\n")
    os.remove(carpk / "Images" / "20160331_NTU_00001.png")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/test.txt:1: image not found"):
        load_carpk(str(carpk), "test")


def test_crowdhuman_missing_image_names_the_odgt_file_and_line(tmp_path, crowdhuman):
    """The error names the image path and the ``.odgt`` line of the record that needs it (blank
    lines count: the line number is the file's)."""
    odgt = tmp_path / "annotation_train.odgt"
    present = (crowdhuman / "annotation_val.odgt").read_text().strip()
    missing = json.dumps({"ID": "284193,faa9000f2678b5e", "gtboxes": []})
    odgt.write_text("\n".join([present, "", present, missing, present]) + "\n")
    images = crowdhuman / "Images"
    with pytest.raises(FileNotFoundError) as info:
        load_crowdhuman_odgt(str(odgt), str(images))
    message = str(info.value)
    assert message.startswith(f"{odgt}:4: image not found: ")
    assert message.endswith(os.path.join(str(images), "284193,faa9000f2678b5e.jpg"))
    # the same through the registered dataset (the error surfaces at DatasetCatalog.get)
    (odgt.parent / "Images").symlink_to(images)
    (name,) = register_crowdhuman(str(odgt.parent), splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"annotation_train.odgt:4: image not found"):
        DatasetCatalog.get(name)
