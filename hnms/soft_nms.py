"""Soft-NMS (Bodla et al., ICCV 2017): the suppression the HNMS paper pre-filters in Appendix C.3.

Instead of discarding the boxes that overlap a kept box M, Soft-NMS decays their scores,
``s_i <- s_i * f(IoU(M, b_i))``, and repeats with the highest remaining score:

- linear: ``f = 1 - IoU`` if ``IoU >= iou_threshold`` (N_t), else 1;
- gaussian: ``f = exp(-IoU^2 / sigma)``.

After each decay step, every remaining box whose score is below ``score_threshold`` is dropped.

Threshold semantics (decided here, the same on both backends): Bodla et al.'s Algorithm 1 moves
the current maximum M to the output *before* anything is thresholded (the algorithm has no
threshold; their released code prunes decayed boxes below it, as mmcv's ``soft_nms`` does). So
the first box of every group (class) is output whatever its score, and every later box has a
score >= ``score_threshold``; the input is not pre-filtered by the threshold. A caller that
wants no output below the threshold filters ``scores >= score_threshold`` first (for such
input the two readings agree).

Every output box costs one pass over the remaining ones, so Soft-NMS is O(N^2) even when nothing
overlaps; this is why the paper's HNMS pre-filter speeds it up 2.5-8.6x on CPU (Table 4), against
1.1-1.5x for NMS.

Two backends give the same result: the compiled CPU kernel (``torch.ops.hnms.soft_nms``) and the
pure-torch reference :func:`soft_nms_reference` (any device; one Python step per output box).

Edge cases (identical on both backends):

- Scores must be finite or NaN (a multiplicative decay of +-inf is undefined; apply a sigmoid to
  logits). A NaN-scored box is dropped and decays nothing. A box whose score is below
  ``score_threshold`` (>= 0, so also a negative score that no decay has brought to -0.0) is
  output only if it is the best box of its group (then with its score unchanged); otherwise it
  is dropped after the group's first box is output.
- A box with a non-finite coordinate, a width or height <= 0 or an area that overflows float64
  has IoU 0 with every box: it is kept (if its score passes the threshold) with its score
  unchanged and decays nothing.
- Ties in score go to the lower index; everything is computed in float64.
"""

import math

import torch

from .ops import _check_boxes, _check_float, _check_idxs, _check_scores, use_compiled_kernel

__all__ = ["SOFT_NMS_METHODS", "soft_nms", "batched_soft_nms", "soft_nms_reference"]

SOFT_NMS_METHODS = ("linear", "gaussian")
#: The error for +-inf scores (the same text in the kernel, hnms/csrc/soft_nms_cpu.cpp).
INF_SCORES_MESSAGE = (
    "scores must be finite (or NaN, which is dropped), got +-inf; Soft-NMS multiplies scores by "
    "decay factors, so pass probabilities (e.g. scores.sigmoid() for logits)"
)


def _iou_with(box: torch.Tensor, area: torch.Tensor, boxes: torch.Tensor, areas: torch.Tensor):
    """IoU of one box with each of ``boxes`` (float64; 0 where the boxes do not intersect)."""
    iw = torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])
    ih = torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])
    hit = (iw > 0) & (ih > 0)
    inter = iw * ih
    iou = inter / ((area + areas) - inter)
    return torch.where(hit, iou, torch.zeros_like(iou))


def _prepare_boxes(boxes: torch.Tensor):
    """float64 boxes with invalid ones replaced by an empty interval, and their areas."""
    b = boxes.to(torch.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    # the area must be finite too: one that overflows (1e30 x 1e300) would give NaN IoUs
    valid = torch.isfinite(b).all(dim=1) & (w > 0) & (h > 0) & torch.isfinite(w * h)
    inf = float("inf")
    empty = torch.tensor([inf, inf, -inf, -inf], dtype=torch.float64, device=b.device)
    b = torch.where(valid[:, None], b, empty)
    areas = torch.where(valid, w * h, torch.zeros_like(w))
    return b, areas


def soft_nms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs,
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
):
    """Pure-torch Soft-NMS per group (``idxs`` or None); arguments already checked.

    Returns (int64 keep [K], float64 decayed scores [K]), sorted by decreasing decayed score.
    """
    device = boxes.device
    b, areas = _prepare_boxes(boxes)
    s = scores.to(torch.float64)
    groups = idxs if idxs is not None else torch.zeros_like(s, dtype=torch.int64)
    out_idx, out_score = [], []
    for g in torch.unique(groups).tolist():
        # every non-NaN score: the maximum is output before thresholding (Bodla et al.)
        members = torch.nonzero((groups == g) & ~torch.isnan(s)).flatten()  # index order
        gb, ga, gs = b[members], areas[members], s[members].clone()
        alive = torch.ones_like(gs, dtype=torch.bool)
        while bool(alive.any()):
            # argmax returns the first maximum: the lowest index among equal scores
            m = int(torch.argmax(torch.where(alive, gs, torch.full_like(gs, -math.inf))))
            out_idx.append(members[m])
            out_score.append(gs[m])
            alive[m] = False
            iou = _iou_with(gb[m], ga[m], gb, ga)
            if method == "linear":
                decay = torch.where(iou >= iou_threshold, 1.0 - iou, torch.ones_like(iou))
                decayed = gs * decay
            else:
                decayed = gs * torch.exp(-(iou * iou) * (1.0 / sigma))
            # Only intersecting boxes change (f = 1 otherwise), as in the kernel.
            gs = torch.where(alive & (iou > 0), decayed, gs)
            alive &= gs >= score_threshold
    if not out_idx:
        empty = torch.empty((0,), dtype=torch.int64, device=device)
        return empty, torch.empty((0,), dtype=torch.float64, device=device)
    keep = torch.stack(out_idx)
    new_scores = torch.stack(out_score)
    # decreasing score, lower index first: sort by index, then stably by score
    by_index = torch.argsort(keep)
    keep, new_scores = keep[by_index], new_scores[by_index]
    by_score = torch.sort(new_scores, descending=True, stable=True).indices
    return keep[by_score], new_scores[by_score]


def _soft_nms(boxes, scores, idxs, method, sigma, iou_threshold, score_threshold, backend):
    boxes = _check_boxes(boxes)
    scores = _check_scores(scores, boxes)
    if idxs is not None:
        idxs = _check_idxs(idxs, boxes)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    sigma = _check_float(sigma, "sigma", 0.0, fix="; Bodla et al. use sigma = 0.5")
    iou_threshold = _check_float(iou_threshold, "iou_threshold")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold (N_t) must be in [0, 1], got {iou_threshold}")
    score_threshold = _check_float(score_threshold, "score_threshold")
    if score_threshold < 0.0:
        raise ValueError(
            f"score_threshold must be >= 0, got {score_threshold}; Soft-NMS decays scores "
            "multiplicatively, which needs non-negative scores (e.g. 0.001)"
        )
    if use_compiled_kernel(backend, boxes.device, cuda_kernel=False):
        # the kernel rejects +-inf scores with the ValueError below (in a traced model too)
        groups = idxs if idxs is not None else boxes.new_empty((0,), dtype=torch.int64)
        code = SOFT_NMS_METHODS.index(method)
        keep, new_scores = torch.ops.hnms.soft_nms(
            boxes, scores, groups, code, sigma, iou_threshold, score_threshold
        )
    else:
        if bool(torch.isinf(scores).any()):
            raise ValueError(INF_SCORES_MESSAGE)
        keep, new_scores = soft_nms_reference(
            boxes, scores, idxs, method, sigma, iou_threshold, score_threshold
        )
    return keep, new_scores.to(scores.dtype)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    *,
    backend: str = "auto",
):
    """Soft-NMS of Bodla et al.: decay the scores of the boxes overlapping each selected box.

    Args:
        boxes: [N, 4] float tensor (x1, y1, x2, y2); float16/bfloat16/float32/float64.
        scores: [N] float tensor on the same device; finite or NaN (see the module docstring).
        method: "gaussian" (f = exp(-IoU^2 / sigma)) or "linear" (f = 1 - IoU if IoU >= N_t).
        sigma: σ of the Gaussian decay (> 0; Bodla et al.: 0.5).
        iou_threshold: N_t of the linear decay, in [0, 1] (Bodla et al.: 0.3); unused by
            "gaussian".
        score_threshold: after each output box, the remaining boxes whose (decayed) score is
            below it are dropped (>= 0; 0.001). The best box is output before this pruning, so
            the first output box may score below it (see the module docstring).
        backend: "auto" (the compiled CPU kernel for CPU tensors, else torch), "ext" or "torch".
    Returns:
        (keep, new_scores): int64 [K] indices into ``boxes`` sorted by decreasing decayed score
        (lower index first on ties), and their decayed scores [K] in ``scores``' dtype. Empty
        only when every score is NaN (or N = 0).
    """
    return _soft_nms(boxes, scores, None, method, sigma, iou_threshold, score_threshold, backend)


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    *,
    backend: str = "auto",
):
    """:func:`soft_nms` separately within each group (class) given by ``idxs``.

    Boxes of different groups never decay each other, and the best box of every group is output
    whatever its score. Arguments and result as in :func:`soft_nms`; ``idxs`` is an [N] integer
    tensor on the same device.
    """
    return _soft_nms(boxes, scores, idxs, method, sigma, iou_threshold, score_threshold, backend)
