"""Evaluation the projects share: COCO AP with AP at single IoU thresholds, and recall at IoU.

Papers on NMS read their tables at AP50, AP60, AP70, AP80, AP90 (Rank-NMS Tables 1-5); COCO's
summary prints only AP50 and AP75. pycocotools' precision array already holds every threshold of
0.50:0.05:0.95, so these cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["DEFAULT_AP_IOUS", "COCOEvaluatorAtIoUs", "ap_at_ious", "recall_at_ious"]

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


class COCOEvaluatorAtIoUs(COCOEvaluator):
    """``COCOEvaluator`` whose bbox/segm results also hold AP at ``ap_ious`` (see
    :func:`ap_at_ious`); the standard keys (AP, AP50, AP75, APs, APm, APl) are unchanged."""

    def __init__(self, dataset_name, *args, ap_ious: Sequence[float] = DEFAULT_AP_IOUS, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        for t in ap_ious:
            if not 0.5 <= t <= 0.95 or not np.isclose(round(t * 20) / 20, t):
                raise ValueError(
                    f"TEST.AP_AT_IOUS must be multiples of 0.05 in [0.5, 0.95], got {t!r}"
                )
        self._ap_ious = tuple(float(t) for t in ap_ious)

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
