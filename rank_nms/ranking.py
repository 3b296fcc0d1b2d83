"""The learning-to-rank parts of Rank-NMS (Tan et al., ICCV 2019) as plain functions.

- :func:`quantize_iou`: the IoU levels of Eq. (3), "splitting" the boxes into subsets S_0..S_k;
- :func:`sample_pairs`: Algorithm 1, "sampling after splitting" (hard pairs: every box of level
  i against the top-h boxes, by predicted score, of all lower levels);
- :func:`full_pairs`: every pair that satisfies Eq. (1), ρ_i < ρ_j (Table 4's "full-pair");
- :func:`ranking_loss`: the pairwise hinge of Eq. (2);
- :func:`fuse_scores`: Eq. (4), the score NMS sorts by.

Conventions: a pair is (pos, neg), ``pos`` the higher-IoU box b_j and ``neg`` the lower-IoU box
b_i of Eq. (2). ``groups`` keeps pairs inside one image (or one ground truth): no pair joins two
groups. Everything is deterministic; equal scores go to the lower index.

``ref_nms`` reuses these functions with its own origin, level width and margin (Ref-NMS adopts
Tan et al.'s sampling for its ranking loss, Eq. (4) of that paper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_NORMALIZATIONS",
    "num_iou_levels",
    "quantize_iou",
    "sample_pairs",
    "full_pairs",
    "ranking_loss",
    "fuse_scores",
]

LOSS_NORMALIZATIONS = ("pairs", "image", "violating")


def _check_tensor(name: str, x, ndim: int, floating: bool | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")


def _check_no_nan(name: str, x: torch.Tensor) -> None:
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN (at index {int(torch.isnan(x).nonzero()[0, 0])})")


def num_iou_levels(origin: float = 0.5, width: float = 0.05) -> int:
    """k + 1, the number of subsets S_0..S_k of Eq. (3): 11 for the paper's 0.5 and 0.05.

    Level 0 holds IoU <= origin; levels 1..k split (origin, 1] into intervals of ``width`` (the
    last one may be shorter).
    """
    if not 0.0 <= origin < 1.0:
        raise ValueError(f"origin must be in [0, 1), got {origin!r}")
    if not width > 0.0:
        raise ValueError(f"width must be > 0, got {width!r}")
    # round() first: (1 - 0.5) / 0.05 is 9.999999999999998 in float64
    return 1 + math.ceil(round((1.0 - origin) / width, 9))


def _level_thresholds(origin: float, width: float, dtype, device) -> torch.Tensor:
    """t_m = origin + m·width for m = 0..k-1, rounded to decimals first, in ``dtype``."""
    k = num_iou_levels(origin, width) - 1
    values = [round(origin + m * width, 10) for m in range(k)]
    return torch.tensor(values, dtype=dtype, device=device)


def quantize_iou(iou: torch.Tensor, origin: float = 0.5, width: float = 0.05) -> torch.Tensor:
    """Eq. (3): q(ρ) = ⌈max(0, ρ − origin) / width⌉, the subset index of each box.

    Computed as the number of thresholds t_m = origin + m·width (m = 0..k-1) strictly below ρ,
    with the thresholds written as decimals in ρ's dtype. This is exact at the boundaries (IoU
    0.55 is level 1, 0.80 level 6, in float32 and float64 alike), where the literal float
    formula is not (float64 ``ceil(0.05 / 0.05)`` of 0.55 − 0.5 gives 2).

    Args:
        iou: float tensor of any shape, values in [0, 1] (values above 1 go to the last level).
        origin: the IoU at and below which a box is level 0 (0.5 in the paper).
        width: the level width (0.05 in the paper; Ref-NMS uses 0.1).

    Returns:
        int64 tensor of ``iou``'s shape, values in 0..k (k = 10 by default).
    """
    if not isinstance(iou, torch.Tensor) or not iou.is_floating_point():
        raise TypeError(f"iou must be a floating-point tensor, got {getattr(iou, 'dtype', iou)!r}")
    _check_no_nan("iou", iou.flatten())
    thresholds = _level_thresholds(origin, width, iou.dtype, iou.device)
    # bucketize(right=False) counts the boundaries strictly below each value
    return torch.bucketize(iou.contiguous(), thresholds, right=False)


def _group_ids(groups: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if groups is None:
        return torch.zeros(n, dtype=torch.int64, device=device)
    _check_tensor("groups", groups, 1, floating=False)
    if groups.numel() != n:
        raise ValueError(f"groups must have one entry per box ({n}), got {groups.numel()}")
    return groups.to(torch.int64)


def _empty_pairs(device) -> tuple[torch.Tensor, torch.Tensor]:
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return empty, empty.clone()


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing score; equal scores keep increasing index order."""
    # A stable ascending sort of the negated scores keeps ties in index order.
    return torch.sort(-scores, stable=True).indices


def sample_pairs(
    levels: torch.Tensor,
    scores: torch.Tensor,
    top_h: int | None,
    groups: torch.Tensor | None = None,
    skip_short_levels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (sampling after splitting): the hard pairs of each group (image).

    For each level i >= 1 of a group: Pos_i = the boxes of level i; U_i = the boxes of levels
    0..i-1, sorted by decreasing predicted score; Neg_i = the first ``top_h`` of U_i (all of U_i
    if it is shorter, or none if ``skip_short_levels``); C_i = Pos_i × Neg_i. Returns C_1 ∪ ... ∪
    C_k (the paper's "C_i ∪ ··· ∪ C_k" is a typo). Empty levels give no pairs.

    Args:
        levels: int64 (N,), the level q of each box (:func:`quantize_iou`).
        scores: float (N,), the predicted ranking scores r (only their order is used; no
            gradient flows through the sampling).
        top_h: h >= 1, or None for every lower-level box (the cross-level "all_levels" pairs).
        groups: int64 (N,) group id per box (e.g. image index), or None for one group.
        skip_short_levels: skip a level whose U_i has fewer than h boxes (a variant seen in
            related code) instead of taking all of them (the paper's wording).

    Returns:
        (pos, neg): int64 index tensors of equal length, pos[p] of a higher level than neg[p],
        in order of group, level, positive index, then negative by decreasing score.
    """
    _check_tensor("levels", levels, 1, floating=False)
    _check_tensor("scores", scores, 1, floating=True)
    if scores.numel() != levels.numel():
        raise ValueError(
            f"scores ({scores.numel()}) and levels ({levels.numel()}) must have one entry per box"
        )
    if top_h is not None and (isinstance(top_h, bool) or int(top_h) != top_h or top_h < 1):
        raise ValueError(f"top_h (h) must be an integer >= 1 or None (all), got {top_h!r}")
    _check_no_nan("scores", scores)
    device = levels.device
    groups = _group_ids(groups, levels.numel(), device)
    if levels.numel() == 0:
        return _empty_pairs(device)
    scores = scores.detach()
    pos_out, neg_out = [], []
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()  # increasing index
        by_score = members[_descending_order(scores[members])]
        level_by_score = levels[by_score]
        for i in torch.unique(levels[members]).tolist():
            if i < 1:
                continue
            pos = members[levels[members] == i]
            lower = by_score[level_by_score < i]  # U_i, by decreasing score
            if top_h is not None:
                if skip_short_levels and lower.numel() < top_h:
                    continue
                lower = lower[:top_h]
            if lower.numel() == 0:
                continue
            pos_out.append(pos.repeat_interleave(lower.numel()))
            neg_out.append(lower.repeat(pos.numel()))
    if not pos_out:
        return _empty_pairs(device)
    return torch.cat(pos_out), torch.cat(neg_out)


def full_pairs(
    iou: torch.Tensor, groups: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of Eq. (1) in a group: (j, i) with ρ_i < ρ_j strictly (Table 4's "full-pair").

    Equal IoUs form no pair (with Eq. (2)'s ≤ a tie would count twice, in both directions, and
    its gradients would cancel). Memory is O(n²) per group.

    Args:
        iou: float (N,), each box's IoU with its ground truth.
        groups: int64 (N,) group ids, or None.

    Returns:
        (pos, neg) int64 index tensors, ordered by group, then pos index, then neg index.
    """
    _check_tensor("iou", iou, 1, floating=True)
    _check_no_nan("iou", iou)
    device = iou.device
    groups = _group_ids(groups, iou.numel(), device)
    pos_out, neg_out = [], []
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        r = iou[members]
        j, i = torch.nonzero(r[:, None] > r[None, :], as_tuple=True)
        pos_out.append(members[j])
        neg_out.append(members[i])
    if not pos_out:
        return _empty_pairs(device)
    return torch.cat(pos_out), torch.cat(neg_out)


def ranking_loss(
    scores: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    margin: float = 0.5,
    normalization: str = "pairs",
    pair_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2): L = (1/N) Σ_pairs max(0, R(b_i) − R(b_j) + α), b_j = pos, b_i = neg.

    The hinge is ``F.relu`` (gradient 0 exactly at the kink). L depends only on score
    differences, so every pair adds +g to one box and −g to the other: the gradient sums to zero
    over the boxes, and the bias of a linear output layer receives no gradient from L.

    Args:
        scores: float (N,), the ranking scores R(f(b)) (raw or squashed by the caller).
        pos, neg: int64 (P,) pair indices into ``scores`` (:func:`sample_pairs`).
        margin: α >= 0, the ranking margin of Eq. (1) (0.5 in the paper).
        normalization: N of Eq. (2): "pairs" (all pairs of the batch, the paper's), "image" (the
            mean of each image's pair mean; needs ``pair_groups``), or "violating" (the number of
            pairs with a positive hinge, at least 1).
        pair_groups: int64 (P,), the image of each pair, for "image".

    Returns:
        A scalar; 0 connected to ``scores``' graph when there is no pair.
    """
    _check_tensor("scores", scores, 1, floating=True)
    _check_tensor("pos", pos, 1, floating=False)
    _check_tensor("neg", neg, 1, floating=False)
    if pos.numel() != neg.numel():
        raise ValueError(f"pos ({pos.numel()}) and neg ({neg.numel()}) must have equal length")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin (α) must be a finite number >= 0, got {margin!r}")
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {', '.join(LOSS_NORMALIZATIONS)}; got {normalization!r}"
        )
    _check_no_nan("scores", scores.detach())
    if pos.numel() == 0:
        return scores.sum() * 0.0
    hinge = F.relu(scores[neg] - scores[pos] + margin)
    if normalization == "pairs":
        return hinge.mean()
    if normalization == "violating":
        return hinge.sum() / (hinge.detach() > 0).sum().clamp(min=1)
    if pair_groups is None:
        raise ValueError('normalization "image" needs pair_groups (the image of each pair)')
    _check_tensor("pair_groups", pair_groups, 1, floating=False)
    if pair_groups.numel() != pos.numel():
        raise ValueError("pair_groups must have one entry per pair")
    _, inverse, counts = torch.unique(pair_groups, return_inverse=True, return_counts=True)
    per_group = torch.zeros(counts.numel(), dtype=hinge.dtype, device=hinge.device)
    per_group = per_group.index_add(0, inverse, hinge) / counts.to(hinge.dtype)
    return per_group.mean()


def fuse_scores(rank: torch.Tensor, cls: torch.Tensor, beta: float = 0.15) -> torch.Tensor:
    """Eq. (4): s = β·s_r + (1 − β)·s_c, the score NMS sorts by.

    Args:
        rank: float (R,), s_r, one class-agnostic ranking score per box (broadcast over classes).
        cls: float (R, K) (or (R,)), s_c, the classification probabilities.
        beta: β in [0, 1] (0.15 in the paper). β = 0 returns ``cls`` exactly (NMS-Cls of
            Table 7), β = 1 the rank score for every class (NMS-LTR).

    Returns:
        float tensor of ``cls``' shape. Raw rank scores are unbounded, so s may lie outside
        [0, 1].
    """
    _check_tensor("rank", rank, 1, floating=True)
    if not isinstance(cls, torch.Tensor) or not cls.is_floating_point() or cls.dim() not in (1, 2):
        raise ValueError(f"cls must be a 1-D or 2-D float tensor, got {getattr(cls, 'shape', cls)}")
    if not torch.jit.is_tracing() and cls.shape[0] != rank.shape[0]:  # sizes: traced values
        raise ValueError(f"rank ({rank.shape[0]}) and cls ({cls.shape[0]}) must have equal length")
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta (β) must be a number in [0, 1], got {beta!r}")
    r = rank if cls.dim() == 1 else rank[:, None]
    if beta == 0:
        return cls.clone()
    if beta == 1:
        return r.expand_as(cls).clone()
    return beta * r + (1.0 - beta) * cls
