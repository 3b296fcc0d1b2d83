"""The RefCOCO loader on small files in the ``refer`` layout, written here (Python 2 pickles)."""

import copy
import json
import pickle
import struct

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from d2kit.data import load_refcoco, ref_in_split, refcoco_splits, register_refcoco


def _py2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2's cPickle writes it: ``str`` as (SHORT_)BINSTRING bytes.

    ``bytes`` values play Python 2 ``str`` (8-bit, no encoding), ``str`` values Python 2
    ``unicode``. Supports dict, list, int, float, None.
    """

    def enc(o) -> bytes:
        if o is None:
            return b"N"
        if isinstance(o, bool):
            return b"\x88" if o else b"\x89"
        if isinstance(o, int):
            if 0 <= o < 256:
                return b"K" + bytes([o])
            return b"J" + struct.pack("<i", o)
        if isinstance(o, float):
            return b"G" + struct.pack(">d", o)
        if isinstance(o, bytes):
            if len(o) < 256:
                return b"U" + bytes([len(o)]) + o
            return b"T" + struct.pack("<i", len(o)) + o
        if isinstance(o, str):
            data = o.encode("utf-8")
            return b"X" + struct.pack("<I", len(data)) + data
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def _b(o):
    """Turn every str of a nested structure into bytes (a Python 2 ``str``)."""
    if isinstance(o, str):
        return o.encode("utf-8")
    if isinstance(o, dict):
        return {_b(k): _b(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_b(v) for v in o]
    return o


def _sent(sent_id, text):
    return {"tokens": text.split(), "raw": text.upper(), "sent_id": sent_id, "sent": text}


def _ref(ref_id, ann_id, image_id, split, category_id, sentences):
    return {
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "ann_id": ann_id,
        "ref_id": ref_id,
        "image_id": image_id,
        "split": split,
        "category_id": category_id,
        "sentences": sentences,
    }


INSTANCES = {
    "info": {},
    "licenses": [],
    "images": [
        {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427},
        {"id": 98304, "file_name": "COCO_train2014_000000098304.jpg", "height": 424, "width": 640},
        {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "height": 100, "width": 200},
        {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 50, "width": 60},
    ],
    "annotations": [
        {"id": 1719310, "image_id": 581857, "category_id": 1, "bbox": [10, 20, 30, 40],
         "area": 1200, "iscrowd": 0, "segmentation": [[10, 20, 40, 20, 40, 60, 10, 60]]},
        {"id": 5, "image_id": 581857, "category_id": 3, "bbox": [100, 100, 50, 25],
         "area": 1250, "iscrowd": 0, "segmentation": [[100, 100, 150, 100, 150, 125]]},
        {"id": 3007, "image_id": 98304, "category_id": 18,
         "bbox": [263.87, 216.88, 21.13, 15.17], "area": 320.5, "iscrowd": 0,
         "segmentation": [[1, 2, 3, 4]]},  # degenerate polygon: dropped
        {"id": 6, "image_id": 42, "category_id": 1, "bbox": [0, 0, 4, 2], "iscrowd": 1,
         "segmentation": {"size": [100, 200], "counts": [5, 2, 98, 2, 19893]}},
        {"id": 8, "image_id": 42, "category_id": 18, "bbox": [50, 10, 20, 20], "iscrowd": 0},
        {"id": 9, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0},
    ],
    # unsorted ids: contiguous ids follow the sorted ids 1, 3, 18
    "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"},
                   {"id": 3, "name": "car"}],
}  # fmt: skip

REAL_SENTENCES = [
    _sent(0, "the lady with the blue shirt"),
    _sent(1, "lady with back to us"),
    _sent(2, "blue shirt"),
]


def _unc_refs():
    return [
        _ref(0, 1719310, 581857, "train", 1, copy.deepcopy(REAL_SENTENCES)),
        _ref(1, 5, 581857, "train", 3, [_sent(3, "the car"), _sent(4, "red car")]),
        _ref(2, 3007, 98304, "testB", 18, [_sent(5, "dog on the right")]),
        _ref(3, 6, 42, "testA", 1, [_sent(6, "man left")]),
        _ref(4, 8, 42, "testAB", 18, [_sent(7, "dog in both test splits")]),
        _ref(5, 9, 7, "val", 3, [_sent(8, "small car")]),
    ]


def _write(root, dataset, split_by, refs, instances=INSTANCES, py2=True):
    data_dir = root / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    payload = _py2_pickle(_b(refs)) if py2 else pickle.dumps(refs, protocol=2)
    (data_dir / f"refs({split_by}).p").write_bytes(payload)
    (data_dir / "instances.json").write_text(json.dumps(instances))
    return root


@pytest.fixture
def refer_root(tmp_path):
    return _write(tmp_path / "refer_data", "refcoco", "unc", _unc_refs())


@pytest.fixture(autouse=True)
def _clean_catalog():
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_py2_pickle_writer_matches_python2_opcodes():
    data = _py2_pickle(_b({"sent": "a"}))
    assert data == b"\x80\x02}(U\x04sentU\x01au."
    assert pickle.loads(data, encoding="latin1") == {"sent": "a"}
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with Latin-1 bytes
        pickle.loads(_py2_pickle({b"s": b"caf\xe9"}))


def test_train_split_from_python2_pickle(refer_root):
    dicts = load_refcoco(str(refer_root), "refcoco", "unc", "train")
    assert [d["image_id"] for d in dicts] == [581857]
    (d,) = dicts
    assert d["file_name"] == str(
        refer_root / "images/mscoco/images/train2014/COCO_train2014_000000581857.jpg"
    )
    assert (d["height"], d["width"]) == (640, 427)
    assert [r["ref_id"] for r in d["refs"]] == [0, 1], "refs grouped per image, file order"
    ref = d["refs"][0]
    assert ref["ann_id"] == 1719310 and ref["category_id"] == 0
    assert [s["sent_id"] for s in ref["sentences"]] == [0, 1, 2]
    assert ref["sentences"][0]["sent"] == "the lady with the blue shirt"
    assert ref["sentences"][0]["tokens"] == ["the", "lady", "with", "the", "blue", "shirt"]
    assert ref["sentences"][0]["raw"] == "THE LADY WITH THE BLUE SHIRT"
    assert all(isinstance(t, str) for s in ref["sentences"] for t in s["tokens"])
    assert "context_ann_ids" not in ref, "passed through only when the file has it"
    assert d["refs"][1]["category_id"] == 1  # car: dataset id 3 -> contiguous 1


def test_annotations_in_detectron2_format(refer_root):
    (d,) = load_refcoco(str(refer_root), "refcoco", "unc", "train")
    person, car = d["annotations"]
    assert person["bbox"] == [10, 20, 40, 60] and person["bbox_mode"] == BoxMode.XYXY_ABS
    assert person["id"] == 1719310 and person["category_id"] == 0 and person["iscrowd"] == 0
    assert person["segmentation"] == [[10, 20, 40, 20, 40, 60, 10, 60]]
    assert car["bbox"] == [100, 100, 150, 125] and car["category_id"] == 1
    dog_image, _ = load_refcoco(str(refer_root), "refcoco", "unc", "testB")
    (dog,) = dog_image["annotations"]
    assert dog["bbox"] == pytest.approx([263.87, 216.88, 285.0, 232.05])
    assert dog["category_id"] == 2 and "segmentation" not in dog, "degenerate polygon dropped"
    (crowd_image,) = load_refcoco(str(refer_root), "refcoco", "unc", "testA")
    rle = crowd_image["annotations"][0]
    assert rle["iscrowd"] == 1 and isinstance(rle["segmentation"]["counts"], (str, bytes))
    assert "segmentation" not in crowd_image["annotations"][1]


def test_split_semantics(refer_root):
    root = str(refer_root)
    test_a = load_refcoco(root, "refcoco", "unc", "testA")
    test_b = load_refcoco(root, "refcoco", "unc", "testB")
    # "testAB" is in both (REFER: split[-1] in ref["split"]); "test" holds every test ref
    assert [r["ref_id"] for d in test_a for r in d["refs"]] == [3, 4]
    assert [r["ref_id"] for d in test_b for r in d["refs"]] == [2, 4]
    assert [r["ref_id"] for d in load_refcoco(root, "refcoco", "unc", "test")
            for r in d["refs"]] == [2, 3, 4]  # fmt: skip
    assert [d["image_id"] for d in load_refcoco(root, "refcoco", "unc", "val")] == [7]
    assert load_refcoco(root, "refcoco", "unc", "testC") == []
    assert ref_in_split("testAB", "testA") and ref_in_split("testAB", "testB")
    assert not ref_in_split("testB", "testA") and not ref_in_split("train", "test")
    assert ref_in_split("testA", "test") and ref_in_split("test", "test")
    assert not ref_in_split("trainval", "train") and ref_in_split("val", "val")
    assert refcoco_splits(["train", "testAB", "val", "testA"]) == ["train", "val", "testA", "testB"]
    assert refcoco_splits(["test", "val", "train"]) == ["train", "val", "test"]
    assert refcoco_splits(["train", "minival"]) == ["train", "minival"]


def test_register_names_metadata_and_idempotence(refer_root, tmp_path):
    names = register_refcoco(str(refer_root))
    assert names == ["refcoco_unc_train", "refcoco_unc_val", "refcoco_unc_testA",
                     "refcoco_unc_testB"]  # fmt: skip
    meta = MetadataCatalog.get("refcoco_unc_testA")
    assert meta.thing_classes == ["person", "car", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 18: 2}
    assert meta.evaluator_type == "refcoco" and meta.refer_split == "testA"
    assert meta.refs_file == str(refer_root / "refcoco" / "refs(unc).p")
    assert meta.instances_file == str(refer_root / "refcoco" / "instances.json")
    assert meta.image_root == str(refer_root / "images/mscoco/images/train2014")
    assert [d["image_id"] for d in DatasetCatalog.get("refcoco_unc_testB")] == [98304, 42]
    assert register_refcoco(str(refer_root)) == names, "same files: a no-op"
    other = _write(tmp_path / "other", "refcoco", "unc", _unc_refs())
    with pytest.raises(ValueError, match=r"'refcoco_unc_train' is already registered.*remove"):
        register_refcoco(str(other))
    assert register_refcoco(str(other), name_prefix="my_refcoco")[0] == "my_refcoco_train"


def test_refcocog_umd_and_google(tmp_path):
    refs = [
        _ref(0, 1719310, 581857, "train", 1, [_sent(0, "a woman")]),
        _ref(1, 3007, 98304, "val", 18, [_sent(1, "a dog")]),
        _ref(2, 9, 7, "test", 3, [_sent(2, "a car")]),
    ]
    root = _write(tmp_path, "refcocog", "umd", refs)
    assert register_refcoco(str(root), "refcocog", "umd") == [
        "refcocog_umd_train", "refcocog_umd_val", "refcocog_umd_test"
    ]  # fmt: skip
    (test,) = DatasetCatalog.get("refcocog_umd_test")
    assert test["image_id"] == 7 and test["refs"][0]["sentences"][0]["sent"] == "a car"
    google = [dict(r, split="train" if r["ref_id"] != 1 else "val") for r in refs]
    _write(tmp_path, "refcocog", "google", google)
    assert register_refcoco(str(root), "refcocog", "google") == [
        "refcocog_google_train", "refcocog_google_val"
    ]  # fmt: skip


def test_non_ascii_python2_strings(tmp_path):
    refs = _b(_unc_refs())
    refs[0][b"sentences"][1][b"sent"] = "caf\u00e9 lady".encode()  # UTF-8 bytes in a py2 str
    root = _write(tmp_path / "utf8", "refcoco", "unc", [])
    (root / "refcoco" / "refs(unc).p").write_bytes(_py2_pickle(refs))
    (d,) = load_refcoco(str(root), "refcoco", "unc", "train")
    assert d["refs"][0]["sentences"][1]["sent"] == "caf\u00e9 lady"
    refs[0][b"sentences"][1][b"sent"] = b"caf\xe9 lady"  # Latin-1 bytes: not UTF-8
    (root / "refcoco" / "refs(unc).p").write_bytes(_py2_pickle(refs))
    (d,) = load_refcoco(str(root), "refcoco", "unc", "train")
    assert d["refs"][0]["sentences"][1]["sent"] == "caf\u00e9 lady"


def test_python3_pickle_with_bytes_fields(tmp_path):
    refs = _unc_refs()
    refs[0]["sentences"][0]["tokens"] = [b"the", b"lady"]
    root = _write(tmp_path, "refcoco", "unc", refs, py2=False)
    (d,) = load_refcoco(str(root), "refcoco", "unc", "train")
    assert d["refs"][0]["sentences"][0]["tokens"] == ["the", "lady"]


def test_missing_files(refer_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\).p"):
        load_refcoco(str(refer_root), "refcoco", "umd", "train")
    with pytest.raises(FileNotFoundError, match=r"refcoco\+/refs\(unc\).p"):
        register_refcoco(str(refer_root), "refcoco+")
    (refer_root / "refcoco" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances.json"):
        load_refcoco(str(refer_root), "refcoco", "unc", "train")


def test_malformed_pickle(refer_root):
    refs_file = refer_root / "refcoco" / "refs(unc).p"
    refs_file.write_bytes(b"\x80\x02}(U\x04sent")  # truncated
    with pytest.raises(ValueError, match=r"refs\(unc\).p: malformed refs pickle"):
        load_refcoco(str(refer_root), "refcoco", "unc", "train")
    refs_file.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="malformed refs pickle"):
        register_refcoco(str(refer_root))
    refs_file.write_bytes(_py2_pickle({b"refs": []}))
    with pytest.raises(ValueError, match="holds a dict; expected a list of dicts"):
        load_refcoco(str(refer_root), "refcoco", "unc", "train")


@pytest.mark.parametrize(
    "field", ["ref_id", "ann_id", "image_id", "split", "sentences", "category_id"]
)
def test_missing_ref_field(tmp_path, field):
    refs = _unc_refs()
    del refs[2][field]
    root = _write(tmp_path, "refcoco", "unc", refs)
    label = r"ref #2" + ("" if field == "ref_id" else r" \(ref_id=2\)")
    with pytest.raises(ValueError, match=rf"refs\(unc\).p: {label} has no field '{field}'"):
        load_refcoco(str(root), "refcoco", "unc", "train")  # any split: every ref is checked
    with pytest.raises(ValueError, match=f"no field '{field}'"):
        register_refcoco(str(root))


@pytest.mark.parametrize("field", ["sent", "tokens", "sent_id"])
def test_missing_sentence_field(tmp_path, field):
    refs = _unc_refs()
    del refs[0]["sentences"][1][field]
    root = _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(
        ValueError, match=rf"refs\(unc\).p: ref #0 \(ref_id=0\) sentence #1 has no field '{field}'"
    ):
        load_refcoco(str(root), "refcoco", "unc", "val")


def test_bad_field_values(tmp_path):
    refs = _unc_refs()
    refs[1]["sentences"][0]["tokens"] = "the car"
    root = _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"ref_id=1\) sentence #0 field 'tokens'"):
        load_refcoco(str(root), "refcoco", "unc", "train")
    refs[1]["sentences"] = []
    _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"ref_id=1\) field 'sentences' must be a non-empty"):
        load_refcoco(str(root), "refcoco", "unc", "train")


def test_unknown_ann_id_and_mismatched_image(tmp_path):
    refs = _unc_refs()
    refs[1]["ann_id"] = 123456789
    root = _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"ref_id=1\) field 'ann_id': 123456789 is not in .*json"):
        load_refcoco(str(root), "refcoco", "unc", "train")
    refs[1]["ann_id"] = 3007  # an annotation of another image
    _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"field 'image_id' is 581857 but annotation 3007"):
        load_refcoco(str(root), "refcoco", "unc", "train")
    refs[1]["ann_id"], refs[1]["category_id"] = 5, 99
    _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"ref_id=1\) field 'category_id': 99"):
        load_refcoco(str(root), "refcoco", "unc", "train")


def test_malformed_instances(tmp_path):
    bad = json.loads(json.dumps(INSTANCES))
    del bad["annotations"][2]["bbox"]
    root = _write(tmp_path, "refcoco", "unc", _unc_refs(), instances=bad)
    with pytest.raises(ValueError, match=r"instances.json: annotations\[2\] has no field 'bbox'"):
        load_refcoco(str(root), "refcoco", "unc", "train")
    bad = json.loads(json.dumps(INSTANCES))
    del bad["categories"]
    _write(tmp_path, "refcoco", "unc", _unc_refs(), instances=bad)
    with pytest.raises(ValueError, match="no list field 'categories'"):
        load_refcoco(str(root), "refcoco", "unc", "train")
    (root / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances.json: not valid JSON"):
        load_refcoco(str(root), "refcoco", "unc", "train")


def test_context_ann_ids_pass_through(tmp_path):
    refs = _unc_refs()
    refs[0]["context_ann_ids"] = [5]
    refs[0]["sentences"][0]["context_ann_ids"] = [5]
    root = _write(tmp_path, "refcoco", "unc", refs)
    (d,) = load_refcoco(str(root), "refcoco", "unc", "train")
    assert d["refs"][0]["context_ann_ids"] == [5]
    assert d["refs"][0]["sentences"][0]["context_ann_ids"] == [5]
    refs[0]["context_ann_ids"] = [3007]  # an annotation of another image
    _write(tmp_path, "refcoco", "unc", refs)
    with pytest.raises(ValueError, match=r"field 'context_ann_ids': 3007 is not an annotation"):
        load_refcoco(str(root), "refcoco", "unc", "train")
