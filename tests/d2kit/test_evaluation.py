"""AP at single IoU thresholds and recall against matching IoU (d2kit.evaluation)."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from d2kit.evaluation import COCOEvaluatorAtIoUs, ap_at_ious, recall_at_ious


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
