"""Proposal selection of Ref-NMS and of the baseline it is compared against.

- :func:`filter_candidates`: the first-stage candidates, (RoI, class) pairs with confidence > δ
  (paper: δ = 0.05), lowering δ when too few pass (released).
- :func:`select_proposals`: Ref-NMS at inference: fused score s = r·c, per-class greedy NMS at
  IoU 0.3 on s, then the threshold rule (top-1 always kept, then s > conf) or the top-N
  (ref_nms.md §1.4, released ``save_ref_nms_proposals.py`` and ``threshold_with_confidence``).
- :func:`baseline_proposals`: the "Real case" of two-stage grounding methods (MAttNet
  ``run_detect.py``): per-class NMS at 0.3 on c, then c >= 0.65, the threshold lowered by 0.1
  while nothing passes.
"""

from __future__ import annotations

import math

import torch
from detectron2.layers import batched_nms

from ._checks import (
    check_boxes,
    check_index_tensor,
    check_number,
    check_optional_int,
    check_unit_interval,
)
from .relatedness import fuse_scores

__all__ = ["baseline_proposals", "filter_candidates", "select_proposals"]


def filter_candidates(
    class_scores: torch.Tensor,
    delta: float = 0.05,
    min_candidates: int = 1,
    step: float = 0.005,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The candidate set B: every (RoI, class) pair whose class probability is > δ.

    A RoI can enter several times, once per foreground class (each with its class-specific box);
    no NMS runs before Ref-NMS (ref_nms.md §1.1). While fewer than ``min_candidates`` pairs pass,
    δ is lowered by ``step`` (released: by 0.005, to >= 32 pairs for training and >= 1 at
    inference), down to just below 0, where every pair passes.

    Args:
        class_scores: float ``(R, K)`` in [0, 1], the foreground class probabilities (drop the
            background column first; Detectron2 puts it last).
        delta: δ in [0, 1] (paper: 0.05); the test is strict (> δ).
        min_candidates: >= 0; 0 disables the lowering.
        step: > 0, the lowering step.

    Returns:
        roi_index: int64 ``(P,)``; class_index: int64 ``(P,)`` in [0, K), sorted by RoI then
        class; the threshold used (float, δ or a lowered value).
    """
    check_unit_interval("class_scores", class_scores)
    if class_scores.dim() != 2:
        raise ValueError(f"class_scores must be (R, K), got shape {tuple(class_scores.shape)}")
    delta = check_number("delta", delta, 0.0, 1.0)
    min_candidates = check_optional_int("min_candidates", min_candidates, lo=0)
    if min_candidates is None:
        raise ValueError("min_candidates must be an int >= 0, not None")
    step = check_number("step", step, 0.0, lo_open=True)
    scores = class_scores.detach()
    threshold = delta
    # δ_k = δ − k·step, rounded (0.05 − 3·0.005 is not 0.035 in float); the last one is < 0
    for k in range(int(math.ceil(round(delta / step, 9))) + 2):
        threshold = round(delta - k * step, 10)
        if int((scores > threshold).sum()) >= min_candidates or threshold < 0:
            break
    roi_index, class_index = torch.nonzero(scores > threshold, as_tuple=True)
    return roi_index, class_index, threshold


def _check_detections(boxes, classes, confidence) -> torch.Tensor:
    check_boxes("boxes", boxes)
    n = boxes.shape[0]
    classes = check_index_tensor("classes", classes, n)
    check_unit_interval("confidence", confidence)
    if confidence.dim() != 1 or confidence.numel() != n:
        raise ValueError(
            f"confidence must be (N,) with N = {n} (one per box), got {tuple(confidence.shape)}"
        )
    return classes


def _nms(boxes, scores, classes, nms_thresh) -> torch.Tensor:
    """Per-class greedy NMS; the survivors by decreasing score (ties: lower index first)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # detectron2's batched_nms runs on float32 boxes, and torchvision wants the scores alike
    keep = batched_nms(boxes, scores.float(), classes.to(boxes.device), nms_thresh)
    order = torch.sort(-scores[keep], stable=True).indices  # batched_nms's order is not stable
    return keep[order]


def select_proposals(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    confidence: torch.Tensor,
    relatedness: torch.Tensor,
    nms_thresh: float = 0.3,
    score_thresh: float | None = None,
    top_n: int | None = None,
    keep_top1: bool = True,
) -> torch.Tensor:
    """Ref-NMS proposals of one expression: NMS on the fused score, then selection.

    1. s_i = r_i × c_i (:func:`~ref_nms.relatedness.fuse_scores`; paper, "Score Fusion").
    2. Per-class greedy NMS at ``nms_thresh`` on s (released: 0.3;
       ``detectron2.layers.batched_nms``).
    3. Selection of the survivors, sorted by decreasing s:

       - ``score_thresh`` (the release's ``threshold_with_confidence``): keep those with
         s > score_thresh (strict, as released), and always the top-1 when ``keep_top1``;
       - ``top_n``: the first N (Table 1's N = 100 rows);
       - both: the threshold rule, then at most N; neither: every survivor.

    Args:
        boxes: float ``(N, 4)`` class-specific candidate boxes (x1, y1, x2, y2), finite.
        classes: int64 ``(N,)``, the class of each candidate (NMS runs per class).
        confidence: c, float ``(N,)`` in [0, 1].
        relatedness: r = sigmoid(r̂), float ``(N,)`` in [0, 1].
        nms_thresh: IoU in [0, 1]; boxes with IoU > it with a kept box of the same class are
            suppressed.
        score_thresh: the selection threshold ``conf`` in [0, 1] or None. Its released value
            is not published; the README tunes it for about 8-10 proposals per expression.
        top_n: N >= 1 or None.
        keep_top1: always keep the best proposal under the threshold rule (released: True).

    Returns:
        int64 indices into the inputs, by decreasing fused score (ties: lower index first).
    """
    classes = _check_detections(boxes, classes, confidence)
    check_unit_interval("relatedness", relatedness)
    if relatedness.shape != confidence.shape:
        raise ValueError(
            f"relatedness must be (N,) like confidence {tuple(confidence.shape)}, got "
            f"{tuple(relatedness.shape)}"
        )
    nms_thresh = check_number("nms_thresh", nms_thresh, 0.0, 1.0)
    if score_thresh is not None:
        score_thresh = check_number("score_thresh", score_thresh, 0.0, 1.0)
    top_n = check_optional_int("top_n", top_n)
    fused = fuse_scores(relatedness, confidence).detach()
    keep = _nms(boxes.detach(), fused, classes, nms_thresh)
    if score_thresh is not None:
        passed = fused[keep] > score_thresh  # sorted, so this is "stop at the first failure"
        if keep_top1 and keep.numel():
            passed[0] = True
        keep = keep[passed]
    if top_n is not None:
        keep = keep[:top_n]
    return keep


def baseline_proposals(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    confidence: torch.Tensor,
    nms_thresh: float = 0.3,
    score_thresh: float = 0.65,
    lower_step: float | None = 0.1,
) -> torch.Tensor:
    """The proposals two-stage grounding methods use (the "Real case" of Table 1; MAttNet
    ``run_detect.py``, ref_nms.md §1.4): per-class greedy NMS at 0.3 on the detector's
    confidence, then keep c >= 0.65; when no detection passes, lower the threshold by 0.1 until
    some do (``lower_step=None`` disables this).

    NMS before or after the threshold gives the same boxes above it (greedy NMS visits the boxes
    by decreasing score), so candidates pre-filtered at δ = 0.05 give the same result.

    Args:
        boxes: float ``(N, 4)`` class-specific boxes (x1, y1, x2, y2), finite.
        classes: int64 ``(N,)`` class of each box.
        confidence: c, float ``(N,)`` in [0, 1].
        nms_thresh: IoU in [0, 1] (0.3).
        score_thresh: in [0, 1] (0.65); the test is c >= score_thresh.
        lower_step: > 0 or None.

    Returns:
        int64 indices into the inputs, by decreasing confidence (ties: lower index first).
    """
    classes = _check_detections(boxes, classes, confidence)
    nms_thresh = check_number("nms_thresh", nms_thresh, 0.0, 1.0)
    threshold = check_number("score_thresh", score_thresh, 0.0, 1.0)
    if lower_step is not None:
        lower_step = check_number("lower_step", lower_step, 0.0, lo_open=True)
    keep = _nms(boxes.detach(), confidence.detach(), classes, nms_thresh)
    if keep.numel() == 0:
        return keep
    scores = confidence.detach()[keep]
    k = 0
    while True:
        t = round(threshold - k * lower_step, 10) if lower_step else threshold
        passed = scores >= t
        if bool(passed.any()) or not lower_step or t <= 0:
            return keep[passed]
        k += 1
