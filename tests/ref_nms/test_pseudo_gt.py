"""ref_nms.pseudo_gt: the released pseudo-ground-truth rule (ref_nms.md §2.2, §7 T1) and its
precision/recall against known context objects."""

import math

import pytest
from detectron2.structures import BoxMode

from ref_nms import (
    PseudoGroundTruth,
    WordVectors,
    box_iou_xyxy,
    critical_objects,
    load_synth_vectors,
    mean_precision_recall,
    pseudo_ground_truth,
    pseudo_gt_precision_recall,
)

T1_VECTORS = {
    "man": (1, 0, 0, 0),
    "person": (0.6, 0.8, 0, 0),
    "dining": (0, 0, 1, 0),
    "table": (0, 0, 0.6, 0.8),
    "desk": (0, 0, 0.28, 0.96),
    "shirt": (0, -1, 0, 0),
    "dog": (0, 0, -1, 0),
    "hot": (0, 0, 0, -1),
    "puppy": (0, 0.6, -0.8, 0),
}
# COCO ids: person 1, dog 18, hot dog 58, dining table 67
T1_NAMES = {1: "person", 18: "dog", 58: "hot dog", 67: "dining table"}
# T1 scene, boxes (x1, y1, x2, y2); the referent is A1 (position 0)
T1_SCENE = [
    (1, (0, 0, 10, 10)),  # A1 person: the referent
    (1, (20, 0, 30, 10)),  # A2 person: matched -> context
    (67, (0, 10, 30, 20)),  # A3 dining table: matched -> context
    (18, (40, 40, 50, 50)),  # A4 dog: not matched
    (1, (0, 0, 10, 9.5)),  # A5 person: IoU 0.95 > 0.9 -> duplicate of the referent
    (1, (0, 0, 10, 9)),  # A6 person: IoU exactly 0.9 -> context
]


def coco_anns(scene):
    """COCO json style: [x, y, w, h], no bbox_mode."""
    return [
        {"id": 100 + i, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for i, (c, b) in enumerate(scene)
    ]


@pytest.fixture(scope="module")
def wv():
    return WordVectors(T1_VECTORS)


def test_iou_hand_values():
    assert box_iou_xyxy((0, 0, 10, 10), (0, 0, 10, 9)) == 0.9
    assert box_iou_xyxy((0, 0, 10, 10), (0, 0, 10, 9.5)) == pytest.approx(0.95)
    assert box_iou_xyxy((0, 0, 10, 10), (20, 0, 30, 10)) == 0.0
    assert box_iou_xyxy((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_t1_scene(wv):
    anns = coco_anns(T1_SCENE)
    pgt = pseudo_ground_truth(["man", "desk"], anns, T1_NAMES, wv, referent=0)
    assert isinstance(pgt, PseudoGroundTruth)
    assert pgt.context == [1, 2, 5]  # A2, A3, A6
    assert pgt.duplicates == [0, 4]  # A1 itself and A5
    assert pgt.referent_matched
    assert pgt.categories == {"person", "dining table"}
    assert pgt.foreground == [0, 1, 2, 5]
    assert critical_objects(["man", "desk"], anns, T1_NAMES, wv, referent=0) == [0, 1, 2, 5]
    ids = [anns[i]["id"] for i in pgt.foreground]
    assert ids == [100, 101, 102, 105]


def test_t1_scene_xyxy_and_list_names(wv):
    anns = [{"category_id": c, "bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS} for c, b in T1_SCENE]
    assert critical_objects(["man", "desk"], anns, T1_NAMES, wv, referent=0) == [0, 1, 2, 5]
    # contiguous ids, e.g. Detectron2's thing_classes
    names = ["person", "dining table", "dog"]
    anns = [
        {"category_id": {1: 0, 67: 1, 18: 2}[c], "bbox": list(b), "bbox_mode": 0}
        for c, b in T1_SCENE
    ]
    assert critical_objects(["man", "desk"], anns, names, wv, referent=0) == [0, 1, 2, 5]


def test_duplicate_iou_threshold(wv):
    anns = coco_anns(T1_SCENE)
    pgt = pseudo_ground_truth(["man"], anns, T1_NAMES, wv, referent=0, duplicate_iou=0.95)
    assert pgt.context == [1, 4, 5] and pgt.duplicates == [0]  # 0.95 is not > 0.95


def test_referent_always_included(wv):
    anns = coco_anns(T1_SCENE)
    # no noun matches: only the referent
    pgt = pseudo_ground_truth(["shirt"], anns, T1_NAMES, wv, referent=0)
    assert pgt.foreground == [0] and not pgt.referent_matched and pgt.context == []
    # the referent's category is not matched, another one is (GT miss)
    pgt = pseudo_ground_truth(["puppy"], anns, T1_NAMES, wv, gamma=0.5, referent=0)
    assert pgt.categories == {"dog"} and pgt.foreground == [0, 3] and not pgt.referent_matched
    # no nouns at all, and an empty sentence (spaCy not needed)
    assert critical_objects([], anns, T1_NAMES, wv, referent=2) == [2]
    assert critical_objects("  ", anns, T1_NAMES, wv, referent=3) == [3]
    # the referent as the only annotation
    assert critical_objects(["man"], anns[:1], T1_NAMES, wv, referent=0) == [0]


def test_bad_input(wv):
    anns = coco_anns(T1_SCENE)
    for bad in (2.0, -1.5, float("nan"), "0.4"):
        with pytest.raises(ValueError, match="gamma"):
            critical_objects(["man"], anns, T1_NAMES, wv, bad, referent=0)
    for bad in (6, -1, 1.0, True, None):
        with pytest.raises(ValueError, match="referent"):
            critical_objects(["man"], anns, T1_NAMES, wv, referent=bad)
    for bad in (5, None, {"man": 1}):
        with pytest.raises(ValueError, match="sentence_or_nouns"):
            critical_objects(bad, anns, T1_NAMES, wv, referent=0)
    with pytest.raises(ValueError, match="sentence_or_nouns"):
        critical_objects(["man", 7], anns, T1_NAMES, wv, referent=0)
    with pytest.raises(ValueError, match="annotations"):
        critical_objects(["man"], anns[0], T1_NAMES, wv, referent=0)
    broken = [dict(a) for a in anns]
    del broken[2]["bbox"]
    with pytest.raises(ValueError, match=r"annotations\[2\] has no 'bbox'"):
        critical_objects(["man"], broken, T1_NAMES, wv, referent=0)
    broken = [dict(a) for a in anns]
    broken[1]["bbox"] = [0, 0, float("inf"), 1]
    with pytest.raises(ValueError, match=r"annotations\[1\]\['bbox'\]"):
        critical_objects(["man"], broken, T1_NAMES, wv, referent=0)
    broken = [dict(a) for a in anns]
    broken[3]["category_id"] = 99
    with pytest.raises(ValueError, match=r"annotations\[3\]\['category_id'\] = 99"):
        critical_objects(["man"], broken, T1_NAMES, wv, referent=0)
    broken = [dict(a) for a in anns]
    broken[0]["bbox_mode"] = BoxMode.XYWH_REL
    with pytest.raises(ValueError, match="bbox_mode"):
        critical_objects(["man"], broken, T1_NAMES, wv, referent=0)
    with pytest.raises(ValueError, match="duplicate_iou"):
        critical_objects(["man"], anns, T1_NAMES, wv, referent=0, duplicate_iou=1.5)
    with pytest.raises(TypeError):
        critical_objects(["man"], anns, T1_NAMES, wv)  # the referent is required


def test_synthetic_sentence_with_spacy_and_shipped_table():
    # "the red circle left of the blue box": the referent circle and the box are mentioned; a
    # second circle is not, but the released rule matches every annotation of a matched category
    names = {1: "circle", 2: "square", 3: "triangle"}
    anns = [
        {"id": 10, "category_id": 1, "bbox": [10, 40, 20, 20]},  # referent: red circle
        {"id": 11, "category_id": 2, "bbox": [60, 40, 20, 20]},  # blue square (the "box")
        {"id": 12, "category_id": 1, "bbox": [90, 90, 20, 20]},  # another circle
        {"id": 13, "category_id": 3, "bbox": [10, 90, 20, 20]},  # a triangle, not mentioned
    ]
    sentence = "the red circle left of the blue box"
    pgt = pseudo_ground_truth(sentence, anns, names, load_synth_vectors(), referent=0)
    assert pgt.categories == {"circle", "square"} and pgt.referent_matched
    assert pgt.foreground == [0, 1, 2]
    pred = [anns[i]["id"] for i in pgt.context]
    assert pseudo_gt_precision_recall(pred, true_ids=[11]) == (0.5, 1.0)


def test_precision_recall_hand_values():
    p, r = pseudo_gt_precision_recall([1, 2, 3], [2, 3, 4, 5])
    assert p == pytest.approx(2 / 3) and r == 0.5
    assert pseudo_gt_precision_recall([1, 1, 2], {1, 2}) == (1.0, 1.0)  # sets
    assert pseudo_gt_precision_recall([7], [8]) == (0.0, 0.0)
    # undefined cases are NaN: nothing predicted -> precision; nothing to find -> recall
    p, r = pseudo_gt_precision_recall([], [])
    assert math.isnan(p) and math.isnan(r)
    p, r = pseudo_gt_precision_recall([], [4])
    assert math.isnan(p) and r == 0.0
    p, r = pseudo_gt_precision_recall([4], [])
    assert p == 0.0 and math.isnan(r)
    for bad in ("12", 3, [[1]]):
        with pytest.raises(ValueError, match="pred_ids"):
            pseudo_gt_precision_recall(bad, [1])
    with pytest.raises(ValueError, match="true_ids"):
        pseudo_gt_precision_recall([1], None)


def test_mean_precision_recall_skips_nan():
    nan = math.nan
    assert mean_precision_recall([(1.0, nan), (0.5, 0.5), (nan, 1.0)]) == (0.75, 0.75)
    p, r = mean_precision_recall([(nan, nan)])
    assert math.isnan(p) and math.isnan(r)
    p, r = mean_precision_recall([])
    assert math.isnan(p) and math.isnan(r)
