"""The synthetic referring dataset: scenes, expressions, files in the refer layout, registration."""

import dataclasses
import json
import os
import pickle

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import d2kit  # noqa: F401
from d2kit.data import (
    REFER_IMAGE_DIR,
    REFERRING_COLOURS,
    REFERRING_SYNONYMS,
    REFERRING_VOCABULARY,
    SYNTH_REFERRING_SPEC,
    ReferringDescription,
    ReferringSpec,
    evaluate_referring_expression,
    generate_referring_scene,
    load_refcoco,
    parse_referring_expression,
    register_refcoco,
    resolve_referring_expression,
    write_referring_dataset,
)
from d2kit.data import referring as referring_module

SMALL = ReferringSpec(num_train=10, num_val=3, num_testA=4, num_testB=4, seed=77)
SPLITS = ("train", "val", "testA", "testB")


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_refer")
    write_referring_dataset(str(root), SMALL)
    return root


@pytest.fixture(scope="module")
def small_data(small_root):
    refs = pickle.load(open(small_root / "synth_referring" / "refs(unc).p", "rb"))
    coco = json.load(open(small_root / "synth_referring" / "instances.json"))
    return refs, coco


def _scene(coco, image_id):
    """Objects of one image as evaluate_referring_expression reads them, and their ann ids."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
    objects = [
        dict(category=names[a["category_id"]], colour=a["colour"], size=a["size"],
             bbox=[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                   a["bbox"][1] + a["bbox"][3]])
        for a in anns
    ]  # fmt: skip
    return objects, [a["id"] for a in anns]


def test_vocabulary_is_the_stated_one():
    expected = {
        "circle", "ring", "disc", "square", "box", "block", "triangle", "wedge", "pyramid",
        "red", "green", "blue", "yellow", "purple", "orange", "big", "large", "small", "little",
        "left", "right", "above", "below", "next", "to", "of", "the", "leftmost", "rightmost",
        "first", "second", "third", "from", "thing", "object", "one",
    }  # fmt: skip
    assert set(REFERRING_VOCABULARY) == expected
    assert list(REFERRING_VOCABULARY) == sorted(expected)
    assert REFERRING_SYNONYMS["circle"] == ("circle", "ring", "disc")


def test_second_generation_is_byte_identical(small_root, tmp_path):
    write_referring_dataset(str(tmp_path), SMALL)
    first, second = _files(small_root), _files(tmp_path)
    assert sorted(first) == sorted(second)
    assert len([f for f in first if f.endswith(".png")]) == SMALL.num_images
    for name in first:
        assert first[name] == second[name], name
    other = dataclasses.replace(SMALL, seed=78)
    assert not np.array_equal(generate_referring_scene(other, 0)[0],
                              generate_referring_scene(SMALL, 0)[0])  # fmt: skip


def test_refer_layout_and_fields(small_root, small_data):
    refs, coco = small_data
    assert (small_root / "synth_referring" / "refs(unc).p").read_bytes()[:2] == b"\x80\x02"
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    for img in coco["images"]:
        assert os.path.isfile(small_root / REFER_IMAGE_DIR / img["file_name"])
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert sent_ids == list(range(len(sent_ids))), "sent ids unique"
    assert [r["ref_id"] for r in refs] == list(range(len(refs)))
    for ref in refs:
        assert set(ref) >= {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id",
                            "sent_ids", "file_name", "context_ann_ids"}  # fmt: skip
        assert 2 <= len(ref["sentences"]) <= 3
        for sent in ref["sentences"]:
            assert sent["tokens"] == sent["sent"].split() and sent["sent"] == sent["sent"].lower()


def test_vocabulary_is_closed(small_data):
    refs, _ = small_data
    tokens = {t for r in refs for s in r["sentences"] for t in s["tokens"]}
    assert tokens <= set(REFERRING_VOCABULARY), tokens - set(REFERRING_VOCABULARY)
    nouns = {n for words in REFERRING_SYNONYMS.values() for n in words}
    assert len(tokens & nouns) >= 6, "synonyms are used"


def test_every_expression_names_its_referent_uniquely(small_data):
    refs, coco = small_data
    by_id = {a["id"]: a for a in coco["annotations"]}
    forms = set()
    for ref in refs:
        objects, ann_ids = _scene(coco, ref["image_id"])
        referent = ann_ids.index(ref["ann_id"])
        assert by_id[ref["ann_id"]]["category_id"] == ref["category_id"]
        union = set()
        for sent in ref["sentences"]:
            assert resolve_referring_expression(sent["tokens"], objects) == referent, sent["sent"]
            expr = parse_referring_expression(sent["sent"])
            forms.add(expr.form)
            ctx = sent["context_ann_ids"]
            if expr.form == "relation":
                # the mentioned context object: the one its noun phrase names, in the same image
                (c,) = [i for i, o in enumerate(objects) if expr.context.matches(o)]
                assert ctx == [ann_ids[c]] and ann_ids[c] != ref["ann_id"]
                assert by_id[ctx[0]]["image_id"] == ref["image_id"]
            else:
                assert ctx == []
            union.update(ctx)
        assert ref["context_ann_ids"] == sorted(union)
    assert forms >= {"attribute", "relation"}


def test_splits_follow_the_documented_rule(small_data):
    refs, coco = small_data
    counts = {s: len({r["image_id"] for r in refs if r["split"] == s}) for s in SPLITS}
    assert counts == SMALL.split_sizes(), "every image has refs, in one split"
    cat = {a["id"]: a["category_id"] for a in coco["annotations"]}
    for ref in refs:
        if ref["split"] == "testA":
            assert cat[ref["ann_id"]] == 1, "testA refers to circles"
        elif ref["split"] == "testB":
            assert cat[ref["ann_id"]] != 1, "testB refers to squares and triangles"


def test_scenes_are_valid(small_root, small_data):
    refs, coco = small_data
    big, small, needs_context = [], [], 0
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert 3 <= len(anns) <= 6
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns])  # fmt: skip
        assert (boxes >= 0).all() and (boxes <= 128).all()
        for i in range(len(boxes)):
            for j in range(i):  # boxes never overlap
                assert (boxes[i, :2] >= boxes[j, 2:]).any() or (boxes[j, :2] >= boxes[i, 2:]).any()
        image = cv2.imread(str(small_root / REFER_IMAGE_DIR / img["file_name"]))
        assert image.shape == (128, 128, 3)
        for a, box in zip(anns, boxes):
            (big if a["size"] == "big" else small).append((box[2:] - box[:2]).max())
            # the shape is drawn in its named colour at its box centre
            cx, cy = (box[:2] + box[2:]) / 2
            bgr = image[int(cy), int(cx)].astype(int)
            assert np.abs(bgr[::-1] - np.array(REFERRING_COLOURS[a["colour"]])).max() <= 14
        for ref in (r for r in refs if r["image_id"] == img["id"]):
            cats = [a["category_id"] for a in anns]
            needs_context += cats.count(ref["category_id"]) >= 2
    assert min(big) > 1.35 * max(small), "big and small are clearly distinct"
    assert needs_context >= len(refs) / 2, "referents usually share their class"


def test_read_back_through_register_refcoco(small_root, small_data):
    refs, _ = small_data
    names = register_refcoco(str(small_root), "synth_referring", "unc", name_prefix="tmp_synth_rb")
    try:
        assert names == [f"tmp_synth_rb_{s}" for s in SPLITS]
        assert MetadataCatalog.get(names[0]).thing_classes == ["circle", "square", "triangle"]
        for name, split in zip(names, SPLITS):
            dicts = DatasetCatalog.get(name)
            assert len(dicts) == SMALL.split_sizes()[split]
            loaded = {r["ref_id"]: r for d in dicts for r in d["refs"]}
            assert sorted(loaded) == [r["ref_id"] for r in refs if r["split"] == split]
            for d in dicts:
                ann_ids = {a["id"] for a in d["annotations"]}
                for r in d["refs"]:
                    assert r["ann_id"] in ann_ids and set(r["context_ann_ids"]) <= ann_ids
                    assert d["annotations"][0]["bbox"][2] > d["annotations"][0]["bbox"][0]
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_umd_variant(tmp_path):
    tiny = dataclasses.replace(SMALL, num_train=2, num_val=1, num_testA=1, num_testB=1)
    write_referring_dataset(str(tmp_path), tiny, split_by="umd")
    names = register_refcoco(str(tmp_path), "synth_referring", "umd", name_prefix="tmp_synth_umd")
    try:
        assert names == ["tmp_synth_umd_train", "tmp_synth_umd_val", "tmp_synth_umd_test"]
        assert len(DatasetCatalog.get("tmp_synth_umd_test")) == 2
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _obj(category, colour, size, x, y, side=20):
    return dict(category=category, colour=colour, size=size, bbox=[x, y, x + side, y + side])


def test_expression_rule_by_hand():
    objects = [
        _obj("circle", "red", "big", 10, 50),  # 0
        _obj("circle", "red", "big", 60, 50),  # 1
        _obj("square", "blue", "small", 90, 50),  # 2: right of 1, gap 10 -> next to 1
        _obj("triangle", "green", "small", 60, 5),  # 3: above 1
    ]
    assert resolve_referring_expression("the left ring", objects) == 0
    assert resolve_referring_expression("the rightmost red disc", objects) == 1
    assert resolve_referring_expression("the second circle from the left", objects) == 1
    assert resolve_referring_expression("the red circle", objects) is None  # two of them
    assert resolve_referring_expression("the circle next to the blue square", objects) == 1
    assert resolve_referring_expression("the circle to the left of the box", objects) is None
    assert resolve_referring_expression("the small thing above the large one", objects) is None
    assert resolve_referring_expression("the thing above the blue box", objects) == 3
    # circle 1 is straight below the wedge, circle 0 diagonally (dx 50, dy 45): unclear
    assert resolve_referring_expression("the ring below the wedge", objects) is None
    assert resolve_referring_expression("the red ring below the wedge", objects) is None
    # too close to call: centres 5 px apart in x (< ORDINAL_MARGIN)
    close = [_obj("circle", "red", "big", 10, 10), _obj("circle", "red", "big", 15, 60)]
    values = evaluate_referring_expression(parse_referring_expression("the left circle"), close)
    assert values == [None, None]
    # a context that names two objects is ambiguous
    expr = parse_referring_expression("the square next to the red circle")
    assert expr.context == ReferringDescription("circle", "red", None)
    assert evaluate_referring_expression(expr, objects)[2] is None


@pytest.mark.parametrize(
    "sentence, word",
    [("the dog", "'dog'"), ("red circle", "'the'"), ("the red circle from the left", "relation"),
     ("the second circle from the top", "'left' or 'right'"), ("the big", "noun")],
)  # fmt: skip
def test_parse_errors_name_the_word(sentence, word):
    with pytest.raises(ValueError, match=word):
        parse_referring_expression(sentence)


def test_registered_and_generated_lazily(tmp_path, monkeypatch):
    for split in SPLITS:
        meta = MetadataCatalog.get(f"synth_referring_{split}")
        assert f"synth_referring_{split}" in DatasetCatalog.list()
        assert meta.evaluator_type == "refcoco" and meta.refer_split == split
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert SYNTH_REFERRING_SPEC.split_sizes() == dict(train=400, val=60, testA=60, testB=60)
    root = tmp_path / "data"
    monkeypatch.setenv("D2KIT_DATASETS", str(root))
    tiny = dataclasses.replace(SMALL, num_train=3, num_val=1, num_testA=1, num_testB=1)
    monkeypatch.setattr(referring_module, "SYNTH_REFERRING_SPEC", tiny)
    image_dir = root / REFER_IMAGE_DIR
    image_dir.mkdir(parents=True)
    (image_dir / "COCO_train2014_000000000001.jpg").write_bytes(b"real coco image")
    assert not (root / "synth_referring").exists(), "nothing generated before the first load"
    dicts = DatasetCatalog.get("synth_referring_train")
    assert len(dicts) == 3 and os.path.isfile(dicts[0]["file_name"])
    instances = root / "synth_referring" / "instances.json"
    mtime = os.path.getmtime(instances)
    assert len(DatasetCatalog.get("synth_referring_testB")) == 1
    assert os.path.getmtime(instances) == mtime, "a current cache is reused"
    # a new generator version regenerates, replacing only its own images
    monkeypatch.setattr(referring_module, "GENERATOR_VERSION", 1000)
    DatasetCatalog.get("synth_referring_val")
    assert json.load(open(instances))["info"]["generator_version"] == 1000
    assert (image_dir / "COCO_train2014_000000000001.jpg").exists()
    assert len(list(image_dir.glob("synth_referring_*.png"))) == tiny.num_images
    assert load_refcoco(str(root), "synth_referring", "unc", "val")[0]["refs"]
    # the builtin names are tied to the root at import; other files under them are refused
    with pytest.raises(ValueError, match="'synth_referring_train' is already registered"):
        register_refcoco(str(root), "synth_referring", "unc", name_prefix="synth_referring")
