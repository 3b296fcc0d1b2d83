"""Training objectives of Ref-NMS (paper, "Training Objectives for Ref-NMS"): relatedness labels
from the foreground boxes (referent + pseudo ground truth), the binary cross-entropy of Eq. (3)
and the ranking loss of Eq. (4).

The ranking loss is Tan et al.'s sampling after splitting, taken from :mod:`rank_nms.ranking`
(:func:`~rank_nms.ranking.quantize_iou`, :func:`~rank_nms.ranking.sample_pairs`,
:func:`~rank_nms.ranking.ranking_loss`) with Ref-NMS's parameters: levels of width 0.1 from IoU
0.5 (6 subsets), top-h = 100, margin m = 0.1 (the paper's α of Eq. (4)).

Paper vs released code (ref_nms.md §2.1, §2.3, §4.1):

============================  =================================  ================================
choice                        paper                              release
============================  =================================  ================================
positive label                IoU > 0.5 (default here)           IoU >= 0.5 (``inclusive=True``)
BCE boxes                     every box of B, Eq. (3) (default)  32 per expression, <= 16 positive
                                                                 (``sampling="release"``)
ranking boxes                 every box of B (default)           150 of level 0 + 10 per level
                                                                 (:func:`sample_rank_proposals`),
                                                                 missing ones synthesised by
                                                                 jittering (not done here)
ranking scores                r = sigmoid(r̂) (Eq. (4))           sigmoid(r̂): the same
ranking normalisation         N = number of pairs                mean over all pairs of the batch
level of ρ = 0.8              3 (exact ⌈0.3 / 0.1⌉)              4 (float round-off); here 3
============================  =================================  ================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rank_nms.ranking import quantize_iou, ranking_loss, sample_pairs

from ._checks import (
    check_boxes,
    check_float_tensor,
    check_index_tensor,
    check_number,
    check_optional_int,
    check_unit_interval,
)

__all__ = [
    "BCE_REDUCTIONS",
    "BCE_SAMPLINGS",
    "RANK_NORMALIZATIONS",
    "bce_loss",
    "box_iou",
    "rank_loss",
    "relatedness_targets",
    "sample_bce_proposals",
    "sample_rank_proposals",
]

BCE_SAMPLINGS = ("all", "release")
BCE_REDUCTIONS = ("expression", "box")
RANK_NORMALIZATIONS = ("pairs", "expression", "violating")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU ``(N, M)`` of (x1, y1, x2, y2) boxes, continuous coordinates, in the dtype of the inputs
    (promoted); 0 where the boxes do not intersect (also for zero-area boxes)."""
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    a, b = boxes1.to(dtype), boxes2.to(dtype)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(inter > 0, inter / torch.where(inter > 0, union, 1.0), 0.0)


def relatedness_targets(
    proposal_boxes: torch.Tensor,
    critical_boxes: torch.Tensor,
    iou_threshold: float = 0.5,
    inclusive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r*_i of Eq. (3) and ρ_i of Eq. (4) for the candidates of one expression.

    A candidate is positive (r* = 1) when its IoU with any foreground box (the referent and the
    pseudo ground truth of the expression) is > ``iou_threshold`` (the paper's "IoU>0.5"); the
    released code uses >= (``inclusive=True``, ref_nms.md §4.1 #4). The two differ only at an IoU
    of exactly 0.5 (T2: (0,0,10,10) vs (0,0,10,5)).

    Args:
        proposal_boxes: float ``(N, 4)`` candidate boxes b_i (x1, y1, x2, y2), finite.
        critical_boxes: float ``(M, 4)`` foreground boxes, same coordinates; M = 0 gives all
            negatives.
        iou_threshold: in [0, 1] (0.5).
        inclusive: use >= instead of >.

    Returns:
        targets: float ``(N,)`` in {0, 1}, in ``proposal_boxes``' dtype.
        max_iou: ρ, float ``(N,)`` in [0, 1], each candidate's largest IoU with a foreground box.
    """
    check_boxes("proposal_boxes", proposal_boxes)
    check_boxes("critical_boxes", critical_boxes)
    iou_threshold = check_number("iou_threshold", iou_threshold, 0.0, 1.0)
    n = proposal_boxes.shape[0]
    if critical_boxes.shape[0] == 0:
        max_iou = proposal_boxes.new_zeros(n)
    else:
        critical_boxes = critical_boxes.to(proposal_boxes.device)
        max_iou = box_iou(proposal_boxes, critical_boxes).max(dim=1).values
        max_iou = max_iou.to(proposal_boxes.dtype)
    positive = max_iou >= iou_threshold if inclusive else max_iou > iou_threshold
    return positive.to(proposal_boxes.dtype), max_iou


def _groups(expr_index, n: int, device) -> torch.Tensor:
    if expr_index is None:
        return torch.zeros(n, dtype=torch.int64, device=device)
    return check_index_tensor("expr_index", expr_index, n).to(device)


def sample_bce_proposals(
    targets: torch.Tensor,
    expr_index: torch.Tensor | None = None,
    num_samples: int = 32,
    max_positive: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The released BCE sampling (``DetBoxDataset``, ref_nms.md §2.3, T2), per expression:
    pos = min(#pos, max_positive); neg = min(#neg, num_samples − pos); pos = min(#pos,
    num_samples − neg), drawn uniformly without replacement. An expression with fewer than
    ``num_samples`` candidates keeps all of them (the release lowers δ until 32 pass, and would
    fail otherwise).

    Args:
        targets: float ``(N,)`` r* in {0, 1} (positive: > 0.5).
        expr_index: int64 ``(N,)``, the expression of each candidate, or None for one.
        num_samples: candidates per expression (released: 32).
        max_positive: at most this many positives, if there are enough negatives (16).
        generator: the random generator (None: torch's global one).

    Returns:
        int64 indices into ``targets``: per expression (in increasing id), its positives then its
        negatives, each in random order.
    """
    check_unit_interval("targets", targets)
    if targets.dim() != 1:
        raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
    num_samples = check_optional_int("num_samples", num_samples)
    max_positive = check_optional_int("max_positive", max_positive, lo=0)
    if num_samples is None or max_positive is None:
        raise ValueError("num_samples and max_positive must be ints, not None")
    groups = _groups(expr_index, targets.numel(), targets.device)
    out = []
    for g in torch.unique(groups).tolist():
        members = (groups == g).nonzero().flatten()
        pos = members[targets[members] > 0.5]
        neg = members[targets[members] <= 0.5]
        n_pos = min(pos.numel(), max_positive)
        n_neg = min(neg.numel(), num_samples - n_pos)
        n_pos = min(pos.numel(), num_samples - n_neg)
        perm_p = torch.randperm(pos.numel(), generator=generator)[:n_pos].to(pos.device)
        perm_n = torch.randperm(neg.numel(), generator=generator)[:n_neg].to(neg.device)
        out += [pos[perm_p], neg[perm_n]]
    if not out:
        return torch.zeros(0, dtype=torch.int64, device=targets.device)
    return torch.cat(out)


def bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    expr_index: torch.Tensor | None = None,
    sampling: str = "all",
    reduction: str = "expression",
    num_samples: int = 32,
    max_positive: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. (3): L = −(1/|B|) Σ_i [r*_i log r_i + (1 − r*_i) log(1 − r_i)], r_i = sigmoid(r̂_i).

    Computed from the logits (``binary_cross_entropy_with_logits``, numerically stable).

    Args:
        logits: r̂, float ``(N,)``, finite.
        targets: r*, float ``(N,)`` in [0, 1] (:func:`relatedness_targets`).
        expr_index: int64 ``(N,)``, the expression of each candidate (None: one expression).
        sampling: which candidates enter the loss: ``"all"`` (the paper: every box of B) or
            ``"release"`` (:func:`sample_bce_proposals`: 32 per expression, <= 16 positive; the
            release samples before computing features, which a data pipeline can do by calling
            that function itself and passing ``sampling="all"`` here).
        reduction: ``"expression"`` (Eq. (3) per expression, then the mean over the batch's
            expressions: the paper's loss per expression, every expression weighted equally) or
            ``"box"`` (the mean over all candidates of the batch, the release's
            ``BCEWithLogitsLoss(reduction='mean')``; identical when every expression has the
            same number of candidates, as with the release's sampling).
        num_samples, max_positive, generator: for ``sampling="release"``.

    Returns:
        A scalar; 0 connected to ``logits``' graph when there is no candidate.
    """
    check_float_tensor("logits", logits, ndim=1)
    check_unit_interval("targets", targets)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} must have the shape of logits {tuple(logits.shape)}"
        )
    if sampling not in BCE_SAMPLINGS:
        raise ValueError(f"sampling must be one of {BCE_SAMPLINGS}, got {sampling!r}")
    if reduction not in BCE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {BCE_REDUCTIONS}, got {reduction!r}")
    groups = _groups(expr_index, logits.numel(), logits.device)
    if sampling == "release":
        keep = sample_bce_proposals(targets, groups, num_samples, max_positive, generator)
        logits, targets, groups = logits[keep], targets[keep], groups[keep]
    if logits.numel() == 0:
        return logits.sum() * 0.0
    terms = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if reduction == "box":
        return terms.mean()
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    per_expr = terms.new_zeros(counts.numel()).index_add(0, inverse, terms)
    return (per_expr / counts.to(terms.dtype)).mean()


def sample_rank_proposals(
    max_iou: torch.Tensor,
    expr_index: torch.Tensor | None = None,
    num_negative: int = 150,
    per_level: int = 10,
    origin: float = 0.5,
    width: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The released RoI set of the ranking loss (``RankDataset.get_roi_list``, ref_nms.md §2.3),
    per expression: ``num_negative`` candidates of level 0 (ρ <= origin) and ``per_level`` of each
    level >= 1, uniformly without replacement. A level with fewer candidates keeps all of them;
    the release instead synthesises the missing boxes by jittering a foreground box, which needs
    the image and is left to the data pipeline.

    Args:
        max_iou: ρ, float ``(N,)`` in [0, 1].
        expr_index: int64 ``(N,)`` or None (one expression).
        num_negative: released 150.
        per_level: released 10 (levels 1..5).
        origin, width: the levels of :func:`rank_nms.ranking.quantize_iou` (0.5, 0.1).
        generator: the random generator.

    Returns:
        int64 indices into ``max_iou``, per expression (increasing id) by increasing level, in
        random order within a level (the release's layout: negatives first).
    """
    check_unit_interval("max_iou", max_iou)
    if max_iou.dim() != 1:
        raise ValueError(f"max_iou must be 1-D, got shape {tuple(max_iou.shape)}")
    num_negative = check_optional_int("num_negative", num_negative, lo=0)
    per_level = check_optional_int("per_level", per_level, lo=0)
    if num_negative is None or per_level is None:
        raise ValueError("num_negative and per_level must be ints, not None")
    levels = quantize_iou(max_iou, origin, width)
    groups = _groups(expr_index, max_iou.numel(), max_iou.device)
    out = []
    for g in torch.unique(groups).tolist():
        members = (groups == g).nonzero().flatten()
        for level in torch.unique(levels[members]).tolist():
            idx = members[levels[members] == level]
            k = num_negative if level == 0 else per_level
            perm = torch.randperm(idx.numel(), generator=generator)[:k].to(idx.device)
            out.append(idx[perm])
    if not out:
        return torch.zeros(0, dtype=torch.int64, device=max_iou.device)
    return torch.cat(out)


def rank_loss(
    logits_or_scores: torch.Tensor,
    max_iou: torch.Tensor,
    expr_index: torch.Tensor | None = None,
    margin: float = 0.1,
    origin: float = 0.5,
    width: float = 0.1,
    top_h: int | None = 100,
    use_sigmoid: bool = True,
    normalization: str = "pairs",
    skip_short_levels: bool = False,
) -> torch.Tensor:
    """Eq. (4): L = (1/N) Σ_{(b_i, b_j): ρ_i < ρ_j} max(0, r_i − r_j + m), pairs sampled after
    splitting (Tan et al.), by :mod:`rank_nms.ranking`.

    1. Levels q_i = ⌈max(0, ρ_i − origin) / width⌉ (:func:`rank_nms.ranking.quantize_iou`): 6
       subsets for 0.5 / 0.1, exact at the boundaries (ρ = 0.8 is level 3; the released float
       formula gives 4).
    2. Pairs (:func:`rank_nms.ranking.sample_pairs`, groups = expressions): every candidate of
       level >= 1 (ρ > 0.5) against the top-h candidates, by predicted score, of the lower levels
       of its own expression.
    3. Hinge (:func:`rank_nms.ranking.ranking_loss`) on r = sigmoid(r̂), as in the paper (r_i of
       Eq. (2)) and the release (``sigmoid(scores)`` before ``RankLoss``).

    Args:
        logits_or_scores: float ``(N,)``: the logits r̂ (``use_sigmoid=True``) or the scores to
            rank directly (``use_sigmoid=False``).
        max_iou: ρ, float ``(N,)`` in [0, 1] (:func:`relatedness_targets`).
        expr_index: int64 ``(N,)``, the expression of each candidate; pairs never cross
            expressions. None: one expression.
        margin: m >= 0 (the paper's α of Eq. (4): 0.1).
        origin, width: level origin and width (0.5, 0.1).
        top_h: h >= 1 (100), or None for every lower-level candidate.
        use_sigmoid: apply the sigmoid before the hinge (paper and release: True).
        normalization: N of Eq. (4): ``"pairs"`` (all pairs of the batch, paper and release),
            ``"expression"`` (mean of each expression's pair mean) or ``"violating"``.
        skip_short_levels: see :func:`rank_nms.ranking.sample_pairs` (False: take all of a short
            lower set, the paper's reading).

    Returns:
        A scalar; 0 connected to the graph when no pair exists (no candidate with ρ > origin, or
        none below it).
    """
    check_float_tensor("logits_or_scores", logits_or_scores, ndim=1)
    check_unit_interval("max_iou", max_iou)
    if max_iou.shape != logits_or_scores.shape:
        raise ValueError(
            f"max_iou {tuple(max_iou.shape)} must have the shape of logits_or_scores "
            f"{tuple(logits_or_scores.shape)}"
        )
    check_number("margin", margin, 0.0)
    check_number("origin", origin, 0.0, 1.0, hi_open=True)
    check_number("width", width, 0.0, lo_open=True)
    top_h = check_optional_int("top_h", top_h)
    if normalization not in RANK_NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {RANK_NORMALIZATIONS}, got {normalization!r}"
        )
    groups = _groups(expr_index, logits_or_scores.numel(), logits_or_scores.device)
    scores = torch.sigmoid(logits_or_scores) if use_sigmoid else logits_or_scores
    levels = quantize_iou(max_iou.to(scores.device), origin, width)
    pos, neg = sample_pairs(levels, scores.detach(), top_h, groups, skip_short_levels)
    norm = "image" if normalization == "expression" else normalization
    pair_groups = groups[pos] if norm == "image" else None
    return ranking_loss(scores, pos, neg, margin, norm, pair_groups)
