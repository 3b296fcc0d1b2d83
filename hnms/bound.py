"""Lower IoU bound of two boxes that share an IoUHash cell (Alg. 4, Appendix A)."""

import itertools
import math

__all__ = ["iou_lower_bound", "alpha_for_iou"]


def _iou_centered(w1, h1, x1, y1, w2, h2, x2, y2) -> float:
    # Eqs. (10), (11): intersection of boxes given by centre and size; IoU = I / (A1 + A2 - I)
    iw = min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)
    ih = min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2)
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (w1 * h1 + w2 * h2 - inter)


def iou_lower_bound(alpha: float) -> float:
    """The smallest IoU of two boxes hashed to the same cell by IoUHash with parameter α.

    Alg. 4: if Eq. (14), (1 - α) / (1 + α) < α^(1/2), fails (α below about 0.2956), two boxes in a
    cell may not overlap and the bound is 0. Otherwise, by Theorem 2 the minimum lies at a corner
    of the cell, so with W0 = H0 = 1, b_x = b_y = 0 and cell (0, 0, 0, 0) (the IoU does not depend
    on them, Theorem 1) enumerate the 2^8 offsets i_k, j_k, m_k, n_k ∈ {-1/2, 1/2} of Eq. (15).

    α is NOT an IoU threshold: α = 0.7 gives 0.452, α = 0.73 gives 0.5015 (paper §3.3) and
    α = 0.3 gives 1.4e-4. Use :func:`alpha_for_iou` for the α that guarantees a given IoU.

    Args:
        alpha: the cell-size ratio α of Eq. (1), a float in (0, 1).
    Returns:
        the bound, a float in [0, 1), non-decreasing in α (paper Fig. 3).
    """
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    ratio = (1.0 - alpha) / (1.0 + alpha)  # Eq. (4) with W_i = 1
    if not ratio < math.sqrt(alpha):  # Eq. (14)
        return 0.0
    lowest = 1.0
    for i1, i2, j1, j2, m1, m2, n1, n2 in itertools.product((-0.5, 0.5), repeat=8):
        # Eq. (15): w_k = W0 / α^(i + i_k), x_k = b_x δ_i + (m + m_k) δ_i with i = m = 0
        w1, w2 = alpha ** (-i1), alpha ** (-i2)
        h1, h2 = alpha ** (-j1), alpha ** (-j2)
        x1, x2 = m1 * ratio, m2 * ratio
        y1, y2 = n1 * ratio, n2 * ratio
        lowest = min(lowest, _iou_centered(w1, h1, x1, y1, w2, h2, x2, y2))
    return lowest


def alpha_for_iou(iou: float, tol: float = 1e-6) -> float:
    """The smallest α whose :func:`iou_lower_bound` is >= ``iou`` (bisection; bound is monotone).

    Args:
        iou: target IoU in [0, 1).
        tol: bisection tolerance on α.
    """
    iou = float(iou)
    if not (0.0 <= iou < 1.0):
        raise ValueError(f"iou must be in [0, 1), got {iou}")
    lo, hi = 1e-9, 1.0 - 1e-12
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if iou_lower_bound(mid) >= iou:
            hi = mid
        else:
            lo = mid
    return hi
