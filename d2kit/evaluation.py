"""Evaluation the projects share: COCO AP with AP at single IoU thresholds, recall at IoU, and
box precision/recall at one IoU and score threshold.

Papers on NMS read their tables at AP50, AP60, AP70, AP80, AP90 (Rank-NMS Tables 1-5); COCO's
summary prints only AP50 and AP75. pycocotools' precision array already holds every threshold of
0.50:0.05:0.95, so these cost nothing extra.

The NeonTreeEvaluation benchmark reads box precision and recall at IoU 0.4 instead of AP
(:func:`box_precision_recall`, one-to-one matching); ``TEST.BOX_PR_AT: (0.4, 0.3)`` adds them to
the evaluator's bbox results (:class:`COCOEvaluatorAtIoUs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, pairwise_iou

__all__ = [
    "DEFAULT_AP_IOUS",
    "NEON_BOX_PR_AT",
    "COCOEvaluatorAtIoUs",
    "ap_at_ious",
    "box_precision_recall",
    "box_pr_keys",
    "match_one_to_one",
    "recall_at_ious",
]

#: Default thresholds of ``TEST.AP_AT_IOUS``.
DEFAULT_AP_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


def ap_at_ious(coco_eval, thresholds: Sequence[float]) -> dict[str, float]:
    """AP (in %) at single IoU thresholds from a summarised ``COCOeval``, and their mean.

    Each AP is the mean of the precision array over recall and classes at that threshold, area
    "all", the largest maxDets (as COCO's own AP50/AP75). Thresholds must be among the
    evaluation's ``params.iouThrs`` (0.50:0.05:0.95).

    Returns:
        ``{"AP60": ..., "AP70": ..., ...}`` (keys ``AP<round(100 t)>``) plus ``"AP50:90"``, the
        mean over 0.50:0.05:0.90 (the paper's VOC "AP", see rank_nms.md), when all nine are
        evaluated; NaN where a threshold has no ground truth.
    """
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    iou_thrs = np.asarray(coco_eval.params.iouThrs)

    def at(t: float) -> float:
        idx = np.nonzero(np.isclose(iou_thrs, t))[0]
        if idx.size == 0:
            raise ValueError(f"IoU {t} is not one of the evaluated thresholds {iou_thrs.tolist()}")
        p = precision[idx[0], :, :, 0, -1]
        p = p[p > -1]
        return float(np.mean(p) * 100) if p.size else float("nan")

    out = {f"AP{round(100 * t)}": at(t) for t in thresholds}
    voc = np.arange(0.5, 0.901, 0.05)
    if all(np.isclose(iou_thrs, t).any() for t in voc):
        out["AP50:90"] = float(np.mean([at(t) for t in voc]))
    return out


def _xywh_to_xyxy(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


_PERCENT = ("precision", "recall", "image_precision", "image_recall")


class COCOEvaluatorAtIoUs(COCOEvaluator):
    """``COCOEvaluator`` whose bbox/segm results also hold AP at ``ap_ious`` (see
    :func:`ap_at_ious`); the standard keys (AP, AP50, AP75, APs, APm, APl) are unchanged.

    With ``box_pr_at = (iou, score_threshold)`` (``TEST.BOX_PR_AT``; ``()``: off) the bbox
    results also hold box precision and recall at that IoU and score threshold
    (:func:`box_precision_recall`, class-aware, ``iscrowd``/``ignore`` ground truth ignored),
    under the keys of :func:`box_pr_keys`: ``P@0.4``, ``R@0.4`` (pooled over images, in %, like
    the APs), ``P@0.4/img``, ``R@0.4/img`` (per-image means, in %, as DeepForest reports them)
    and the counts ``TP@0.4``, ``FP@0.4``, ``FN@0.4``. They count every detection the model
    keeps (at most ``TEST.DETECTIONS_PER_IMAGE``) with a score >= the threshold.
    """

    def __init__(
        self,
        dataset_name,
        *args,
        ap_ious: Sequence[float] = DEFAULT_AP_IOUS,
        box_pr_at: Sequence[float] = (),
        **kwargs,
    ):
        # the arguments are checked before COCOEvaluator loads (or converts) the ground truth
        for t in ap_ious:
            if not 0.5 <= t <= 0.95 or not np.isclose(round(t * 20) / 20, t):
                raise ValueError(
                    f"TEST.AP_AT_IOUS must be multiples of 0.05 in [0.5, 0.95], got {t!r}"
                )
        self._ap_ious = tuple(float(t) for t in ap_ious)
        box_pr_at = tuple(float(v) for v in box_pr_at)
        if box_pr_at and (
            len(box_pr_at) != 2 or not 0.0 < box_pr_at[0] <= 1.0 or not 0.0 <= box_pr_at[1] <= 1.0
        ):
            raise ValueError(
                "TEST.BOX_PR_AT must be () (off) or (iou, score_threshold) with iou in (0, 1] "
                f"and score_threshold in [0, 1], got {box_pr_at!r}"
            )
        super().__init__(dataset_name, *args, **kwargs)
        self._box_pr_at = box_pr_at

    def _eval_predictions(self, predictions, img_ids=None):
        # the boxes are read before COCOEvaluator maps the category ids in place
        pr_inputs = self._box_pr_inputs(predictions, img_ids) if self._box_pr_at else None
        super()._eval_predictions(predictions, img_ids=img_ids)
        if pr_inputs is None or "bbox" not in self._results:
            return
        iou, score = self._box_pr_at
        pr = box_precision_recall(*pr_inputs, iou_threshold=iou, score_threshold=score)
        extra = {
            key: float(pr[name]) * (100.0 if name in _PERCENT else 1.0)
            for name, key in box_pr_keys(iou).items()
        }
        self._results["bbox"].update(extra)
        shown = [
            f"{key} {pr[name] * 100:.2f}" if name in _PERCENT else f"{key} {pr[name]}"
            for name, key in box_pr_keys(iou).items()
        ]
        self._logger.info(
            f"Box precision/recall at IoU {iou:g}, score >= {score:g} (one-to-one matching, "
            f"{pr['num_images']} images, {pr['ignored']} predictions in ignore regions): "
            + ", ".join(shown)
        )

    def _box_pr_inputs(self, predictions, img_ids):
        """Per image (those of ``predictions``, or ``img_ids``): predicted and ground-truth boxes
        (XYXY), scores, dataset category ids, ignore flags (``iscrowd`` or ``ignore``)."""
        if not self._do_evaluation:
            return None
        to_dataset_id = {
            v: k
            for k, v in getattr(self._metadata, "thing_dataset_id_to_contiguous_id", {}).items()
        }
        wanted = None if img_ids is None else set(img_ids)
        dets, gts = [], []
        for entry in predictions:
            if "instances" not in entry or (wanted is not None and entry["image_id"] not in wanted):
                continue
            instances = entry["instances"]
            dets.append(
                dict(
                    boxes=_xywh_to_xyxy([x["bbox"] for x in instances]),
                    scores=np.array([x["score"] for x in instances], dtype=np.float64),
                    classes=np.array(
                        [to_dataset_id.get(x["category_id"], x["category_id"]) for x in instances],
                        dtype=np.int64,
                    ),
                )
            )
            anns = self._coco_api.loadAnns(self._coco_api.getAnnIds(imgIds=[entry["image_id"]]))
            gts.append(
                dict(
                    boxes=_xywh_to_xyxy([a["bbox"] for a in anns]),
                    classes=np.array([a["category_id"] for a in anns], dtype=np.int64),
                    ignore=np.array(
                        [bool(a.get("iscrowd", 0) or a.get("ignore", 0)) for a in anns], dtype=bool
                    ),
                )
            )
        return (dets, gts) if dets else None

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if iou_type in ("bbox", "segm") and self._ap_ious:
            if coco_eval is None:
                extra = {f"AP{round(100 * t)}": float("nan") for t in self._ap_ious}
                extra["AP50:90"] = float("nan")
            else:
                extra = ap_at_ious(coco_eval, self._ap_ious)
            results.update({k: v for k, v in extra.items() if k not in results})
            self._logger.info(
                f"AP at IoU thresholds ({iou_type}): "
                + ", ".join(f"{k} {v:.2f}" for k, v in extra.items())
            )
        return results


def recall_at_ious(
    detections: Sequence[dict],
    ground_truth: Sequence[dict],
    thresholds: Sequence[float],
    max_dets: int | None = 100,
    class_aware: bool = True,
) -> np.ndarray:
    """Recall against matching IoU (Rank-NMS Fig. 3): the fraction of ground-truth boxes matched
    by a detection with IoU >= t, for each t.

    Matching is greedy per image and threshold, COCO-style: detections in decreasing score order
    (at most ``max_dets``) each take the unmatched ground truth (of their class, if
    ``class_aware``) with the largest IoU >= t.

    Args:
        detections: per image, ``{"boxes": (N, 4) XYXY, "scores": (N,), "classes": (N,)}``.
        ground_truth: per image, ``{"boxes": (G, 4), "classes": (G,)}``.
        thresholds: IoU thresholds in [0, 1].
        max_dets: detections per image (None: all).
        class_aware: only same-class matches count.

    Returns:
        float64 array (len(thresholds),); NaN if there is no ground truth.
    """
    if len(detections) != len(ground_truth):
        raise ValueError("detections and ground_truth must have one entry per image")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    matched = np.zeros(len(thresholds), dtype=np.int64)
    total = 0
    for det, gt in zip(detections, ground_truth):
        gt_boxes = torch.as_tensor(gt["boxes"], dtype=torch.float64).reshape(-1, 4)
        total += len(gt_boxes)
        boxes = torch.as_tensor(det["boxes"], dtype=torch.float64).reshape(-1, 4)
        if len(gt_boxes) == 0 or len(boxes) == 0:
            continue
        order = torch.sort(-torch.as_tensor(det["scores"], dtype=torch.float64), stable=True)[1]
        order = order[:max_dets] if max_dets is not None else order
        iou = pairwise_iou(Boxes(boxes[order]), Boxes(gt_boxes)).numpy()  # (N, G)
        if class_aware:
            same = np.asarray(det["classes"])[order.numpy()][:, None] == np.asarray(gt["classes"])
            iou = np.where(same, iou, -1.0)
        for k, t in enumerate(thresholds):
            taken = np.zeros(iou.shape[1], dtype=bool)
            for row in iou:
                cand = np.where(taken | (row < t), -1.0, row)
                j = int(np.argmax(cand))
                if cand[j] >= t:
                    taken[j] = True
            matched[k] += int(taken.sum())
    return matched / total if total else np.full(len(thresholds), np.nan)


# ------------------------------------------------ box precision and recall (NeonTreeEvaluation)

#: ``TEST.BOX_PR_AT`` for the NeonTreeEvaluation benchmark: IoU 0.4 (the benchmark's), score
#: threshold 0.3 (ours: the benchmark does not fix one; see :func:`box_precision_recall`).
NEON_BOX_PR_AT = (0.4, 0.3)


def _as_boxes(value, what: str) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4) (XYXY), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what}: boxes hold NaN or inf")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{what}: a box has x2 < x1 or y2 < y1 (boxes must be XYXY)")
    return boxes


def _as_vector(value, n: int, what: str, dtype) -> np.ndarray:
    vector = np.asarray(value, dtype=dtype).reshape(-1)
    if len(vector) != n:
        raise ValueError(f"{what}: {len(vector)} values for {n} boxes")
    return vector


def _box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the area of ``a`` of XYXY boxes (N, 4) x (M, 4), float64
    (N, M); 0 where the denominator is 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    ioa = np.divide(inter, area_a[:, None], out=np.zeros_like(inter), where=area_a[:, None] > 0)
    return iou, ioa


def _min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """Hungarian method (shortest augmenting paths with row/column potentials) for a cost matrix
    with ``rows <= cols``: assigns every row a distinct column at minimum total cost.

    Returns:
        int64 (rows,): the column of each row.
    """
    n, m = cost.shape
    u = np.zeros(n + 1)  # row potentials (1-based; 0 is the virtual row of the current search)
    v = np.zeros(m + 1)  # column potentials (column 0 is the virtual start column)
    owner = np.zeros(m + 1, dtype=np.int64)  # 1-based row that holds column j; 0: free
    came_from = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        slack = np.full(m + 1, np.inf)
        visited = np.zeros(m + 1, dtype=bool)
        while True:  # grow the tree of tight edges until it reaches a free column
            visited[col] = True
            r = owner[col]
            reduced = cost[r - 1] - u[r] - v[1:]
            open_ = ~visited[1:]
            better = open_ & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            came_from[1:][better] = col
            candidates = np.where(open_, slack[1:], np.inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            u[owner[visited]] += delta
            v[visited] -= delta
            slack[~visited] -= delta
            col = nxt
            if owner[col] == 0:
                break
        while col:  # flip the augmenting path
            prev = came_from[col]
            owner[col] = owner[prev]
            col = prev
    assignment = np.full(n, -1, dtype=np.int64)
    held = np.nonzero(owner[1:])[0]
    assignment[owner[1:][held] - 1] = held
    return assignment


def match_one_to_one(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximum one-to-one matching of predictions (rows) to ground truth (columns) among the
    pairs with ``iou >= threshold``: as many pairs as possible, ties broken by the largest total
    IoU (Hungarian method on the weights ``K + iou`` of those pairs, ``K = min(N, G) + 1`` so
    that one pair more always outweighs any gain in IoU).

    The pairs form a sparse graph; each connected component is solved on its own (a component
    with a single prediction or ground truth takes its best pair), so dense scenes of hundreds of
    boxes stay fast.

    Args:
        iou: float (N, G) overlaps in [0, 1] (set a pair below ``threshold`` to forbid it, e.g.
            across classes).
        threshold: IoU a pair needs, in (0, 1].

    Returns:
        ``(pred_idx, gt_idx)``: int64 (M,) each, matched pairs, sorted by ``pred_idx``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a (N, G) matrix, got shape {iou.shape}")
    n, g = iou.shape
    eligible = iou >= threshold
    rows, cols = np.nonzero(eligible)
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # connected components of the bipartite graph (union-find over nodes 0..n-1, n..n+g-1)
    parent = np.arange(n + g)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, c in zip(rows.tolist(), (cols + n).tolist()):
        a, b = find(r), find(c)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([find(x) for x in range(n + g)])
    weight_base = min(n, g) + 1.0
    pred_out, gt_out = [], []
    for root in np.unique(roots[rows]):
        preds = np.nonzero(roots[:n] == root)[0]
        gts = np.nonzero(roots[n:] == root)[0]
        sub = iou[np.ix_(preds, gts)]
        ok = eligible[np.ix_(preds, gts)]
        if len(preds) == 1 or len(gts) == 1:
            flat = int(np.argmax(np.where(ok, sub, -1.0)))
            i, j = np.unravel_index(flat, sub.shape)
            pred_out.append(preds[i])
            gt_out.append(gts[j])
            continue
        weight = np.where(ok, weight_base + sub, 0.0)
        if len(preds) <= len(gts):
            col_of_row = _min_cost_assignment(-weight)
            pairs = [(i, j) for i, j in enumerate(col_of_row.tolist())]
        else:
            col_of_row = _min_cost_assignment(-weight.T)
            pairs = [(i, j) for j, i in enumerate(col_of_row.tolist())]
        for i, j in pairs:
            if ok[i, j]:
                pred_out.append(preds[i])
                gt_out.append(gts[j])
    order = np.argsort(np.asarray(pred_out), kind="stable")
    return np.asarray(pred_out, np.int64)[order], np.asarray(gt_out, np.int64)[order]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def box_precision_recall(
    predictions: Sequence[dict],
    ground_truth: Sequence[dict],
    iou_threshold: float = NEON_BOX_PR_AT[0],
    score_threshold: float = NEON_BOX_PR_AT[1],
    class_aware: bool = True,
) -> dict:
    """Box precision and recall at one IoU and one score threshold (NeonTreeEvaluation's box
    precision / recall at IoU 0.4), with one-to-one matching.

    Per image, the predictions with ``score >= score_threshold`` are matched to the ground truth
    by :func:`match_one_to_one`: the largest set of (prediction, ground truth) pairs with
    ``IoU >= iou_threshold`` in which each box appears at most once (ties: the largest total
    IoU). Hungarian matching, not greedy by score, because after the score threshold the kept
    predictions are a set: precision and recall should not depend on how they are ranked, and a
    greedy pass can lose a pair (a high-scored box takes the only ground truth a lower-scored box
    could match, while another one it overlaps goes unmatched). The benchmark's reference code
    (DeepForest's ``evaluate_boxes``) is also a Hungarian assignment, but it maximises the total
    intersection *area* and then keeps the pairs with IoU > 0.4, which can trade an eligible pair
    for an ineligible one; maximising the number of eligible pairs never counts fewer hits. (A
    hit here needs IoU >= the threshold, as in COCO; DeepForest's > differs only at equality.)

    Ground truth marked ignore (``iscrowd``, CrowdHuman's ignore regions, VOC's "difficult") is
    neither a hit nor a miss. A kept prediction not matched to other ground truth is not a false
    positive when it overlaps an ignore box (of its class) with intersection over its own area
    >= ``iou_threshold``, COCO's rule for crowd regions; any number of them may lie in one
    region.

    Args:
        predictions: per image, ``{"boxes": (N, 4) XYXY, "scores": (N,), "classes": (N,)}``
            (numpy, torch or lists; "classes" optional: all one class).
        ground_truth: per image, ``{"boxes": (G, 4) XYXY, "classes": (G,), "ignore": (G,)}``
            ("classes" and "ignore" optional: one class, nothing ignored).
        iou_threshold: IoU a hit needs, in (0, 1]; 0.4 in NeonTreeEvaluation.
        score_threshold: predictions scored below it are dropped. The benchmark fixes none
            (DeepForest keeps RetinaNet boxes above 0.1); 0.3 is this package's default for a
            softmax-scored detector. Report it next to the numbers.
        class_aware: a hit needs the same class (box precision/recall in DeepForest ignore
            classes; on single-class data such as NEON the two agree).

    Returns:
        dict: ``precision`` = TP / (TP + FP) and ``recall`` = TP / (TP + FN) in [0, 1], pooled
        over all images (NaN: no kept prediction / no ground truth); ``tp``, ``fp``, ``fn``,
        ``ignored`` (kept predictions in ignore regions) as ints; ``num_images``;
        ``image_precision`` and ``image_recall``, the per-image means as DeepForest averages
        them (over images with ground truth; an image without kept predictions adds recall 0
        and no precision; NaN if no image counts).

    Raises:
        ValueError: different numbers of images, no image, a NaN score, a malformed box or a
            length mismatch (naming the image), or a threshold out of range.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"predictions ({len(predictions)}) and ground_truth ({len(ground_truth)}) must have "
            "one entry per image"
        )
    if len(predictions) == 0:
        raise ValueError("no images to evaluate")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    if not np.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold!r}")
    tp = fp = fn = ignored = 0
    image_precisions, image_recalls = [], []
    for k, (det, gt) in enumerate(zip(predictions, ground_truth)):
        boxes = _as_boxes(det["boxes"], f"predictions[{k}]")
        scores = _as_vector(det["scores"], len(boxes), f"predictions[{k}]['scores']", np.float64)
        if np.isnan(scores).any():
            raise ValueError(
                f"predictions[{k}]: {int(np.isnan(scores).sum())} NaN score(s); a diverged model?"
            )
        classes = det.get("classes")
        classes = (
            np.zeros(len(boxes), np.int64)
            if classes is None or not class_aware
            else _as_vector(classes, len(boxes), f"predictions[{k}]['classes']", np.int64)
        )
        keep = scores >= score_threshold
        boxes, classes = boxes[keep], classes[keep]

        gt_boxes = _as_boxes(gt["boxes"], f"ground_truth[{k}]")
        gt_classes = gt.get("classes")
        gt_classes = (
            np.zeros(len(gt_boxes), np.int64)
            if gt_classes is None or not class_aware
            else _as_vector(gt_classes, len(gt_boxes), f"ground_truth[{k}]['classes']", np.int64)
        )
        gt_ignore = gt.get("ignore")
        gt_ignore = (
            np.zeros(len(gt_boxes), bool)
            if gt_ignore is None
            else _as_vector(gt_ignore, len(gt_boxes), f"ground_truth[{k}]['ignore']", bool)
        )
        iou, ioa = _box_overlaps(boxes, gt_boxes)
        same = classes[:, None] == gt_classes[None, :]
        counted = ~gt_ignore
        pred_idx, _ = match_one_to_one(np.where(same & counted[None, :], iou, -1.0), iou_threshold)
        hit = np.zeros(len(boxes), bool)
        hit[pred_idx] = True
        in_ignore = (~hit) & ((ioa >= iou_threshold) & same & gt_ignore[None, :]).any(axis=1)
        image_tp = int(hit.sum())
        image_fp = int(len(boxes) - image_tp - in_ignore.sum())
        num_gt = int(counted.sum())
        tp, fp, fn = tp + image_tp, fp + image_fp, fn + num_gt - image_tp
        ignored += int(in_ignore.sum())
        if num_gt:
            image_recalls.append(image_tp / num_gt)
            if image_tp + image_fp:
                image_precisions.append(image_tp / (image_tp + image_fp))
    return dict(
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        tp=tp,
        fp=fp,
        fn=fn,
        ignored=ignored,
        num_images=len(predictions),
        image_precision=float(np.mean(image_precisions)) if image_precisions else float("nan"),
        image_recall=float(np.mean(image_recalls)) if image_recalls else float("nan"),
    )


def box_pr_keys(iou_threshold: float) -> dict[str, str]:
    """The result keys the evaluator writes for ``TEST.BOX_PR_AT``, by the name of the value in
    :func:`box_precision_recall`'s dict: ``P@0.4``, ``R@0.4`` (pooled, %), ``P@0.4/img``,
    ``R@0.4/img`` (per-image means, %), ``TP@0.4``, ``FP@0.4``, ``FN@0.4`` (counts)."""
    t = f"{iou_threshold:g}"
    return {
        "precision": f"P@{t}",
        "recall": f"R@{t}",
        "image_precision": f"P@{t}/img",
        "image_recall": f"R@{t}/img",
        "tp": f"TP@{t}",
        "fp": f"FP@{t}",
        "fn": f"FN@{t}",
    }
