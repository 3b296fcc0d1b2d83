"""The C++ kernel's fast paths give the exact result: sizes at the rounding boundaries of Eq. (2),
codes and groups that do not pack into 64 bits, table growth, and the score orders."""

import math

import pytest
import torch

import hnms
from hnms import INVALID_CODE, _ext

pytestmark = pytest.mark.skipif(_ext.load() is None, reason="hnms._C is not built")


def exact_code(w, h, cx, cy, alpha, w0=1.0, h0=1.0, bx=0.0, by=0.0):
    """Alg. 1 with the double operations of hnms_hash.h, in the same order (math.log/exp are the
    same libm the kernel calls)."""
    log_alpha = math.log(alpha)
    inv_log_alpha = 1.0 / log_alpha
    ratio = (1.0 - alpha) / (1.0 + alpha)
    code = []
    for size, s0 in ((w, w0), (h, h0)):
        if not (size > 0.0 and math.isfinite(size)):
            return [INVALID_CODE] * 4
        code.append(math.floor((math.log(s0) - math.log(size)) * inv_log_alpha + 0.5))  # Eq. (2)
    for centre, i, s0, b in ((cx, code[0], w0, bx), (cy, code[1], h0, by)):
        inv_delta = 1.0 / (s0 * math.exp(-float(i) * log_alpha) * ratio)  # Eqs. (1), (4)
        code.append(math.floor(centre * inv_delta - b + 0.5))  # Eq. (6)
    return code


def boundary_sizes(alpha, s0, ks):
    """Sizes at, and a few ulps and 1e-9 relative around, s* where Eq. (2)'s v + 1/2 = k."""
    sizes = []
    for k in ks:
        s_star = math.exp(math.log(s0) - (k - 0.5) * math.log(alpha))
        s = s_star
        sizes.append(s)
        lo = hi = s
        for _ in range(4):
            lo, hi = math.nextafter(lo, 0.0), math.nextafter(hi, math.inf)
            sizes += [lo, hi]
        sizes += [s_star * (1 + d) for d in (-2e-9, -1e-9, -5e-10, 5e-10, 1e-9, 2e-9, 1e-7)]
    return sizes


@pytest.mark.parametrize("alpha", [0.5, 0.7, 0.73, 0.9, 0.995])
@pytest.mark.parametrize("s0", [1.0, 1.5])
def test_sizes_at_rounding_boundaries_match_libm(alpha, s0):
    # Boxes (0, 0, s, s): width, height and centre are exact in float64.
    sizes = boundary_sizes(alpha, s0, range(-6, 40))
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sizes], dtype=torch.float64)
    codes = hnms.iou_hash(boxes, alpha, w0=s0, h0=s0, backend="ext").tolist()
    expected = [exact_code(s, s, s / 2, s / 2, alpha, s0, s0) for s in sizes]
    assert codes == expected
    # Boundary sizes really are ambiguous for a cheap log: neighbours straddle an index.
    assert len({c[0] for c in expected}) > 20


def test_random_sizes_over_many_octaves_match_libm():
    g = torch.Generator().manual_seed(0)
    n = 20000
    log_sizes = torch.empty(n, 2, dtype=torch.float64).uniform_(-20, 20, generator=g)
    wh = log_sizes.exp()
    xy = torch.empty(n, 2, dtype=torch.float64).uniform_(-1e4, 1e4, generator=g)
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    for alpha, bx in ((0.7, 0.0), (0.6, 0.25)):
        codes = hnms.iou_hash(boxes, alpha, bx=bx, by=bx, backend="ext").tolist()
        for (x1, y1, x2, y2), code in zip(boxes.tolist(), codes):
            w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) * 0.5, (y1 + y2) * 0.5
            assert code == exact_code(w, h, cx, cy, alpha, bx=bx, by=bx)


def test_codes_outside_the_packed_range_and_wide_groups():
    # Cells that do not pack into 64 bits (|m| >= 2^19: tiny boxes far from the origin; |i| >= 2^11
    # with α close to 1) or whose group does not fit in 32 bits use a general map; the keep set
    # is the reference's, and duplicates in such cells are still suppressed.
    tiny_far = [1e6, 1e6, 1e6 + 0.5, 1e6 + 0.5]  # w = 0.5 at x = 1e6: m ~ 1.1e7
    normal = [10.0, 10.0, 40.0, 40.0]
    boxes = torch.tensor([tiny_far, tiny_far, normal, normal, normal, normal], dtype=torch.float64)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.6, 0.7, 0.8], dtype=torch.float64)
    assert abs(hnms.iou_hash(boxes[:1], 0.7)[0, 2].item()) >= 2**19
    groups = torch.tensor([0, 0, 2**40, 2**40, -(2**35), 3])
    for fn, args in ((hnms.hnms, ()), (hnms.batched_hnms, (groups,))):
        ext = fn(boxes, scores, *args, 0.7, backend="ext")
        assert torch.equal(ext, fn(boxes, scores, *args, 0.7, backend="torch"))
    assert hnms.hnms(boxes, scores, 0.7, backend="ext").tolist() == [1, 5]
    assert hnms.batched_hnms(boxes, scores, groups, 0.7, backend="ext").tolist() == [1, 5, 4, 3]
    # α = 0.999: 1 / log α ~ -1000, so sizes far from W0 give |i| > 2^11
    big = torch.tensor([[0.0, 0.0, 5000.0, 5000.0]] * 3, dtype=torch.float64)
    assert hnms.iou_hash(big, 0.999, backend="ext")[0, 0].item() >= 2**11
    big_scores = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    assert hnms.hnms(big, big_scores, 0.999, backend="ext").tolist() == [1]


def test_many_distinct_cells_grow_the_table():
    # 30 000 boxes in distinct cells (a grid), each with one duplicate: the table starts at half
    # the number of boxes and has to grow twice.
    g = torch.Generator().manual_seed(3)
    ij = torch.stack(torch.meshgrid(torch.arange(150), torch.arange(100), indexing="ij"), -1)
    xy = ij.reshape(-1, 2).double() * 40.0
    boxes = torch.cat([xy, xy + 20.0], dim=1)
    boxes = torch.cat([boxes, boxes + 0.01])
    scores = torch.rand(len(boxes), generator=g)
    perm = torch.randperm(len(boxes), generator=g)
    boxes, scores = boxes[perm], scores[perm]
    ext = hnms.hnms(boxes, scores, 0.7, backend="ext")
    assert len(ext) == 15000
    assert torch.equal(ext, hnms.hnms(boxes, scores, 0.7, backend="torch"))


def test_score_order_uses_the_full_precision_of_the_score_dtype():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2, dtype=torch.float64)
    # float64 scores that are equal in float32: the higher one wins, not the lower index
    s64 = torch.tensor([0.5, math.nextafter(0.5, 1.0)], dtype=torch.float64)
    assert hnms.hnms(boxes, s64, 0.7, backend="ext").tolist() == [1]
    # the same in float32 are a tie: the lower index wins
    assert hnms.hnms(boxes, s64.float(), 0.7, backend="ext").tolist() == [0]
    # float16 and bfloat16 scores: -0.0 ties +0.0 (lower index), negative logits order correctly
    for dtype in (torch.float16, torch.bfloat16):
        s = torch.tensor([-0.0, 0.0], dtype=dtype)
        assert hnms.hnms(boxes, s, 0.7, backend="ext").tolist() == [0]
        s = torch.tensor([-3.0, -2.0], dtype=dtype)
        assert hnms.hnms(boxes, s, 0.7, backend="ext").tolist() == [1]
