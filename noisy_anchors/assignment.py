"""Candidate-positive assignment of Noisy Anchors: the top-N anchors of each ground truth.

Alg. 1, lines 2-6: for every ground-truth box, sort the anchors by their IoU with it (before any
box refinement) and take the first N as candidate positives ``A_pos``; every other anchor is a
negative (``A_neg``, label 0, weight 1). There are no IoU thresholds and no ignore band.

The paper leaves three cases open; this module decides them as follows (and the tests pin them):

- **Ties** at the N-th place are broken by anchor index (the lowest indices win), so exactly
  ``min(N, #anchors)`` anchors are taken per ground truth and the result is deterministic on
  every device.
- **Small objects** that overlap fewer than N anchors get only the anchors that overlap them
  (IoU > ``min_iou``, 0 by default). Anchors with zero IoU are never positives: they carry no
  information about the object (the released code takes them and maps them to ground truth 0).
- An anchor in the **top-N of two ground truths** is matched to the one of those with the higher
  IoU (ties: the lower ground-truth index). It is one positive, counted once.
"""

from __future__ import annotations

import torch

__all__ = ["topn_anchor_assignment", "TopNMatcher"]


def topn_anchor_assignment(
    match_quality_matrix: torch.Tensor, top_n: int, min_iou: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label anchors by the top-N rule of Alg. 1 (lines 2-6).

    Args:
        match_quality_matrix: float tensor of shape (G, A): IoU of each of G ground-truth boxes
            with each of A anchors (detectron2's ``pairwise_iou(gt_boxes, anchors)``), values in
            [0, 1]. G may be 0 (image without ground truth) and A may be 0.
        top_n: N, the number of candidate positives per ground truth (>= 1).
        min_iou: an anchor is a candidate for a ground truth only if its IoU with it is strictly
            greater than this (default 0: any overlap), in [0, 1).

    Returns:
        matched_idxs: int64 tensor of shape (A,): for positives, the index in [0, G) of the
            ground truth the anchor is assigned to; 0 for negatives (and when G == 0), so that
            indexing the ground truth with it is always valid.
        labels: int8 tensor of shape (A,): 1 for candidate positives, 0 for negatives. Never -1.
    """
    if not isinstance(match_quality_matrix, torch.Tensor):
        raise TypeError(
            "match_quality_matrix must be a torch.Tensor, got "
            f"{type(match_quality_matrix).__name__}"
        )
    if match_quality_matrix.dim() != 2:
        raise ValueError(
            f"match_quality_matrix must have shape (G, A), got {tuple(match_quality_matrix.shape)}"
        )
    if not match_quality_matrix.is_floating_point():
        raise ValueError(
            f"match_quality_matrix must be floating point, got {match_quality_matrix.dtype}"
        )
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
    if not 0.0 <= float(min_iou) < 1.0:
        raise ValueError(f"min_iou must be in [0, 1), got {min_iou!r}")

    num_gt, num_anchors = match_quality_matrix.shape
    device = match_quality_matrix.device
    matched_idxs = torch.zeros(num_anchors, dtype=torch.int64, device=device)
    labels = torch.zeros(num_anchors, dtype=torch.int8, device=device)
    if num_gt == 0 or num_anchors == 0:
        return matched_idxs, labels
    if not torch.isfinite(match_quality_matrix).all():
        raise ValueError("match_quality_matrix contains NaN or inf")

    quality = match_quality_matrix
    k = min(top_n, num_anchors)
    # Alg. 1 line 3: argsort(IoU(B, gt)) in descending order; line 4: keep indices[0:N].
    # The N-th largest IoU of each ground truth; anchors strictly above it are in, anchors equal
    # to it fill the remaining places in order of anchor index (deterministic tie-break).
    kth = quality.topk(k, dim=1).values[:, -1:]  # (G, 1)
    above = quality > kth
    tied = quality == kth
    places_left = k - above.sum(dim=1, keepdim=True)  # (G, 1), >= 1
    tie_rank = torch.cumsum(tied, dim=1, dtype=torch.int32)  # 1-based rank among the ties
    selected = above | (tied & (tie_rank <= places_left))
    # Small objects: only anchors that overlap the ground truth are candidates.
    selected &= quality > min_iou

    # An anchor chosen by several ground truths goes to the one with the highest IoU; torch.max
    # returns the first (lowest) index among equal maxima.
    masked = torch.where(selected, quality, quality.new_full((), -1.0))
    best_quality, best_gt = masked.max(dim=0)
    positive = best_quality >= 0
    matched_idxs = torch.where(positive, best_gt, matched_idxs)
    labels[positive] = 1
    return matched_idxs, labels


class TopNMatcher:
    """A drop-in for detectron2's ``Matcher`` that applies :func:`topn_anchor_assignment`.

    RetinaNet's ``label_anchors`` and the RPN's ``label_and_sample_anchors`` call
    ``self.anchor_matcher(match_quality_matrix)`` and expect ``(matched_idxs, labels)`` with labels
    in {-1, 0, 1}; this matcher returns labels in {0, 1} (no ignore band, Alg. 1 line 6).
    """

    def __init__(self, top_n: int, min_iou: float = 0.0):
        """
        Args:
            top_n: N, candidate positives per ground truth (Alg. 1, Table 4b), >= 1.
            min_iou: minimum IoU (exclusive) for an anchor to be a candidate, in [0, 1).
        """
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
        if not 0.0 <= float(min_iou) < 1.0:
            raise ValueError(f"min_iou must be in [0, 1), got {min_iou!r}")
        self.top_n = top_n
        self.min_iou = float(min_iou)

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`topn_anchor_assignment`; returns ``(matched_idxs, labels)``."""
        return topn_anchor_assignment(match_quality_matrix, self.top_n, self.min_iou)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(top_n={self.top_n}, min_iou={self.min_iou})"
