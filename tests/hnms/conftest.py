"""Helpers for the HNMS tests: deterministic crowded box sets."""

import math

import pytest
import torch

from hnms import _ext

BACKENDS = ["torch"] + (["ext"] if _ext.load() is not None else [])


def crowd_boxes(n: int, seed: int = 0, num_objects: int | None = None, dtype=torch.float32):
    """RPN-like boxes: ``n`` jittered copies of ``num_objects`` objects in a 1000 px image.

    Returns (boxes [n, 4] xyxy, scores [n] in [0, 1)).
    """
    g = torch.Generator().manual_seed(seed)
    k = num_objects or max(1, n // 30)
    centers = torch.rand(k, 2, generator=g) * 1000
    sizes = torch.rand(k, 2, generator=g) * 80 + 8
    owner = torch.randint(0, k, (n,), generator=g)
    c = centers[owner] + torch.randn(n, 2, generator=g) * sizes[owner] * 0.1
    wh = sizes[owner] * torch.exp(torch.randn(n, 2, generator=g) * 0.1)
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1).to(dtype)
    return boxes, torch.rand(n, generator=g).to(dtype)


@pytest.fixture
def paper_boxes():
    """The three boxes of §3.3 as (w, h, x, y) -> xyxy, with scores 0.9, 0.8, 0.7."""
    whxy = torch.tensor(
        [[100.0, 100.0, 54.1, 50.0], [100.0, 100.0, 79.1, 50.0], [100.0, 100.0, 96.1, 50.0]],
        dtype=torch.float64,
    )
    w, h, x, y = whxy.unbind(1)
    boxes = torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=1)
    return boxes, torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)


@pytest.fixture
def make_crowd():
    """The ``crowd_boxes`` function."""
    return crowd_boxes


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend this build has: "torch" and, when hnms._C is built, "ext"."""
    return request.param


def fma_border_boxes(alpha: float = 0.7, b: float = 0.3):
    """Boxes whose offset code m = floor(x / δ - b + 1/2) (Eq. 6) differs by one between
    rounding twice (x * (1/δ), then - b, as IEEE double and the reference do) and one fused
    multiply-add for x * (1/δ) - b (what nvcc emits unless -fmad=false; g++ -mfma
    -ffp-contract=fast on hnms_hash.h gives m +-1 on every one of them).

    1 x 1 boxes with W0 = H0 = 1 have i = 0 and 1/δ = 1 / ratio exactly on every backend (exp(0)
    = 1), so only the rounding of Eq. (6) decides. Returns (boxes float64 [K, 4], alpha, b,
    expected int64 [K] m = n codes, computed with exact rationals).
    """
    from fractions import Fraction

    from hnms.reference import hash_params

    p = hash_params(alpha, 1.0, 1.0, b, b, 0, 1)
    inv_d = 1.0 / (math.exp(p["log_w0"]) * p["ratio"])
    boxes, expected = [], []
    for k in range(20, 45):
        c0 = (k - 0.5 + b) / inv_d
        for d in range(-40, 41):
            cx = c0 + d * math.ulp(c0)
            if not 4.0 <= cx < 7.5:  # cx -+ 0.5 exact, width exactly 1
                continue
            exact = Fraction(cx) * Fraction(inv_d)
            twice = math.floor(float(Fraction(float(Fraction(float(exact)) - Fraction(b))) + 0.5))
            fused = math.floor(float(Fraction(float(exact - Fraction(b))) + Fraction(0.5)))
            if twice != fused:
                boxes.append([cx - 0.5, cx - 0.5, cx + 0.5, cx + 0.5])
                expected.append(twice)
    return torch.tensor(boxes, dtype=torch.float64), alpha, b, torch.tensor(expected)


@pytest.fixture
def fma_border():
    """The ``fma_border_boxes`` function."""
    return fma_border_boxes
