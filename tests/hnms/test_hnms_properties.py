"""Property-based tests of hnms's public functions (hypothesis; profile in tests/conftest.py).

Random shapes, dtypes, empty and degenerate inputs and extreme values; every property is a
defined result (agreement of the backends, the invariants of Alg. 1-4 and of Soft-NMS) or a
ValueError naming the argument.
"""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torchvision.ops import box_iou

import hnms
from hnms import INVALID_CODE, _ext

HAS_EXT = _ext.load() is not None
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
EXTREME = [0.0, -0.0, 1e-300, 5e-324, 1e30, -1e30, 1e300, 1.7e308, math.inf, -math.inf, math.nan]

# any float a caller may pass, the extremes overrepresented
coords = st.one_of(
    st.floats(-1e4, 1e4),
    st.sampled_from(EXTREME),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
scores_st = st.one_of(
    st.floats(-10, 10), st.sampled_from([0.0, -0.0, 0.5, math.inf, -math.inf, math.nan])
)
alphas = st.one_of(st.floats(0.05, 0.95), st.sampled_from([1e-6, 0.3, 0.7, 0.73, 1 - 1e-9]))
dtypes = st.sampled_from(DTYPES)


@st.composite
def box_sets(draw, max_n=30, extreme=True):
    """(boxes [N, 4], scores [N]) of one dtype: clusters of jittered boxes (so that cells are
    shared), duplicates, degenerate and, with ``extreme``, arbitrary floats."""
    n = draw(st.integers(0, max_n))
    dtype = draw(dtypes)
    cx, cy = draw(st.floats(-1e3, 1e3)), draw(st.floats(-1e3, 1e3))
    w, h = draw(st.floats(0.5, 200)), draw(st.floats(0.5, 200))
    rows = []
    for _ in range(n):
        kind = draw(st.integers(0, 9 if extreme else 7))
        if kind <= 5:  # a jittered copy of the cluster's box
            dx, dy = draw(st.floats(-0.5, 0.5)), draw(st.floats(-0.5, 0.5))
            sw, sh = math.exp(draw(st.floats(-0.4, 0.4))), math.exp(draw(st.floats(-0.4, 0.4)))
            x, y, bw, bh = cx + dx * w, cy + dy * h, w * sw, h * sh
            rows.append([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2])
        elif kind <= 6 and rows:  # an exact duplicate
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
        elif kind <= 7:  # zero or negative size
            x1, y1 = draw(st.floats(-1e3, 1e3)), draw(st.floats(-1e3, 1e3))
            rows.append([x1, y1, x1 - draw(st.floats(0, 10)), y1 + draw(st.floats(0, 10))])
        else:  # anything
            rows.append([draw(coords) for _ in range(4)])
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4).to(dtype)
    scores = torch.tensor([draw(scores_st) for _ in range(n)], dtype=torch.float64).to(dtype)
    return boxes, scores


def _alg2(codes, scores, groups=None):
    """Alg. 2 on given codes: the best box of every cell (higher score, then lower index); boxes
    with INVALID_CODE and non-NaN scores pass; NaN-scored boxes are dropped."""
    best = {}
    keep = []
    for i, (code, s) in enumerate(zip(codes, scores)):
        if math.isnan(s):
            continue
        if code[0] == INVALID_CODE:
            keep.append(i)
            continue
        key = (*code, groups[i] if groups is not None else 0)
        if key not in best or s > scores[best[key]]:
            best[key] = i
    keep += list(best.values())
    return sorted(keep, key=lambda i: (-(scores[i] + 0.0), i))


# ---------------------------------------------------------------- IoUHash and HNMS


@given(box_sets(), alphas, st.integers(1, 3), st.integers(0, 2))
def test_hnms_is_alg2_on_the_codes_and_the_backends_agree(data, alpha, num_hashes, num_groups):
    boxes, scores = data
    groups = torch.arange(len(boxes)) % max(num_groups, 1) if num_groups else None
    args = (groups,) if groups is not None else ()
    fn = hnms.batched_hnms if groups is not None else hnms.hnms
    keep = fn(boxes, scores, *args, alpha, num_hashes, backend="torch")
    assert keep.dtype == torch.int64 and keep.shape == (len(set(keep.tolist())),)
    s = scores.double().tolist()
    if num_hashes == 1:  # Alg. 2 exactly
        codes = hnms.iou_hash(boxes, alpha, backend="torch").tolist()
        g = groups.tolist() if groups is not None else None
        assert keep.tolist() == _alg2(codes, s, g)
    else:  # the cascade only removes boxes
        one = set(fn(boxes, scores, *args, alpha, 1, backend="torch").tolist())
        assert set(keep.tolist()) <= one
    kept = [s[i] for i in keep.tolist()]
    assert not any(math.isnan(v) for v in kept)
    assert all(a >= b for a, b in zip(kept, kept[1:]))  # by decreasing score
    if HAS_EXT:
        ext = fn(boxes, scores, *args, alpha, num_hashes, backend="ext")
        assert torch.equal(ext, keep)
        assert torch.equal(
            hnms.iou_hash(boxes, alpha, backend="ext"), hnms.iou_hash(boxes, alpha, backend="torch")
        )


@given(box_sets(extreme=False), alphas, st.floats(0.1, 10), st.floats(-3, 3))
def test_boxes_sharing_a_cell_have_at_least_the_bound_iou(data, alpha, w0, b):
    boxes, _ = data
    boxes = boxes.double()
    codes = hnms.iou_hash(boxes, alpha, w0=w0, h0=w0, bx=b, by=-b)
    valid = (codes != INVALID_CODE).all(dim=1)
    ok = torch.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    assert torch.equal(valid, ok)  # with moderate coordinates only degenerate boxes are invalid
    same = (codes[:, None, :] == codes[None, :, :]).all(-1) & valid[:, None] & valid[None, :]
    if bool(same.any()):
        bound = hnms.iou_lower_bound(alpha)
        assert box_iou(boxes, boxes)[same].min().item() >= bound - 1e-9


@given(box_sets(max_n=12), alphas)
def test_codes_are_in_range_or_invalid(data, alpha):
    boxes, _ = data
    codes = hnms.iou_hash(boxes, alpha)
    assert codes.shape == (len(boxes), 4) and codes.dtype == torch.int64
    invalid = (codes == INVALID_CODE).all(1)
    assert torch.equal(invalid, (codes == INVALID_CODE).any(1))  # all four or none
    assert (codes[~invalid].abs() < 2**52).all()


@pytest.mark.parametrize("name", ["alpha", "w0", "h0", "bx", "by", "num_hashes"])
# integers up to 8 (K hash functions cost K passes: K = 2^60 is valid and takes forever)
@given(
    value=st.one_of(st.sampled_from(EXTREME), st.floats(-5, 5), st.booleans(), st.integers(-3, 8))
)
def test_parameters_give_a_result_or_a_value_error_naming_them(name, value):
    boxes, scores = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([0.5, 0.6])
    args = {"alpha": 0.7, "num_hashes": 1, name: value}
    try:
        keep = hnms.hnms(boxes, scores, **args)
    except ValueError as e:
        assert str(e).startswith(name)
        return
    assert keep.tolist() in ([1], [1, 0])
    assert not isinstance(value, bool)
    # accepted parameters hash ordinary boxes (bx = 1e300 used to pass and hash none)
    hash_args = {k: v for k, v in args.items() if k != "num_hashes"}
    assert (hnms.iou_hash(boxes, **hash_args) != INVALID_CODE).all()
    if name == "num_hashes":
        assert isinstance(value, int) and value >= 1
    else:
        assert math.isfinite(value)


@given(st.floats(1e-4, 1 - 1e-4), st.floats(1e-4, 1 - 1e-4))
def test_iou_lower_bound_is_monotone_and_alpha_for_iou_reaches_it(a, b):
    lo, hi = sorted((a, b))
    assert 0.0 <= hnms.iou_lower_bound(lo) <= hnms.iou_lower_bound(hi) < 1.0
    assert hnms.iou_lower_bound(hnms.alpha_for_iou(lo)) >= lo


@given(st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 1.0, -0.5, 2.0])))
def test_iou_lower_bound_rejects_alpha_outside_the_unit_interval(alpha):
    if 0.0 < alpha < 1.0:
        assert 0.0 <= hnms.iou_lower_bound(alpha) < 1.0
    else:
        with pytest.raises(ValueError, match="alpha must be in"):
            hnms.iou_lower_bound(alpha)


# ---------------------------------------------------------------- Soft-NMS


@given(
    box_sets(max_n=20),
    st.sampled_from(["linear", "gaussian"]),
    st.floats(0.05, 2.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 0.5),
    st.integers(0, 2),
)
def test_soft_nms_invariants_and_backends(data, method, sigma, nt, thresh, num_groups):
    boxes, scores = data
    assume(not bool(torch.isinf(scores).any()))  # rejected with a ValueError, tested below
    groups = torch.arange(len(boxes)) % max(num_groups, 1)
    keep, new = hnms.batched_soft_nms(
        boxes, scores, groups, method, sigma, nt, thresh, backend="torch"
    )
    assert keep.dtype == torch.int64 and new.dtype == scores.dtype
    assert len(set(keep.tolist())) == len(keep)
    s = scores.double()
    assert not bool(torch.isnan(s[keep]).any())
    ref_keep, ref_new = hnms.batched_soft_nms(
        boxes.double(), s, groups, method, sigma, nt, thresh, backend="torch"
    )
    assert torch.equal(ref_keep, keep)  # every dtype is computed in float64
    # every group with a non-NaN score outputs its best box (the lowest index among the best),
    # with its score unchanged; every other output box scores >= the threshold
    firsts = set()
    for g in set(groups.tolist()):
        members = torch.nonzero((groups == g) & ~torch.isnan(s)).flatten()
        if members.numel():
            best = int(members[torch.argmax(s[members])])
            firsts.add(best)
            assert best in ref_keep.tolist()
            assert ref_new[ref_keep.tolist().index(best)] == s[best]
    for i, v in zip(ref_keep.tolist(), ref_new.tolist()):
        assert i in firsts or v >= thresh
    assert (new.double()[:-1] >= new.double()[1:]).all()
    if HAS_EXT:
        ext = hnms.batched_soft_nms(boxes, scores, groups, method, sigma, nt, thresh, backend="ext")
        assert torch.equal(ext[0], keep)
        torch.testing.assert_close(ext[1], new, rtol=1e-6, atol=0, equal_nan=True)


@given(box_sets(max_n=6), st.sampled_from([math.inf, -math.inf]))
def test_soft_nms_rejects_infinite_scores(data, inf):
    boxes, scores = data
    assume(len(boxes) > 0)
    scores = scores.clone()
    scores[0] = inf
    with pytest.raises(ValueError, match="scores must be finite"):
        hnms.soft_nms(boxes, scores)


@pytest.mark.parametrize("name", ["sigma", "iou_threshold", "score_threshold"])
@given(value=st.one_of(st.sampled_from(EXTREME), st.floats(-2, 2), st.booleans()))
def test_soft_nms_parameters_give_a_result_or_a_value_error_naming_them(name, value):
    boxes, scores = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([0.5, 0.6])
    try:
        keep, _ = hnms.soft_nms(boxes, scores, **{name: value})
    except ValueError as e:
        assert str(e).startswith(name)
        return
    assert keep[0].item() == 1 and math.isfinite(value) and not isinstance(value, bool)


@given(box_sets(max_n=8))
def test_bad_tensors_give_value_errors_naming_them(data):
    boxes, scores = data
    for call in (hnms.hnms, lambda b, s, a: hnms.soft_nms(b, s)):
        with pytest.raises(ValueError, match="^boxes"):
            call(boxes.reshape(-1), scores, 0.7)
        with pytest.raises(ValueError, match="^scores"):
            call(boxes, torch.cat([scores, scores[:1].double().new_zeros(1).to(scores.dtype)]), 0.7)
        with pytest.raises(ValueError, match="^boxes"):
            call(boxes.long(), scores, 0.7)
        with pytest.raises(ValueError, match="^scores is on meta"):
            call(boxes, scores.to("meta"), 0.7)
