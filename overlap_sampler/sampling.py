"""Overlap Sampler: the sampling algorithms as plain functions (paper §3.2, Eqs. 1-3).

Every function here works on one image and takes explicit arguments; randomness comes from an
optional ``torch.Generator`` so that results are reproducible. Terms (paper §3.2):

- an *example* is a proposal of the per-region stage (including the ground-truth boxes that
  Detectron2 appends to the proposals in training); it is a *positive* (IoU with its matched
  ground truth >= the foreground threshold) or a *negative*;
- ``IoU_pn`` of a negative is its largest IoU with any positive of the same image;
- ``IoU_pe`` of a positive is its largest IoU with the other examples of the image (see
  :func:`overlaps_among_examples` for the two readings of "all examples" the paper allows).

Strategies (the paper's "probability sampling" methods), for N examples out of M candidates:

- ``"uniform"``: p_i = N / M (random sampling, the baseline);
- ``"hard"``: every candidate with IoU >= θ first (Eq. 1), the rest uniformly among IoU < θ;
- ``"soft"``: K equal bins over [0, IoU_max], N / K examples per bin, uniform inside a bin (Eq. 2);
- ``"linear"``: p_i = N · IoU_i / Σ_j IoU_j (Eq. 3).

Interval of the bins (footnote 3 of the paper). Eq. (2) splits [0, IoU_max) with IoU_max the
largest IoU_pn of the image's candidates; that is the default here (``interval_max=None``; the
maximum itself is put in the last bin, so no candidate falls outside). The footnote notes that with
an RPN NMS threshold of 0.7 this interval lies inside [0, 0.7); a fixed upper end such as 0.7 can be
given as ``interval_max``, and values above it are put in the last bin. The released code of the
authors splits [min, max] of the image's IoU_pn in two; with K bins from 0 as in Eq. (2) the bins
do not move when the image has no low-overlap negative.
"""

from typing import Tuple

import torch

__all__ = [
    "STRATEGIES",
    "sample_negatives",
    "sample_positives",
    "sample_iou_balanced",
    "bin_indices",
    "overlaps_among_examples",
    "best_positive_weights",
    "EPSILON_TARGETS",
]

#: The probability sampling strategies of §3.2 (Eq. 1: "hard", Eq. 2: "soft", Eq. 3: "linear").
STRATEGIES = ("uniform", "hard", "soft", "linear")

#: Which sampled positive of a ground truth gets ε (§3.2). "best_including_gt": the largest IoU
#: among all sampled positives, so the ground-truth box appended to the proposals in training
#: (IoU 1, zero regression target) takes ε whenever it is sampled; "best_proposal": the largest
#: IoU among the sampled positives that are real proposals (appended ground truths excluded).
EPSILON_TARGETS = ("best_including_gt", "best_proposal")


def _check_iou(iou: torch.Tensor, name: str) -> None:
    if not isinstance(iou, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(iou).__name__}")
    if iou.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one IoU per candidate), got shape {tuple(iou.shape)}"
        )
    if not iou.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {iou.dtype}")
    if iou.numel() == 0:
        return
    if bool(((iou >= 0) & (iou <= 1 + 1e-4)).all()):  # one check on the common path
        return
    if not bool(torch.isfinite(iou).all()):
        raise ValueError(f"{name} contains NaN or inf values; IoUs must be finite in [0, 1]")
    raise ValueError(
        f"{name} must lie in [0, 1], got values in [{float(iou.min()):.4g}, {float(iou.max()):.4g}]"
    )


def _check_args(
    num: int, strategy: str, num_bins: int, threshold: float, interval_max: float | None
) -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"num must be a non-negative int, got {num!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins (K) must be an int >= 1, got {num_bins!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold (θ) must be in [0, 1], got {threshold!r}")
    if interval_max is not None and not 0.0 < float(interval_max) <= 1.0:
        raise ValueError(f"interval_max must be None or in (0, 1], got {interval_max!r}")


def _work_device(iou: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else iou.device


def _randperm(n: int, device, generator) -> torch.Tensor:
    return torch.randperm(n, device=device, generator=generator)


def _uniform(cand: torch.Tensor, num: int, generator) -> torch.Tensor:
    """``min(num, len(cand))`` entries of the int64 vector ``cand``, uniformly, no replacement."""
    if num >= cand.numel():
        return cand
    return cand[_randperm(cand.numel(), cand.device, generator)[:num]]


def bin_indices(iou: torch.Tensor, num_bins: int, interval_max: float | None = None):
    """The bin k ∈ [0, K) of each IoU for Eq. (2): k = floor(K · IoU / IoU_max).

    Args:
        iou: float tensor of shape (M,), values in [0, 1].
        num_bins: K >= 1.
        interval_max: IoU_max of Eq. (2); None: ``iou.max()`` (the image's own maximum). Values at
            or above IoU_max are put in bin K - 1. An all-zero ``iou`` puts everything in bin 0.

    Returns:
        int64 tensor of shape (M,) with values in [0, K).
    """
    if iou.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=iou.device)
    top = float(iou.max()) if interval_max is None else float(interval_max)
    if top <= 0.0:
        return torch.zeros(iou.shape, dtype=torch.int64, device=iou.device)
    k = torch.floor(iou.double() * num_bins / top).to(torch.int64)
    return k.clamp_(0, num_bins - 1)


def _balanced_quota(counts: torch.Tensor, num: int, generator) -> torch.Tensor:
    """Split ``num`` draws over bins as evenly as the bins' sizes allow (water-filling).

    Each non-empty bin gets ``num / K'`` draws (K' = number of non-empty bins); a bin with fewer
    candidates gives all of them and its shortfall is shared by the others. When ``num`` does not
    divide evenly, the remaining draws go to bins chosen uniformly at random, so that the expected
    quota of every bin that can take it is exactly ``num / K'``.

    Args:
        counts: int64 tensor (K,), the number of candidates in each bin.
        num: number of draws; the quotas sum to ``min(num, counts.sum())``.

    Returns:
        int64 tensor (K,) with 0 <= quota <= counts.
    """
    quota = torch.zeros_like(counts)
    remaining = min(num, int(counts.sum()))
    while remaining > 0:
        open_bins = torch.nonzero(quota < counts).flatten()
        share = remaining // open_bins.numel()
        if share == 0:
            pick = open_bins[_randperm(open_bins.numel(), counts.device, generator)[:remaining]]
            quota[pick] += 1
            break
        add = torch.minimum(counts[open_bins] - quota[open_bins], torch.full_like(open_bins, share))
        quota[open_bins] += add
        remaining -= int(add.sum())
    return quota


def _stratified(
    values: torch.Tensor,
    num: int,
    num_bins: int,
    interval_max: float | None,
    generator,
    shortfall: str = "balanced",
) -> torch.Tensor:
    """Eq. (2): K equal bins over [0, IoU_max], num / K per bin, uniform inside each bin.

    ``shortfall`` says where the draws of under-filled bins go: ``"balanced"`` spreads them evenly
    over the other bins (:func:`_balanced_quota`); ``"uniform"`` takes them uniformly from all
    candidates not yet drawn (the top-up of Libra R-CNN's IoU-balanced sampling).
    """
    m = values.numel()
    k = bin_indices(values, num_bins, interval_max)
    counts = torch.bincount(k, minlength=num_bins)
    if shortfall == "balanced":
        quota = _balanced_quota(counts, num, generator)
    else:
        quota = torch.minimum(counts, torch.full_like(counts, num // num_bins))
    # Rank candidates in random order inside their bin; take the first quota[k] of bin k.
    order = _randperm(m, values.device, generator)
    order = order[torch.sort(k[order], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_bin = torch.arange(m, device=values.device) - starts[k[order]]
    chosen = order[rank_in_bin < quota[k[order]]]
    missing = min(num, m) - chosen.numel()
    if missing > 0:  # "uniform" shortfall: random top-up from the rest
        taken = torch.zeros(m, dtype=torch.bool, device=values.device)
        taken[chosen] = True
        rest = torch.nonzero(~taken).flatten()
        chosen = torch.cat([chosen, _uniform(rest, missing, generator)])
    return chosen


def _hard(values: torch.Tensor, num: int, threshold: float, generator) -> torch.Tensor:
    """Eq. (1): all U candidates with IoU >= θ, then N - U uniformly among IoU < θ.

    If U > N, N of the U are drawn uniformly."""
    above = values >= threshold
    high = torch.nonzero(above).flatten()
    low = torch.nonzero(~above).flatten()
    chosen = _uniform(high, num, generator)
    return torch.cat([chosen, _uniform(low, num - chosen.numel(), generator)])


def _linear(values: torch.Tensor, num: int, generator) -> torch.Tensor:
    """Eq. (3): inclusion probability p_i = N · IoU_i / Σ_j IoU_j, without replacement.

    Probabilities above 1 are capped at 1 and the excess is re-spread over the others in proportion
    to IoU, so that Σ p_i = N. The draw is systematic sampling over a random permutation, which
    selects exactly N distinct candidates with inclusion probabilities exactly p_i. Candidates
    with IoU = 0 have p_i = 0 (as the paper notes); when fewer than N candidates have IoU > 0, all
    of those are taken and the rest is drawn uniformly among the zero-IoU candidates.
    """
    m = values.numel()
    positive = torch.nonzero(values > 0).flatten()
    if positive.numel() <= num:
        zeros = torch.nonzero(values <= 0).flatten()
        return torch.cat([positive, _uniform(zeros, num - positive.numel(), generator)])
    w = values[positive].double()
    p = torch.zeros_like(w)
    capped = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    while True:  # Eq. (3) with the capping at 1 (terminates: one more cap per round)
        free = ~capped
        budget = num - int(capped.sum())
        p[free] = w[free] * budget / w[free].sum()
        p[capped] = 1.0
        over = free & (p > 1.0)
        if not bool(over.any()):
            break
        capped |= over
    perm = _randperm(positive.numel(), w.device, generator)
    cum = torch.cumsum(p[perm], 0)
    u = torch.rand((), dtype=torch.float64, device=w.device, generator=generator)
    # Candidate j (in permuted order) is taken if a point u + t, t integer, falls in its interval
    # [cum_j - p_j, cum_j); since p_j <= 1 at most one point does.
    hits = torch.floor(cum - u) - torch.floor(cum - p[perm] - u)
    chosen = positive[perm[hits > 0.5]]
    if chosen.numel() != min(num, m):  # rounding of cum at the last interval
        chosen = positive[perm[torch.argsort(hits, descending=True, stable=True)[:num]]]
    return chosen


def _sample(
    name: str,
    iou: torch.Tensor,
    num: int,
    strategy: str,
    num_bins: int,
    threshold: float,
    generator: torch.Generator | None,
    interval_max: float | None,
) -> torch.Tensor:
    _check_iou(iou, name)
    _check_args(num, strategy, num_bins, threshold, interval_max)
    out_device = iou.device
    values = iou.detach().to(_work_device(iou, generator))
    m = values.numel()
    if num == 0 or m == 0:
        return torch.zeros(0, dtype=torch.int64, device=out_device)
    if num >= m:  # every candidate is taken whatever the strategy
        return torch.arange(m, dtype=torch.int64, device=out_device)
    if strategy == "uniform":
        chosen = _uniform(torch.arange(m, device=values.device), num, generator)
    elif strategy == "hard":
        chosen = _hard(values, num, threshold, generator)  # Eq. (1)
    elif strategy == "soft":
        chosen = _stratified(values, num, num_bins, interval_max, generator)  # Eq. (2)
    else:
        chosen = _linear(values, num, generator)  # Eq. (3)
    return torch.sort(chosen).values.to(device=out_device, dtype=torch.int64)


def sample_negatives(
    iou_pn: torch.Tensor,
    num: int,
    strategy: str,
    num_bins: int = 2,
    threshold: float = 0.55,
    generator: torch.Generator | None = None,
    interval_max: float | None = None,
) -> torch.Tensor:
    """The negative overlap sampler (§3.2): pick ``min(num, M)`` distinct negatives out of M.

    Args:
        iou_pn: float tensor of shape (M,), each candidate negative's IoU_pn (its largest IoU with
            the image's positive examples), values in [0, 1]; no NaN/inf.
        num: N, the number of negatives wanted (int >= 0).
        strategy: one of :data:`STRATEGIES`: "uniform", "hard" (Eq. 1), "soft" (Eq. 2),
            "linear" (Eq. 3).
        num_bins: K of Eq. (2), int >= 1 (only "soft" uses it; K = 1 is "uniform").
        threshold: θ of Eq. (1) in [0, 1], the NMS threshold (only "hard" uses it).
        generator: optional ``torch.Generator``; the draw is made on its device.
        interval_max: IoU_max of Eq. (2), in (0, 1]; None: the largest ``iou_pn`` (footnote 3, see
            the module docstring).

    Returns:
        int64 tensor of shape (min(num, M),): distinct indices in [0, M), ascending, on
        ``iou_pn``'s device. Degenerate inputs: M = 0 or num = 0 gives an empty tensor; num >= M
        gives every index; all-zero ``iou_pn`` gives a uniform draw for every strategy ("hard"
        and "soft" reduce to it, "linear" falls back to it, see ``_linear``).

    Raises:
        ValueError: ``iou_pn`` not a 1-D floating tensor with finite values in [0, 1], or a bad
            ``num``, ``strategy``, ``num_bins``, ``threshold`` or ``interval_max``.
    """
    return _sample("iou_pn", iou_pn, num, strategy, num_bins, threshold, generator, interval_max)


def sample_positives(
    iou_pe: torch.Tensor,
    num: int,
    strategy: str,
    num_bins: int = 2,
    threshold: float = 0.55,
    generator: torch.Generator | None = None,
    interval_max: float | None = None,
) -> torch.Tensor:
    """The positive overlap sampler (§3.2): the same strategies as :func:`sample_negatives`,
    applied to each candidate positive's IoU_pe.

    Args:
        iou_pe: float tensor of shape (P,), each candidate positive's IoU_pe in [0, 1] (see
            :func:`overlaps_among_examples`).
        num, strategy, num_bins, threshold, generator, interval_max: as in
            :func:`sample_negatives`.

    Returns:
        int64 tensor of shape (min(num, P),): distinct ascending indices in [0, P).
    """
    return _sample("iou_pe", iou_pe, num, strategy, num_bins, threshold, generator, interval_max)


def sample_iou_balanced(
    iou_gn: torch.Tensor,
    num: int,
    num_bins: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """IoU-balanced negative sampling of Libra R-CNN, the baseline of the paper's §3.1.

    K equal bins over [0, max IoU_gn] of the image (the largest IoU of a negative with the ground
    truth), num / K negatives drawn uniformly in each bin; bins with fewer negatives give all of
    theirs and the shortfall is drawn uniformly from all negatives not yet drawn.

    Args:
        iou_gn: float tensor (M,), each negative's largest IoU with the image's ground truth, in
            [0, 1].
        num: number of negatives wanted (int >= 0).
        num_bins: K (Libra R-CNN uses 3).
        generator: optional ``torch.Generator``.

    Returns:
        int64 tensor (min(num, M),) of distinct ascending indices in [0, M).
    """
    _check_iou(iou_gn, "iou_gn")
    _check_args(num, "soft", num_bins, 0.5, None)
    out_device = iou_gn.device
    values = iou_gn.detach().to(_work_device(iou_gn, generator))
    m = values.numel()
    if num == 0 or m == 0:
        return torch.zeros(0, dtype=torch.int64, device=out_device)
    if num >= m:
        return torch.arange(m, dtype=torch.int64, device=out_device)
    chosen = _stratified(values, num, num_bins, None, generator, shortfall="uniform")
    return torch.sort(chosen).values.to(device=out_device, dtype=torch.int64)


def overlaps_among_examples(
    iou_pos: torch.Tensor, is_pos: torch.Tensor, is_neg: torch.Tensor, pe_with: str = "negatives"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU_pn of the negatives and IoU_pe of the positives of one image.

    Args:
        iou_pos: float tensor (P, E): row j is the IoU of the j-th positive (the j-th True of
            ``is_pos``) with each of the image's E examples; values in [0, 1].
        is_pos: bool tensor (E,) with P True values, the positives (foreground examples).
        is_neg: bool tensor (E,), the negatives (background examples); examples in neither set
            (ignored by the matcher) take part in no overlap.
        pe_with: which examples IoU_pe is taken against. "negatives": the largest IoU of a positive
            with a negative, the overlap the paper's Figure 3 uses for both samplers and the one
            behind "sample more positives that highly overlap with negative examples" (§3.2);
            "examples": the largest IoU with any other example, positive or negative, the literal
            reading of "the overlap between positives and all examples".

    Returns:
        iou_pn: float tensor (#neg,), in the order of ``is_neg.nonzero()``; all 0 when the image
            has no positive.
        iou_pe: float tensor (P,); 0 for a positive with no example to overlap with.
    """
    if pe_with not in ("negatives", "examples"):
        raise ValueError(f"pe_with must be one of negatives, examples; got {pe_with!r}")
    pos = torch.nonzero(is_pos).flatten()
    if iou_pos.shape != (pos.numel(), is_pos.numel()):
        raise ValueError(
            f"iou_pos must have shape (#positives, #examples) = {(pos.numel(), is_pos.numel())}, "
            f"got {tuple(iou_pos.shape)}"
        )
    if pos.numel() == 0 or not bool(is_neg.any()):
        iou_pn = iou_pos.new_zeros(int(is_neg.sum()))
    else:
        iou_pn = iou_pos[:, is_neg].amax(dim=0)  # IoU^{p,n}: max over the positives
    others = is_neg if pe_with == "negatives" else (is_pos | is_neg)
    rows = iou_pos.clone()
    rows[:, ~others] = -1.0
    rows[torch.arange(pos.numel(), device=rows.device), pos] = -1.0  # not with itself
    if rows.shape[1] == 0:
        iou_pe = rows.new_zeros(pos.numel())
    else:
        iou_pe = rows.amax(dim=1).clamp(min=0.0)
    return iou_pn, iou_pe


def best_positive_weights(
    gt_iou: torch.Tensor,
    gt_index: torch.Tensor,
    is_fg: torch.Tensor,
    num_gt: int,
    epsilon: float,
    target: str = "best_including_gt",
    is_gt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss weights of the sampled RoIs of one image with ε re-weighting (§3.2, Table 2(e)).

    For each ground truth, its best-matched sampled positive (the largest IoU with that ground
    truth among the sampled positives assigned to it; ties go to the lowest index) gets weight ε,
    every other RoI weight 1. The weights are then scaled so that they sum to the number of sampled
    RoIs R (mean weight 1): the box-head losses, which are averages over the R RoIs, keep their
    scale, and ε = 1 gives weights of exactly 1.

    With ``target="best_including_gt"`` every sampled positive competes, so a sampled appended
    ground-truth box (IoU 1) is always its ground truth's best. With ``target="best_proposal"``
    the RoIs flagged in ``is_gt`` do not compete: ε goes to the best real proposal, and a ground
    truth whose only sampled positive is its own appended box gets no ε.

    Args:
        gt_iou: float tensor (R,), each sampled RoI's IoU with its matched ground truth.
        gt_index: int64 tensor (R,), the matched ground-truth index in [0, num_gt) (ignored for
            negatives).
        is_fg: bool tensor (R,), the sampled positives.
        num_gt: number of ground truths G >= 0 in the image.
        epsilon: ε > 0.
        target: one of ``EPSILON_TARGETS``.
        is_gt: optional bool tensor (R,), the RoIs that are appended ground-truth boxes; None:
            there are none. Only read for ``target="best_proposal"``.

    Returns:
        float32 tensor (R,) of positive weights summing to R.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon (ε) must be > 0, got {epsilon!r}")
    if target not in EPSILON_TARGETS:
        raise ValueError(f"target must be one of {', '.join(EPSILON_TARGETS)}; got {target!r}")
    r = gt_iou.numel()
    if is_gt is not None and is_gt.shape != (r,):
        raise ValueError(f"is_gt must have shape ({r},) like gt_iou, got {tuple(is_gt.shape)}")
    weights = torch.ones(r, dtype=torch.float32, device=gt_iou.device)
    if target == "best_proposal" and is_gt is not None:
        is_fg = is_fg & ~is_gt.to(torch.bool)  # appended ground truths do not compete for ε
    fg = torch.nonzero(is_fg).flatten()
    if r == 0 or fg.numel() == 0 or num_gt == 0 or epsilon == 1.0:
        return weights
    # Sort the positives by (gt, -IoU, index); the first of each gt is its best-matched positive.
    keys = gt_index[fg]
    order = torch.argsort(-gt_iou[fg].double(), stable=True)
    order = order[torch.argsort(keys[order], stable=True)]
    sorted_gt = keys[order]
    first = torch.ones_like(sorted_gt, dtype=torch.bool)
    first[1:] = sorted_gt[1:] != sorted_gt[:-1]
    weights[fg[order[first]]] = float(epsilon)
    return weights * (r / weights.sum())
