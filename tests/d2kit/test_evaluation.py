"""AP at single IoU thresholds, recall against matching IoU, and box precision/recall at one
IoU and score threshold (d2kit.evaluation)."""

import contextlib
import io
import itertools

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from d2kit.evaluation import (
    NEON_BOX_PR_AT,
    COCOEvaluatorAtIoUs,
    ap_at_ious,
    box_pr_keys,
    box_precision_recall,
    match_one_to_one,
    recall_at_ious,
)


def _coco_eval(det_box):
    """One image, one ground truth [0, 0, 100, 100] (XYWH), one detection."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 1e4,
             "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": det_box, "score": 0.9}])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_ap_at_single_thresholds_hand_example():
    ev = _coco_eval([0, 0, 100, 72])  # IoU 0.72 with the ground truth
    ap = ap_at_ious(ev, (0.5, 0.6, 0.7, 0.8, 0.9))
    assert ap["AP50"] == pytest.approx(100.0) and ap["AP70"] == pytest.approx(100.0)
    assert ap["AP80"] == 0.0 and ap["AP90"] == 0.0
    assert ap["AP50:90"] == pytest.approx(100.0 * 5 / 9)  # 0.50 ... 0.70 of 0.50:0.05:0.90
    assert ap["AP50"] == pytest.approx(100 * ev.stats[1])  # agrees with COCO's own AP50
    with pytest.raises(ValueError, match="evaluated thresholds"):
        ap_at_ious(ev, (0.52,))


def test_evaluator_rejects_thresholds_it_cannot_read():
    with pytest.raises(ValueError, match="AP_AT_IOUS"):
        COCOEvaluatorAtIoUs("synth_shapes_val_mini", ap_ious=(0.42,))


def _det(boxes, scores, classes):
    return {"boxes": np.array(boxes, float), "scores": np.array(scores), "classes": classes}


def test_recall_at_ious_hand_example():
    gt = [{"boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), "classes": [0, 0]}]
    # IoU 0.9 with the first, 0.6 with the second, one of the wrong class on the first
    det = [_det([[0, 0, 10, 9], [20, 0, 26, 10], [0, 0, 10, 10]], [0.9, 0.8, 0.95], [0, 0, 1])]
    r = recall_at_ious(det, gt, [0.5, 0.7, 0.95])
    np.testing.assert_allclose(r, [1.0, 0.5, 0.0])
    r = recall_at_ious(det, gt, [0.5, 0.7, 0.95], class_aware=False)
    np.testing.assert_allclose(r, [1.0, 0.5, 0.5])
    # one detection matches one ground truth at most; max_dets keeps the highest scores
    one = [_det([[0, 0, 10, 10], [20, 0, 30, 10]], [0.1, 0.9], [0, 0])]
    np.testing.assert_allclose(recall_at_ious(one, gt, [0.5], max_dets=1), [0.5])
    twice = [_det([[0, 0, 10, 10]], [0.5], [0])]
    np.testing.assert_allclose(recall_at_ious(twice, gt, [0.1]), [0.5])


def test_recall_at_ious_empty_cases():
    gt = [{"boxes": np.zeros((0, 4)), "classes": []}]
    assert np.isnan(recall_at_ious([_det(np.zeros((0, 4)), [], [])], gt, [0.5])).all()
    gt = [{"boxes": np.array([[0, 0, 1, 1]], float), "classes": [0]}]
    assert recall_at_ious([_det(np.zeros((0, 4)), [], [])], gt, [0.5]).tolist() == [0.0]
    with pytest.raises(ValueError, match="one entry per image"):
        recall_at_ious([], gt, [0.5])


# ------------------------------------------------------ box precision / recall (NEON benchmark)


def _hand_example():
    """Three images, hand-counted at IoU 0.4 and score threshold 0.3.

    Image 0: ground truth A = [0, 0, 10, 10], B = [20, 0, 30, 10] and an ignore region
    C = [50, 50, 100, 100]. Predictions (score): [0, 0, 10, 8] (0.9) has IoU 0.8 with A: hit;
    [0, 0, 10, 5] (0.8) has IoU 0.5 with A, already taken: false positive; [20, 0, 24.5, 10]
    (0.7) has IoU 0.45 with B: hit; [60, 60, 70, 70] (0.6) lies inside C: ignored;
    [200, 200, 210, 210] (0.5) overlaps nothing: false positive; [20, 0, 30, 10] (0.1) would match
    B exactly but is below the score threshold: dropped.
    Image 1: one ground truth, no prediction: a miss. Image 2: no ground truth, one prediction:
    a false positive.
    Pooled: TP 2, FP 3, FN 1: precision 2/5, recall 2/3. Per image (DeepForest's means, over
    images with ground truth): precision mean(2/4) = 0.5 (image 1 has no prediction),
    recall mean(2/2, 0/1) = 0.5.
    """
    gt = [
        {"boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 100, 100]], "ignore": [0, 0, 1]},
        {"boxes": [[0, 0, 10, 10]]},
        {"boxes": np.zeros((0, 4))},
    ]
    pred = [
        {
            "boxes": [
                [0, 0, 10, 8],
                [0, 0, 10, 5],
                [20, 0, 24.5, 10],
                [60, 60, 70, 70],
                [200, 200, 210, 210],
                [20, 0, 30, 10],
            ],
            "scores": [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
        },  # fmt: skip
        {"boxes": np.zeros((0, 4)), "scores": []},
        {"boxes": [[0, 0, 5, 5]], "scores": [0.9]},
    ]
    return pred, gt


def test_box_precision_recall_hand_example():
    pred, gt = _hand_example()
    r = box_precision_recall(pred, gt, iou_threshold=0.4, score_threshold=0.3)
    assert (r["tp"], r["fp"], r["fn"], r["ignored"], r["num_images"]) == (2, 3, 1, 1, 3)
    assert r["precision"] == pytest.approx(2 / 5) and r["recall"] == pytest.approx(2 / 3)
    assert r["image_precision"] == pytest.approx(0.5) and r["image_recall"] == pytest.approx(0.5)
    # NEON_BOX_PR_AT are the defaults
    assert NEON_BOX_PR_AT == (0.4, 0.3) and box_precision_recall(pred, gt) == r
    # score threshold 0: the exact box on B is kept; one-to-one, so it is one more false positive
    r0 = box_precision_recall(pred, gt, score_threshold=0.0)
    assert (r0["tp"], r0["fp"], r0["fn"]) == (2, 4, 1)
    # IoU 0.5: the 0.45 box on B is no longer a hit, and B is missed
    r5 = box_precision_recall(pred, gt, iou_threshold=0.5)
    assert (r5["tp"], r5["fp"], r5["fn"]) == (1, 4, 2)
    # without the ignore flag the region is a miss and the box inside it a false positive
    gt[0] = {"boxes": gt[0]["boxes"]}
    rn = box_precision_recall(pred, gt)
    assert (rn["tp"], rn["fp"], rn["fn"], rn["ignored"]) == (2, 4, 2, 0)


def test_one_to_one_matching_finds_pairs_greedy_by_score_loses():
    # a = [0, 0, 10, 10], b = [4, 0, 14, 10]; p (score 0.9) has IoU 0.82 with a and 0.54 with b,
    # q (score 0.8) IoU 0.9 with a and 0.36 with b. Greedy by score: p takes a, q is left with
    # nothing: one hit. One-to-one maximum matching: p-b and q-a, two hits.
    gt = [{"boxes": [[0, 0, 10, 10], [4, 0, 14, 10]]}]
    pred = [{"boxes": [[1, 0, 11, 10], [0, 0, 9, 10]], "scores": [0.9, 0.8]}]
    r = box_precision_recall(pred, gt, 0.4, 0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    # maximising the IoU (or area) sum would pick p-g1 + q-g0 (0.39 + 0.39) over p-g0 (0.45)
    p, g = match_one_to_one(np.array([[0.45, 0.39], [0.39, 0.0]]), 0.4)
    assert p.tolist() == [0] and g.tolist() == [0]


def _brute_force_matching(iou, t):
    """(number of pairs, total IoU) of the best matching, by enumeration."""
    n, g = iou.shape
    best = (0, 0.0)
    for k in range(1, min(n, g) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(g), k):
                values = iou[list(rows), list(cols)]
                if (values >= t).all():
                    best = max(best, (k, round(float(values.sum()), 9)))
    return best


def test_match_one_to_one_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, g = rng.integers(0, 6, size=2)
        iou = rng.random((n, g)) * (rng.random((n, g)) < 0.6)
        p, q = match_one_to_one(iou, 0.4)
        assert len(set(p.tolist())) == len(p) and len(set(q.tolist())) == len(q)
        assert (iou[p, q] >= 0.4).all()
        assert (len(p), round(float(iou[p, q].sum()), 9)) == _brute_force_matching(iou, 0.4)


def test_box_precision_recall_classes():
    gt = [{"boxes": [[0, 0, 10, 10]], "classes": [1]}]
    pred = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "classes": [2]}]
    r = box_precision_recall(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    r = box_precision_recall(pred, gt, class_aware=False)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)


def test_box_precision_recall_dense_scene_is_exact_and_fast():
    rng = np.random.default_rng(1)
    xy = rng.random((300, 2)) * 1000
    gt_boxes = np.concatenate([xy, xy + 30], axis=1)
    pred_boxes = gt_boxes + rng.uniform(-2, 2, gt_boxes.shape)  # IoU > 0.6 with its own box
    pred = [{"boxes": torch.as_tensor(pred_boxes), "scores": torch.ones(300)}]
    r = box_precision_recall(pred, [{"boxes": gt_boxes}])
    assert (r["tp"], r["fp"], r["fn"]) == (300, 0, 0)


def test_box_precision_recall_empty_cases():
    no_boxes = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    one_gt = {"boxes": [[0, 0, 10, 10]]}
    # no predictions: precision undefined (NaN), every ground truth a miss
    r = box_precision_recall([no_boxes], [one_gt])
    assert np.isnan(r["precision"]) and r["recall"] == 0.0 and r["fn"] == 1
    assert np.isnan(r["image_precision"]) and r["image_recall"] == 0.0
    # predictions, all below the score threshold: the same
    low = {"boxes": [[0, 0, 10, 10]], "scores": [0.1]}
    assert box_precision_recall([low], [one_gt])["tp"] == 0
    # no ground truth: recall undefined, every kept prediction a false positive
    r = box_precision_recall([{"boxes": [[0, 0, 1, 1]], "scores": [1.0]}], [{"boxes": []}])
    assert r["precision"] == 0.0 and np.isnan(r["recall"]) and r["fp"] == 1
    assert np.isnan(r["image_precision"]) and np.isnan(r["image_recall"])
    # nothing at all
    r = box_precision_recall([no_boxes], [{"boxes": []}])
    assert np.isnan(r["precision"]) and np.isnan(r["recall"]) and r["tp"] == r["fp"] == 0


def test_box_precision_recall_bad_input():
    one_gt = [{"boxes": [[0, 0, 10, 10]]}]
    box = [[0, 0, 10, 10]]
    with pytest.raises(ValueError, match=r"predictions\[0\]: 1 NaN score"):
        box_precision_recall([{"boxes": box, "scores": [float("nan")]}], one_gt)
    with pytest.raises(ValueError, match="one entry per image"):
        box_precision_recall([], one_gt)
    with pytest.raises(ValueError, match="no images"):
        box_precision_recall([], [])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\]: 2 values for 1 boxes"):
        box_precision_recall([{"boxes": box, "scores": [0.5, 0.5]}], one_gt)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_precision_recall([{"boxes": [[0, 0, 1]], "scores": [0.5]}], one_gt)
    with pytest.raises(ValueError, match=r"ground_truth\[0\]: a box has x2 < x1"):
        box_precision_recall([{"boxes": box, "scores": [0.5]}], [{"boxes": [[10, 0, 0, 10]]}])
    with pytest.raises(ValueError, match="NaN or inf"):
        box_precision_recall([{"boxes": [[0, 0, np.inf, 1]], "scores": [0.5]}], one_gt)
    with pytest.raises(ValueError, match="iou_threshold"):
        box_precision_recall([{"boxes": box, "scores": [0.5]}], one_gt, iou_threshold=0.0)


# --------------------------------------------------- the evaluator reports them next to COCO AP


@pytest.fixture
def tiny_dataset():
    """Two images, contiguous class 0 = dataset category id 7."""
    name = "test_box_pr_tiny"

    def load():
        def ann(box, crowd=0):
            return dict(bbox=box, bbox_mode=BoxMode.XYXY_ABS, category_id=0, iscrowd=crowd)

        return [
            dict(file_name="a.png", image_id=1, height=120, width=120,
                 annotations=[ann([0, 0, 10, 10]), ann([20, 0, 30, 10]),
                              ann([50, 50, 100, 100], crowd=1)]),
            dict(file_name="b.png", image_id=2, height=120, width=120,
                 annotations=[ann([0, 0, 10, 10])]),
        ]  # fmt: skip

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=["tree"], thing_dataset_id_to_contiguous_id={7: 0}, evaluator_type="coco"
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _instances(boxes, scores):
    inst = Instances((120, 120))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return inst


def _evaluate(name, tmp_path, **kwargs):
    ev = COCOEvaluatorAtIoUs(name, output_dir=str(tmp_path), distributed=False, **kwargs)
    ev.reset()
    pred, _ = _hand_example()
    ev.process(
        [{"image_id": 1}, {"image_id": 2}],
        [{"instances": _instances(pred[0]["boxes"], pred[0]["scores"])},
         {"instances": _instances(np.zeros((0, 4)), [])}],
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        return ev.evaluate()


def test_evaluator_reports_box_precision_recall(tiny_dataset, tmp_path):
    results = _evaluate(tiny_dataset, tmp_path, box_pr_at=NEON_BOX_PR_AT)
    bbox = results["bbox"]
    keys = box_pr_keys(0.4)
    assert list(keys.values()) == ["P@0.4", "R@0.4", "P@0.4/img", "R@0.4/img", "TP@0.4",
                                   "FP@0.4", "FN@0.4"]  # fmt: skip
    # image 0 of the hand example plus image 1: TP 2, FP 2, FN 1; the crowd box is ignored
    assert (bbox["TP@0.4"], bbox["FP@0.4"], bbox["FN@0.4"]) == (2, 2, 1)
    assert bbox["P@0.4"] == pytest.approx(50.0) and bbox["R@0.4"] == pytest.approx(200 / 3)
    assert bbox["P@0.4/img"] == pytest.approx(50.0) and bbox["R@0.4/img"] == pytest.approx(50.0)
    assert "AP" in bbox and "AP50" in bbox  # next to COCO's numbers
    # off by default
    assert "P@0.4" not in _evaluate(tiny_dataset, tmp_path / "off")["bbox"]


def test_box_pr_at_config_key_reaches_the_evaluator(tiny_dataset, tmp_path):
    from detectron2.config import get_cfg

    from d2kit.config import add_d2kit_config
    from d2kit.engine import Trainer

    cfg = get_cfg()
    add_d2kit_config(cfg)
    assert cfg.TEST.BOX_PR_AT == ()
    cfg.merge_from_list(["TEST.BOX_PR_AT", "(0.4, 0.3)", "OUTPUT_DIR", str(tmp_path)])
    ev = Trainer.build_evaluator(cfg, tiny_dataset)
    assert ev._box_pr_at == (0.4, 0.3)
    with pytest.raises(ValueError, match=r"TEST.BOX_PR_AT must be \(\) \(off\) or \(iou, score"):
        COCOEvaluatorAtIoUs(tiny_dataset, output_dir=str(tmp_path), box_pr_at=(0.4,))
    with pytest.raises(ValueError, match="TEST.BOX_PR_AT"):
        COCOEvaluatorAtIoUs(tiny_dataset, output_dir=str(tmp_path), box_pr_at=(1.5, 0.3))


def test_trainer_test_reports_box_precision_recall_next_to_ap(tmp_path):
    """Trainer.test with TEST.BOX_PR_AT: a random-weight quick Faster R-CNN on two PNGs."""
    from detectron2.modeling import build_model
    from PIL import Image

    from d2kit.engine import Trainer
    from d2kit.predict import setup_cfg

    name = "test_box_pr_pngs"
    records = []
    for i in range(2):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(path)
        records.append(
            dict(file_name=path, image_id=i, height=64, width=64,
                 annotations=[dict(bbox=[8, 8, 40, 40], bbox_mode=BoxMode.XYXY_ABS,
                                   category_id=0)])
        )  # fmt: skip
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["circle", "square", "triangle"])
    try:
        cfg = setup_cfg(
            "configs/quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
            ["DATASETS.TEST", f"('{name}',)", "TEST.BOX_PR_AT", "(0.4, 0.0)",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(tmp_path / "out"),
             "DATALOADER.NUM_WORKERS", "0"],
        )  # fmt: skip
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            results = Trainer.test(cfg, build_model(cfg).eval())
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    bbox = results["bbox"]
    assert {"AP", "AP50", "P@0.4", "R@0.4", "TP@0.4", "FP@0.4", "FN@0.4"} <= set(bbox)
    assert bbox["TP@0.4"] + bbox["FN@0.4"] == 2  # one ground truth per image
    assert bbox["TP@0.4"] + bbox["FP@0.4"] > 0  # score threshold 0: every detection counts
    assert 0.0 <= bbox["P@0.4"] <= 100.0 and 0.0 <= bbox["R@0.4"] <= 100.0
