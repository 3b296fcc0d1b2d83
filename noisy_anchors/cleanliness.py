"""Cleanliness scores, soft labels and re-weighting factors of Noisy Anchors (paper §4).

All functions take, for a set of candidate positives ``A_pos``,

- ``loc_a``: localization accuracy, the IoU of each *regressed* candidate box with its ground
  truth, float tensor of shape (P,), values in [0, 1];
- ``cls_c``: classification confidence, the predicted probability of the ground-truth class,
  float tensor of shape (P,), values in [0, 1];

both detached from the graph (they are targets and weights, not predictions). Negatives have
cleanliness 0 and weight 1 (Alg. 1 line 12) and are never passed here.

Two formulations are provided:

- ``"paper"`` (default): Eq. (3) as the soft label, Eq. (4) as the weight, with the weights of
  all positives given normalised to mean 1 (§4, "Sample re-weighting").
- ``"released"``: the authors' released detectron2 code, per image: each term is divided by its
  mean over the image's positives, the soft labels are min-max rescaled to [mean(loc_a), 1], and
  the weights are ``α·f(loc_a)/mean f(loc_a) + (1-α)·f(cls_c)/mean f(cls_c)``; the losses are
  then rescaled so that the weighting preserves their sums (see ``losses.py``).

f(x) = 1/(1-x) is infinite at x = 1 (an exactly localized box, or a saturated sigmoid); it is
evaluated at min(x, 1-ε), which keeps r finite (ε = 1e-3 by default; the paper has no ε).

Numerics of r^γ: the power overflows float32 as soon as γ·log(base) > 88 (base = 750 for an anchor
with loc_a = 1 at α = 0.75, so γ = 14 suffices) and r / mean(r) became inf / inf = NaN. The
weights are therefore computed in float64 log space, r_i / mean(r) = exp(γ (log b_i - max log b))
/ mean(exp(γ (log b_j - max log b))), which is finite for every finite γ >= 0: the heaviest anchor
gets at most P times the mean (P positives), the lightest may underflow to 0.

Weight concentration (Eq. 4 as written): f saturates at 1/ε = 1000, so one anchor whose regressed
box matches its ground truth (loc_a >= 0.999) gets base ≈ 750 against ≈ 2 for a typical positive
(loc_a = cls_c = 0.5). With γ = 1 and P positives normalised to mean 1, that anchor gets
750 P / (750 + 2 (P - 1)) times the mean weight: 79x for P = 100, 273x for P = 1000 (a RetinaNet
batch has hundreds). ``max_weight_over_mean`` is logged every iteration (``noisy_anchors/...``) and
a warning is logged when it exceeds 100; a larger ε (``MODEL.NOISY_ANCHORS.EPS``) caps it.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "VARIANTS",
    "cleanliness",
    "reweighting",
    "released_soft_labels",
    "released_reweighting",
    "soft_labels_and_weights",
]

#: The supported formulations: the paper's (default) and the authors' released code.
VARIANTS = ("paper", "released")


def _check_unit_scalar(name: str, value: float) -> float:
    if isinstance(value, torch.Tensor):
        value = float(value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, torch.Tensor):
        gamma = float(gamma)
    if not isinstance(gamma, numbers.Real) or isinstance(gamma, bool):
        raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
    if not (gamma >= 0.0 and gamma < float("inf")):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma!r}")
    return float(gamma)


def _check_eps(eps: float) -> float:
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    return float(eps)


def _check_scores(loc_a: torch.Tensor, cls_c: torch.Tensor) -> None:
    for name, x in (("loc_a", loc_a), ("cls_c", cls_c)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{name} must have shape (P,), got {tuple(x.shape)}")
    if loc_a.shape != cls_c.shape:
        raise ValueError(
            f"loc_a and cls_c must have the same shape, got {tuple(loc_a.shape)} "
            f"and {tuple(cls_c.shape)}"
        )
    if loc_a.device != cls_c.device:
        raise ValueError(f"loc_a is on {loc_a.device} but cls_c is on {cls_c.device}")
    for name, x in (("loc_a", loc_a), ("cls_c", cls_c)):
        if x.numel() == 0:
            continue
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (x < 0).any() or (x > 1).any():
            raise ValueError(
                f"{name} must lie in [0, 1], got values in [{x.min().item()}, {x.max().item()}]"
            )


def _log_f(x: torch.Tensor, eps: float) -> torch.Tensor:
    """log f(x) of Eq. (4), f(x) = 1/(1-x) at min(x, 1-ε), as -log(max(1 - x, ε)) in float64:
    values in [0, -log ε], finite for every ε in (0, 1) (1 - ε rounds to 1 for ε < 2^-53, and
    1/ε overflows for ε < 1/DBL_MAX; the logarithm does neither)."""
    return -torch.log(torch.clamp(1.0 - x.double(), min=eps))


def _log_mix(alpha: float, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log(α e^a + (1-α) e^b) for α in [0, 1], without leaving log space."""
    if alpha >= 1.0:
        return log_a
    if alpha <= 0.0:
        return log_b
    return torch.logaddexp(math.log(alpha) + log_a, math.log1p(-alpha) + log_b)


def cleanliness(loc_a: torch.Tensor, cls_c: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cleanliness of the candidate positives, Eq. (3): ``c = α·loc_a + (1-α)·cls_c``.

    Args:
        loc_a: (P,) float tensor in [0, 1], IoU of each regressed candidate with its ground truth.
        cls_c: (P,) float tensor in [0, 1], predicted probability of the ground-truth class.
        alpha: α in [0, 1], weight of ``loc_a`` (0.75 in the paper, Table 4c).

    Returns:
        (P,) tensor in [0, 1], dtype of the inputs: the soft labels of the paper's formulation.
    """
    alpha = _check_unit_scalar("alpha", alpha)
    _check_scores(loc_a, cls_c)
    return alpha * loc_a + (1.0 - alpha) * cls_c  # Eq. (3)


def reweighting(
    loc_a: torch.Tensor, cls_c: torch.Tensor, alpha: float, gamma: float, eps: float = 1e-3
) -> torch.Tensor:
    """Re-weighting factors of the candidate positives, Eq. (4), normalised to mean 1.

    ``r = (α·f(loc_a) + (1-α)·f(cls_c))^γ`` with ``f(x) = 1/(1-x)``, then ``r / mean(r)`` over
    the P positives given (§4: "we also normalize r to have a mean of 1").

    Args:
        loc_a: (P,) float tensor in [0, 1].
        cls_c: (P,) float tensor in [0, 1].
        alpha: α in [0, 1].
        gamma: γ >= 0 (1 in the paper, Table 4a); γ = 0 gives all-ones weights (SR disabled).
        eps: ε in (0, 1): f is evaluated at min(x, 1-ε), so loc_a = 1 or cls_c = 1 stay finite.

    Returns:
        (P,) finite, non-negative tensor with mean 1 (empty if P = 0), dtype of the inputs; the
        order of the bases is kept. Computed in float64 log space (see the module docstring), so
        it is finite for every finite γ; with a large γ the lightest weights underflow to 0.
    """
    alpha = _check_unit_scalar("alpha", alpha)
    gamma = _check_gamma(gamma)
    eps = _check_eps(eps)
    _check_scores(loc_a, cls_c)
    if loc_a.numel() == 0:
        return loc_a.new_empty((0,))
    # log of Eq. (4)'s base α f(loc_a) + (1-α) f(cls_c), in [0, -log ε], computed once per
    # distinct (loc_a, cls_c): equal inputs get bit-equal weights (vectorised log / exp may round
    # differently in different lanes, and γ amplifies any difference)
    (loc, cls), inverse = _unique_pairs(loc_a, cls_c)
    log_base = _log_mix(alpha, _log_f(loc, eps), _log_f(cls, eps))[inverse]
    return _normalised_power(log_base, gamma).to(loc_a.dtype)


def _unique_pairs(loc_a: torch.Tensor, cls_c: torch.Tensor):
    """The distinct (loc_a, cls_c) pairs as two float64 tensors, and the inverse index."""
    pairs = torch.stack([loc_a.double(), cls_c.double()])
    unique, inverse = torch.unique(pairs, dim=1, return_inverse=True)
    return (unique[0], unique[1]), inverse


def _normalised_power(log_base: torch.Tensor, gamma: float) -> torch.Tensor:
    """base^γ / mean(base^γ) from a float64 (P,) tensor of finite log bases, P >= 1:
    exp(γ (log b - max log b)) is in [0, 1] with a maximum of 1, so the mean is >= 1/P and the
    quotient is finite (no inf / inf) for every finite γ >= 0."""
    z = torch.exp(gamma * (log_base - log_base.max()))  # 0 * (-x) = 0 for γ = 0: all ones
    return z / z.mean()


def released_soft_labels(loc_a: torch.Tensor, cls_c: torch.Tensor, alpha: float) -> torch.Tensor:
    """Soft labels of the released code, for the positives of ONE image.

    ``s = α·loc_a/mean(loc_a) + (1-α)·cls_c/mean(cls_c)``, then min-max rescaled to
    ``[mean(loc_a), 1]``: ``mean(loc_a) + (s - min s)·(1 - mean(loc_a))/(max s - min s)``.
    The released code divides by zero when all s are equal (e.g. one positive) or a mean is 0;
    here all-equal s give 1 (every positive is then the cleanest one) and a zero mean drops
    its term.

    Args:
        loc_a, cls_c: (P,) float tensors in [0, 1], the positives of one image.
        alpha: α in [0, 1].

    Returns:
        (P,) tensor in [mean(loc_a), 1] (empty if P = 0).
    """
    alpha = _check_unit_scalar("alpha", alpha)
    _check_scores(loc_a, cls_c)
    if loc_a.numel() == 0:
        return loc_a.new_empty((0,))
    mean_loc = loc_a.mean()
    s = alpha * _safe_ratio(loc_a, mean_loc) + (1.0 - alpha) * _safe_ratio(cls_c, cls_c.mean())
    spread = s.max() - s.min()
    if spread <= 0:
        return torch.ones_like(s)
    return mean_loc + (s - s.min()) * (1.0 - mean_loc) / spread


def released_reweighting(
    loc_a: torch.Tensor, cls_c: torch.Tensor, alpha: float, gamma: float = 1.0, eps: float = 1e-3
) -> torch.Tensor:
    """Re-weighting factors of the released code, for the positives of ONE image.

    ``r = (α·f(loc_a)/mean f(loc_a) + (1-α)·f(cls_c)/mean f(cls_c))^γ``. The released code has no
    γ (γ = 1 reproduces it, and the mean of r is then 1) and no ε. For γ != 1 the result is
    normalised to mean 1 and computed in log space (as :func:`reweighting`), so that it stays
    finite for every finite γ; the released variant's losses rescale the weights to preserve the
    loss sums, so this scale does not change the losses.

    Args:
        loc_a, cls_c: (P,) float tensors in [0, 1], the positives of one image.
        alpha: α in [0, 1]; gamma: γ >= 0; eps: ε in (0, 1), as in :func:`reweighting`.

    Returns:
        (P,) finite, non-negative tensor (empty if P = 0), mean 1.
    """
    alpha = _check_unit_scalar("alpha", alpha)
    gamma = _check_gamma(gamma)
    eps = _check_eps(eps)
    _check_scores(loc_a, cls_c)
    if loc_a.numel() == 0:
        return loc_a.new_empty((0,))
    log_p = math.log(loc_a.numel())
    (loc, cls), inverse = _unique_pairs(loc_a, cls_c)  # see reweighting()
    log_f_loc, log_f_cls = _log_f(loc, eps), _log_f(cls, eps)
    # log(f / mean f) for each term, in log space (f reaches 1/ε); means over all P positives
    log_loc = log_f_loc - (torch.logsumexp(log_f_loc[inverse], 0) - log_p)
    log_cls = log_f_cls - (torch.logsumexp(log_f_cls[inverse], 0) - log_p)
    log_base = _log_mix(alpha, log_loc, log_cls)[inverse]  # base <= P: exp() is finite
    if gamma == 1.0:
        return torch.exp(log_base).to(loc_a.dtype)  # the released code
    return _normalised_power(log_base, gamma).to(loc_a.dtype)


def _safe_ratio(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return x / mean if mean > 0 else torch.zeros_like(x)


def soft_labels_and_weights(
    loc_a: torch.Tensor,
    cls_c: torch.Tensor,
    num_per_image: list[int],
    *,
    alpha: float,
    gamma: float,
    variant: str = "paper",
    soft_labels: bool = True,
    reweight: bool = True,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``c`` and weights ``r`` of all candidate positives of a batch (Alg. 1 lines 7-11).

    Args:
        loc_a, cls_c: (P,) float tensors in [0, 1], the positives of the batch, image by image.
        num_per_image: number of positives of each image, summing to P (the released variant
            works per image; the paper's weights are normalised over the whole batch).
        alpha, gamma, eps: α, γ, ε as in :func:`reweighting`.
        variant: ``"paper"`` or ``"released"``.
        soft_labels: SL of Table 3; if False the targets are the hard label 1.
        reweight: SR of Table 3; if False the weights are 1.

    Returns:
        targets: (P,) tensor in [0, 1]; weights: (P,) positive finite tensor.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if sum(num_per_image) != loc_a.numel() or any(n < 0 for n in num_per_image):
        raise ValueError(
            f"num_per_image {list(num_per_image)} does not split {loc_a.numel()} positives"
        )
    _check_scores(loc_a, cls_c)
    ones = torch.ones_like(loc_a)
    if variant == "paper":
        targets = cleanliness(loc_a, cls_c, alpha) if soft_labels else ones
        weights = reweighting(loc_a, cls_c, alpha, gamma, eps) if reweight else ones
        return targets, weights

    if loc_a.numel() == 0:
        return ones, ones
    targets, weights = [], []
    for loc_i, cls_i in zip(loc_a.split(num_per_image), cls_c.split(num_per_image)):
        targets.append(released_soft_labels(loc_i, cls_i, alpha) if soft_labels else None)
        weights.append(released_reweighting(loc_i, cls_i, alpha, gamma, eps) if reweight else None)
    return (
        torch.cat(targets) if soft_labels else ones,
        torch.cat(weights) if reweight else ones,
    )
