"""Argument checks shared by the model parts of Ref-NMS: every failure is a ValueError that names
the argument (and, for values, the first offending index)."""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_boxes",
    "check_bool_tensor",
    "check_float_tensor",
    "check_index_tensor",
    "check_number",
    "check_optional_int",
    "check_unit_interval",
]


def check_float_tensor(name: str, x, ndim: int | None = None, finite: bool = True) -> torch.Tensor:
    """``x`` must be a floating-point tensor (of ``ndim`` dimensions), without NaN/inf."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if finite and x.numel():
        bad = ~torch.isfinite(x.detach())
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            what = "NaN" if bool(torch.isnan(x.detach()).any()) else "an infinite value"
            raise ValueError(f"{name} contains {what} (first non-finite at index {where})")
    return x


def check_index_tensor(name: str, x, n: int | None = None) -> torch.Tensor:
    """``x`` must be a 1-D integer tensor (of ``n`` entries) with values >= 0."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if n is not None and x.numel() != n:
        raise ValueError(f"{name} must have {n} entries (one per box), got {x.numel()}")
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(x.min())}")
    return x.to(torch.int64)


def check_bool_tensor(name: str, x, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got {getattr(x, 'dtype', type(x))}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    return x


def check_unit_interval(name: str, x: torch.Tensor) -> torch.Tensor:
    """A float tensor with every value in [0, 1] (NaN/inf rejected first)."""
    check_float_tensor(name, x)
    if x.numel():
        v = x.detach()
        bad = (v < 0) | (v > 1)
        if bool(bad.any()):
            i = tuple(int(j) for j in bad.nonzero()[0])
            raise ValueError(f"{name} must be in [0, 1], got {float(v[i])} at index {i}")
    return x


def check_boxes(name: str, boxes) -> torch.Tensor:
    """``boxes``: float (N, 4) (x1, y1, x2, y2), finite, with x2 >= x1 and y2 >= y1."""
    check_float_tensor(name, boxes, ndim=2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if boxes.numel():
        b = boxes.detach()
        bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{name}[{i}] = {b[i].tolist()} has a negative width or height (x2 < x1 or y2 < y1)"
            )
    return boxes


def check_number(
    name: str,
    value,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number (not a bool) in [lo, hi] (open ends with ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value}")
    return value


def check_optional_int(name: str, value, lo: int = 1) -> int | None:
    """None, or an int >= ``lo`` (bools rejected)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo} or None, got {value!r}")
    return int(value)
