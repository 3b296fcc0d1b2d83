"""Helpers for the HNMS tests: deterministic crowded box sets."""

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
