"""Public HNMS operators: ``iou_hash``, ``hnms``, ``batched_hnms``.

Three backends give the same result on the same input: the compiled CPU kernel and CUDA kernel
(``torch.ops.hnms.*`` from ``hnms._C``) and the pure-torch reference (:mod:`hnms.reference`).
``backend="auto"`` uses the compiled kernel for the input's device when it was built, otherwise
the reference.

α is NOT an IoU threshold. It is the ratio of adjacent cell sizes (Eq. 1); two boxes in one cell
have IoU >= ``iou_lower_bound(alpha)`` (α = 0.7 -> 0.452, α = 0.73 -> 0.5015). To replace NMS at
IoU threshold t, pick α with ``alpha_for_iou(t)``.

Edge cases (identical on every backend):

- A box whose score is NaN is never kept and suppresses nothing.
- A box that cannot be hashed (a non-finite coordinate, width or height <= 0, a cell size that
  over- or underflows float64, or a centre so far from the origin relative to the box's size that
  a code component leaves (-2^52, 2^52), where float64 has no fraction left for the rounding of
  Eq. (6)) is its own cell: it is kept (unless its score is NaN) and suppresses nothing, as
  ``torchvision.ops.nms`` does with such boxes (their IoU with any box is 0 or NaN, or, beyond
  2^52, not computable in float64 either). ``iou_hash`` returns ``INVALID_CODE`` rows for them.
- Parameters are checked (here and again in the compiled ops): α in (0, 1); W0, H0 finite and
  > 0, also after Eq. (16) scales them by α^(-k/K); b_x, b_y finite with |b| < 2^52 (only b mod 1
  changes which boxes share a cell). Any real number is accepted (Python, NumPy or 0-d tensor
  scalars; not bool), and any integral type for ``num_hashes``.
- Scores may be any float, including negative logits and +-inf; -0.0 equals +0.0.
- Boxes and scores may be float16, bfloat16, float32 or float64 and non-contiguous; everything
  is computed in float64.
"""

import math
import numbers

import torch

from . import _ext
from .reference import INVALID_CODE, MAX_CODE, hash_params, hnms_reference, iou_hash_reference

__all__ = ["INVALID_CODE", "iou_hash", "hnms", "batched_hnms"]

_BACKENDS = ("auto", "ext", "torch")


def _sizes_are_ints() -> bool:
    """False while ``torch.jit.trace`` records a model: sizes are then traced values, and
    comparing them here would freeze the comparison into the trace. The compiled ops check the
    same sizes again when they run (in a traced model too)."""
    return not torch.jit.is_tracing()


def _check_tensor(x, name: str, shape_hint: str, fix: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape {shape_hint}, got {type(x)}; {fix}"
        )
    return x


def _check_boxes(boxes) -> torch.Tensor:
    _check_tensor(boxes, "boxes", "[N, 4]", "wrap it with torch.as_tensor(boxes)")
    if boxes.dim() != 2 or (_sizes_are_ints() and boxes.shape[1] != 4):
        raise ValueError(
            "boxes must have shape [N, 4] with columns (x1, y1, x2, y2), got "
            f"{tuple(boxes.shape)}; pass Boxes.tensor, or reshape with boxes.reshape(-1, 4)"
        )
    if not boxes.is_floating_point():
        raise ValueError(
            f"boxes must be a floating-point tensor, got {boxes.dtype}; convert with boxes.float()"
        )
    return boxes


def _check_scores(scores, boxes: torch.Tensor) -> torch.Tensor:
    _check_tensor(scores, "scores", "[N]", "wrap it with torch.as_tensor(scores)")
    if scores.dim() != 1 or (_sizes_are_ints() and scores.shape[0] != boxes.shape[0]):
        raise ValueError(
            f"scores must have shape [N] with N = len(boxes) = {boxes.shape[0]}, got "
            f"{tuple(scores.shape)}; pass one score per box (e.g. scores.reshape(-1))"
        )
    if not scores.is_floating_point():
        raise ValueError(
            f"scores must be a floating-point tensor, got {scores.dtype}; convert with "
            "scores.float()"
        )
    if scores.device != boxes.device:
        raise ValueError(
            f"scores is on {scores.device} but boxes is on {boxes.device}; move them to one "
            "device, e.g. scores.to(boxes.device)"
        )
    return scores


def _check_idxs(idxs, boxes: torch.Tensor) -> torch.Tensor:
    _check_tensor(idxs, "idxs", "[N]", "wrap it with torch.as_tensor(idxs)")
    if idxs.dim() != 1 or (_sizes_are_ints() and idxs.shape[0] != boxes.shape[0]):
        raise ValueError(
            f"idxs must have shape [N] with N = len(boxes) = {boxes.shape[0]}, got "
            f"{tuple(idxs.shape)}; pass one class (or level) id per box"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(
            f"idxs must be an integer tensor, got {idxs.dtype}; convert with idxs.long()"
        )
    if idxs.device != boxes.device:
        raise ValueError(
            f"idxs is on {idxs.device} but boxes is on {boxes.device}; move it with "
            "idxs.to(boxes.device)"
        )
    return idxs.to(torch.int64)


def _real(value, name: str) -> float:
    """``value`` as a float: any real number (Python, NumPy, ``fractions.Fraction``, a one-element
    tensor), not a bool (``True`` as α or W0 is a bug, not 1.0)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number (not bool; Python, NumPy or 0-d tensor), got "
            f"{type(value).__name__} {value!r}"
        )
    return float(value)


def _check_float(value, name: str, lo=None, hi=None, fix: str = "") -> float:
    value = _real(value, name)
    too_low = lo is not None and value <= lo
    too_high = hi is not None and value >= hi
    if not math.isfinite(value) or too_low or too_high:
        rng = f" in ({lo}, {hi})" if hi is not None else (f" > {lo}" if lo is not None else "")
        raise ValueError(f"{name} must be a finite float{rng}, got {value}{fix}")
    return value


_ALPHA_FIX = (
    "; α is the cell-size ratio of Eq. (1), not an IoU threshold: pick it with "
    "hnms.alpha_for_iou(iou) (e.g. 0.7 for the RPN, 0.73 for a pre-filter before NMS@0.5)"
)


def _check_alpha(alpha) -> float:
    return _check_float(alpha, "alpha", 0.0, 1.0, _ALPHA_FIX)


def _check_num_hashes(num_hashes) -> int:
    if isinstance(num_hashes, torch.Tensor) and num_hashes.numel() == 1:
        if not (num_hashes.is_floating_point() or num_hashes.dtype == torch.bool):
            num_hashes = num_hashes.item()
    if (
        isinstance(num_hashes, bool)
        or not isinstance(num_hashes, numbers.Integral)
        or num_hashes < 1
    ):
        raise ValueError(
            f"num_hashes must be an integer >= 1 (K of Eq. 16; Python or NumPy int, not bool), "
            f"got {type(num_hashes).__name__} {num_hashes!r}; use 1 for Alg. 2"
        )
    return int(num_hashes)


def _check_offset(b, name: str) -> float:
    b = _check_float(b, name)
    if not abs(b) < MAX_CODE:
        raise ValueError(
            f"{name} must be a finite float with |{name}| < 2^52, got {b}: the offset is in cell "
            f"units and beyond 2^52 every code m = round(x / δ - {name}) leaves the exact range, "
            f"so no box could be hashed; only {name} mod 1 changes which boxes share a cell"
        )
    return b


def _check_hash_params(alpha, w0, h0, bx, by, num_hashes: int = 1):
    """Validated (alpha, w0, h0, bx, by) of the K = ``num_hashes`` hash functions of Eq. (16)."""
    alpha = _check_alpha(alpha)
    w0 = _check_float(w0, "w0", 0.0)
    h0 = _check_float(h0, "h0", 0.0)
    bx = _check_offset(bx, "bx")
    by = _check_offset(by, "by")
    # the last hash function of Eq. (16) has the largest W0^(k) = W0 α^(-k/K) and b + k/K
    last = hash_params(alpha, w0, h0, bx, by, num_hashes - 1, num_hashes)
    for name, value in (("w0", w0), ("h0", h0)):
        if not (math.isfinite(last[name]) and math.isfinite(last["log_" + name])):
            raise ValueError(
                f"{name} = {value} overflows when Eq. (16) scales it by alpha^(-k/K) for the "
                f"K = {num_hashes} hash functions (alpha = {alpha}); use a smaller {name}"
            )
    for name in ("bx", "by"):
        if not abs(last[name]) < MAX_CODE:
            raise ValueError(f"{name} + (K - 1) / K (Eq. 16) must stay below 2^52 in magnitude")
    return alpha, w0, h0, bx, by


def use_compiled_kernel(backend: str, device: torch.device, cuda_kernel: bool = True) -> bool:
    """Whether to use the compiled kernel of ``hnms._C`` for ``device`` (``cuda_kernel``: the op
    has a CUDA kernel too) rather than the pure-torch reference; raises for an unknown backend or
    for ``backend="ext"`` without a usable kernel."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    mod = None if backend == "torch" else _ext.load()
    usable = mod is not None and (
        device.type == "cpu"
        or (cuda_kernel and device.type == "cuda" and bool(mod.compiled_with_cuda()))
    )
    if not usable and torch.jit.is_tracing():
        # The pure-torch path loops in Python over data-dependent counts (cells, Soft-NMS
        # steps): a trace would freeze the counts of the example input.
        raise RuntimeError(
            f"tracing a model that runs HNMS or Soft-NMS on {device.type} needs the compiled op "
            "torch.ops.hnms.* (hnms._C): build it with `pip install --no-build-isolation -e .` "
            "(FORCE_CUDA=1 for the CUDA kernels; Soft-NMS has a CPU kernel only, so export such "
            "a model on the CPU)"
        )
    if backend == "torch":
        return False
    if backend == "ext" and not usable:
        if device.type != "cpu" and not cuda_kernel:
            raise RuntimeError(
                f"backend='ext': this op has a compiled kernel for CPU only, not for "
                f"{device.type}; use backend='auto' or 'torch' (the pure-torch path runs on any "
                "device)"
            )
        raise RuntimeError(
            f"backend='ext' needs hnms._C built for {device.type}; build it with "
            "`pip install --no-build-isolation -e .` (FORCE_CUDA=1 for CUDA) or use backend='auto'"
        )
    return usable


def iou_hash(
    boxes: torch.Tensor,
    alpha: float,
    w0: float = 1.0,
    h0: float = 1.0,
    bx: float = 0.0,
    by: float = 0.0,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """IoUHash (Alg. 1, Eqs. 1-9): the cell code (i, j, m, n) of every box.

    With w = x2 - x1, h = y2 - y1, x = (x1 + x2) / 2, y = (y1 + y2) / 2:
    i = round((log W0 - log w) / log α), W_i = W0 / α^i, δ_i = W_i (1 - α) / (1 + α),
    m = round(x / δ_i - b_x), and j, n likewise with H0, b_y; round(v) = floor(v + 1/2).

    Args:
        boxes: [N, 4] float tensor (x1, y1, x2, y2), any float dtype, any device.
        alpha: cell-size ratio α in (0, 1) (not an IoU threshold); any real number type.
        w0, h0: size of the 0-th width/height cell, W0 and H0 (finite, > 0).
        bx, by: offsets b_x, b_y of the offset cells, in cell units (finite, |b| < 2^52).
        backend: "auto", "ext" (compiled kernels) or "torch" (reference).
    Returns:
        int64 [N, 4] (i, j, m, n) on boxes' device; every component is ``INVALID_CODE`` (-2^63)
        for a box that cannot be hashed (non-finite, width or height <= 0, code out of
        (-2^52, 2^52)).
    Raises:
        ValueError: naming the argument, for bad boxes or parameters (see the module docstring).
    """
    boxes = _check_boxes(boxes)
    alpha, w0, h0, bx, by = _check_hash_params(alpha, w0, h0, bx, by)
    if use_compiled_kernel(backend, boxes.device):
        return torch.ops.hnms.iou_hash(boxes, alpha, w0, h0, bx, by)
    return iou_hash_reference(boxes, hash_params(alpha, w0, h0, bx, by, 0, 1))[0]


def _hnms(boxes, scores, idxs, alpha, num_hashes, w0, h0, bx, by, backend):
    boxes = _check_boxes(boxes)
    scores = _check_scores(scores, boxes)
    if idxs is not None:
        idxs = _check_idxs(idxs, boxes)
    num_hashes = _check_num_hashes(num_hashes)
    alpha, w0, h0, bx, by = _check_hash_params(alpha, w0, h0, bx, by, num_hashes)
    if use_compiled_kernel(backend, boxes.device):  # every backend returns [0] for N = 0
        groups = idxs if idxs is not None else boxes.new_empty((0,), dtype=torch.int64)
        return torch.ops.hnms.hnms(boxes, scores, groups, alpha, num_hashes, w0, h0, bx, by)
    return hnms_reference(boxes, scores, idxs, alpha, num_hashes, w0, h0, bx, by)


def hnms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    alpha: float,
    num_hashes: int = 1,
    *,
    w0: float = 1.0,
    h0: float = 1.0,
    bx: float = 0.0,
    by: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Hashing-based NMS: keep the highest-scored box of every IoUHash cell (Alg. 2).

    With ``num_hashes = K > 1`` the K hash functions of Eq. (16) (W0^(k) = W0 α^(-k/K),
    b^(k) = b + k/K) are applied one after another to the survivors (Alg. 3), so a box survives
    only if it is the best of its cell under every hash. O(N) per hash function.

    Args:
        boxes: [N, 4] float tensor (x1, y1, x2, y2); float16/bfloat16/float32/float64.
        scores: [N] float tensor on the same device (probabilities or logits; NaN never kept).
        alpha: cell-size ratio α in (0, 1); NOT an IoU threshold (see :func:`iou_lower_bound`).
        num_hashes: K >= 1, the number of hash functions of Eq. (16) (any integral type).
        w0, h0, bx, by: base parameters of the first hash function (paper: 1, 1, 0, 0); see
            :func:`iou_hash` for their ranges.
        backend: "auto", "ext" (compiled kernels) or "torch" (pure-torch reference).
    Returns:
        int64 [K'] indices into ``boxes`` of the kept boxes, sorted by decreasing score; among
        equal scores the lower index comes first (and wins a cell). Same device as ``boxes``.
    """
    return _hnms(boxes, scores, None, alpha, num_hashes, w0, h0, bx, by, backend)


def batched_hnms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    alpha: float,
    num_hashes: int = 1,
    *,
    w0: float = 1.0,
    h0: float = 1.0,
    bx: float = 0.0,
    by: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`hnms` separately within each group (class or feature level) given by ``idxs``.

    The group id is part of the cell key (i, j, m, n, idx), so boxes of different groups never
    share a cell. (Not the coordinate-offset trick of ``batched_nms``, which would make codes of
    different groups collide.)

    Args:
        idxs: [N] integer tensor (any int dtype, any values) on the same device as ``boxes``.
        The rest as in :func:`hnms`.
    Returns:
        int64 indices of the kept boxes, sorted by decreasing score (lower index first on ties).
    """
    return _hnms(boxes, scores, idxs, alpha, num_hashes, w0, h0, bx, by, backend)
