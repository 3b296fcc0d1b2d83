"""Pure-torch reference of IoUHash (Alg. 1) and hashing-based NMS (Alg. 2/3), for any device.

Vectorised: hash every box, group equal codes with ``torch.unique(dim=0, return_inverse=True)``,
take the cell maximum with ``scatter_reduce("amax")`` and, among the boxes that reach it, the lowest
index with ``scatter_reduce("amin")``. Same arithmetic, in the same order and in float64, as the
C++/CUDA kernels (``hnms/csrc/hnms_hash.h``), so the three backends agree.
Call the public functions in :mod:`hnms.ops`; these assume validated arguments.
"""

import math

import torch

__all__ = ["INVALID_CODE", "MAX_CODE", "hash_params", "iou_hash_reference", "hnms_reference"]

#: Value of every component of the code of a box that cannot be hashed (non-finite coordinates,
#: width or height <= 0, a cell size that over- or underflows, or a component outside
#: (-2^52, 2^52)); such a box is its own cell.
INVALID_CODE = -(2**63)
#: |code component| < 2^52: beyond it float64 has no fractional bits left, the rounding of
#: Eqs. (2), (3), (6), (7) is decided by rounding errors, and the backends' libm could disagree
#: (see ``hnms/csrc/hnms_hash.h``).
MAX_CODE = 2.0**52


def hash_params(alpha: float, w0: float, h0: float, bx: float, by: float, k: int, num_hashes: int):
    """Parameters of the k-th of K hash functions, Eq. (16).

    log W0^(k) = log W0 - log(α) k / K and b_x^(k) = b_x + k / K (likewise H0, b_y); with
    W0 = H0 = 1, b_x = b_y = 0 this is the paper's Eq. (16).
    """
    frac = k / num_hashes
    scale = math.pow(alpha, -frac)
    w0k, h0k = w0 * scale, h0 * scale
    return {
        "log_alpha": math.log(alpha),
        "inv_log_alpha": 1.0 / math.log(alpha),
        "w0": w0k,
        "h0": h0k,
        "log_w0": math.log(w0k),
        "log_h0": math.log(h0k),
        "bx": bx + frac,
        "by": by + frac,
        "ratio": (1.0 - alpha) / (1.0 + alpha),  # Eqs. (4), (8)
    }


def _round_code(v: torch.Tensor):
    # round() of Eqs. 2, 3, 6, 7 as floor(v + 1/2): offsets to the cell centre in [-1/2, 1/2),
    # as in Eq. (15)
    r = torch.floor(v + 0.5)
    ok = (r > -MAX_CODE) & (r < MAX_CODE)  # False for NaN and +-inf too
    return torch.where(ok, r, torch.zeros_like(r)), ok


def _hash_dim(size, center, log_s0, b, log_alpha, inv_log_alpha, ratio):
    # divisions as multiplications by 1 / log α and 1 / δ_i, exactly as the kernels do
    ok = (size > 0) & torch.isfinite(size) & torch.isfinite(center)
    size = torch.where(ok, size, torch.ones_like(size))
    i, ok_i = _round_code((log_s0 - torch.log(size)) * inv_log_alpha)  # Eq. (2)/(3)
    s_i = torch.exp(log_s0 - i * log_alpha)  # Eq. (1)/(9): W_i = W0 / α^i, in log space
    inv_delta = 1.0 / (s_i * ratio)  # Eq. (4)/(8): δ_i = W_i (1 - α) / (1 + α)
    # a cell size that overflows (1 / δ = 0) or underflows (inf) describes no cell
    ok_d = (inv_delta > 0) & torch.isfinite(inv_delta)
    m, ok_m = _round_code(center * inv_delta - b)  # Eq. (6)/(7): m = round(x / δ_i - b_x)
    return i, m, ok & ok_i & ok_d & ok_m


def iou_hash_reference(boxes: torch.Tensor, params: dict):
    """Alg. 1 on xyxy boxes [N, 4] (any float dtype).

    Returns ``(codes, ok)``: int64 [N, 4] codes (i, j, m, n), rows of ``INVALID_CODE`` where the
    box cannot be hashed, and the bool [N] mask of hashable boxes.
    """
    b = boxes.to(torch.float64)
    x1, y1, x2, y2 = b.unbind(1)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    p = params
    la, ila, r = p["log_alpha"], p["inv_log_alpha"], p["ratio"]
    i, m, ok_w = _hash_dim(w, cx, p["log_w0"], p["bx"], la, ila, r)
    j, n, ok_h = _hash_dim(h, cy, p["log_h0"], p["by"], la, ila, r)
    ok = ok_w & ok_h
    codes = torch.stack([i, j, m, n], dim=1).to(torch.int64)
    codes[~ok] = INVALID_CODE
    return codes, ok


def hnms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor | None,
    alpha: float,
    num_hashes: int,
    w0: float,
    h0: float,
    bx: float,
    by: float,
) -> torch.Tensor:
    """Alg. 2 (one hash) cascaded over the K hash functions of Eq. (16) (Alg. 3).

    Returns int64 indices of the kept boxes by decreasing score (lower index first among ties).
    NaN-scored boxes are dropped first; boxes that cannot be hashed pass every stage.
    """
    device = boxes.device
    n = boxes.shape[0]
    s = scores.to(torch.float64) + 0.0  # + 0.0 maps -0.0 to +0.0, as the kernels' score keys do
    idx = torch.nonzero(~torch.isnan(s)).view(-1)
    for k in range(num_hashes):
        params = hash_params(alpha, w0, h0, bx, by, k, num_hashes)
        codes, ok = iou_hash_reference(boxes[idx], params)
        passed = idx[~ok]
        hidx = idx[ok]
        key = codes[ok]
        if groups is not None:
            key = torch.cat([key, groups[hidx, None]], dim=1)
        winners = hidx[:0]
        if hidx.numel() > 0:
            _, inv = torch.unique(key, dim=0, return_inverse=True)
            num_cells = int(inv.max()) + 1
            hs = s[hidx]
            best = torch.full((num_cells,), -math.inf, dtype=torch.float64, device=device)
            best = best.scatter_reduce(0, inv, hs, "amax", include_self=True)
            at_best = hs == best[inv]
            winners = torch.full((num_cells,), n, dtype=torch.int64, device=device)
            winners = winners.scatter_reduce(0, inv[at_best], hidx[at_best], "amin")
        idx = torch.sort(torch.cat([passed, winners])).values
    order = torch.sort(s[idx], descending=True, stable=True).indices
    return idx[order]
