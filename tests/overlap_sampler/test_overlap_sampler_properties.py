"""Property-based tests of overlap_sampler's sampling functions (hypothesis; profile in
tests/conftest.py): random sizes, dtypes, ties, empty and all-zero inputs, extreme values; every
property is a defined result (the invariants of Eqs. 1-3 and of the ε weights) or a ValueError
naming the argument."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from overlap_sampler import (
    STRATEGIES,
    best_positive_weights,
    bin_indices,
    overlaps_among_examples,
    sample_iou_balanced,
    sample_negatives,
    sample_positives,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# IoUs with ties, zeros and ones overrepresented
iou_values = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.0, 0.5, 0.55, 1.0]))


@st.composite
def ious(draw, max_n=60):
    values = draw(st.lists(iou_values, max_size=max_n))
    return torch.tensor(values, dtype=torch.float64).to(draw(st.sampled_from(DTYPES)))


interval_maxes = st.one_of(st.none(), st.floats(0.01, 1.0))


@pytest.mark.parametrize("fn", [sample_negatives, sample_positives])
@given(
    iou=ious(),
    num=st.integers(0, 80),
    strategy=st.sampled_from(STRATEGIES),
    num_bins=st.integers(1, 5),
    threshold=st.floats(0.0, 1.0),
    interval_max=interval_maxes,
    seed=st.integers(0, 2**16),
)
def test_samplers_return_distinct_sorted_indices(
    fn, iou, num, strategy, num_bins, threshold, interval_max, seed
):
    def run():
        g = torch.Generator().manual_seed(seed)
        return fn(iou, num, strategy, num_bins, threshold, g, interval_max)

    out = run()
    m = iou.numel()
    assert out.dtype == torch.int64 and out.shape == (min(num, m),)
    assert (out[1:] > out[:-1]).all() and (out >= 0).all() and (out < m).all()
    assert torch.equal(out, run())  # reproducible from the generator
    values = iou.double()
    chosen = torch.zeros(m, dtype=torch.bool)
    chosen[out] = True
    if strategy == "hard" and num < m:  # Eq. (1): the candidates with IoU >= θ first
        above = values >= threshold
        if int(above.sum()) <= num:
            assert chosen[above].all()
        else:
            assert not chosen[~above].any()
    if strategy == "linear" and num < m:  # Eq. (3): p_i = 0 for IoU = 0 unless needed
        if int((values > 0).sum()) >= num:
            assert not chosen[values <= 0].any()
    if strategy == "soft" and num < m:  # Eq. (2): bins as equal as their sizes allow
        bins = bin_indices(iou, num_bins, interval_max)
        counts = torch.bincount(bins, minlength=num_bins)
        taken = torch.bincount(bins[out], minlength=num_bins)
        open_bins = taken < counts
        if bool(open_bins.any()):
            assert taken[open_bins].min() >= taken.max() - 1


@given(iou=ious(), num=st.integers(0, 80), num_bins=st.integers(1, 5), seed=st.integers(0, 99))
def test_iou_balanced_baseline_returns_distinct_sorted_indices(iou, num, num_bins, seed):
    out = sample_iou_balanced(iou, num, num_bins, torch.Generator().manual_seed(seed))
    assert out.shape == (min(num, iou.numel()),)
    assert (out[1:] > out[:-1]).all()


@given(iou=ious(), num_bins=st.integers(1, 6), interval_max=interval_maxes)
def test_bin_indices_are_in_range_and_monotone(iou, num_bins, interval_max):
    k = bin_indices(iou, num_bins, interval_max)
    assert k.shape == iou.shape and k.dtype == torch.int64
    if iou.numel():
        assert k.min() >= 0 and k.max() < num_bins
        order = torch.argsort(iou.double())
        assert (k[order][1:] >= k[order][:-1]).all()  # a larger IoU never gets a lower bin


BAD = [math.nan, math.inf, -math.inf, -0.1, 1.5, 1e30]


@given(
    iou=ious(max_n=10),
    bad=st.sampled_from(BAD),
    where=st.integers(0, 9),
    fn=st.sampled_from([sample_negatives, sample_positives]),
)
def test_bad_ious_give_a_value_error_naming_the_argument(iou, bad, where, fn):
    if iou.numel() == 0:
        iou = torch.zeros(1)
    iou = iou.double().clone()
    iou[where % iou.numel()] = bad
    name = "iou_pn" if fn is sample_negatives else "iou_pe"
    with pytest.raises(ValueError, match=f"^{name} "):
        fn(iou, 3, "soft")
    with pytest.raises(ValueError, match=f"^{name} must be 1-D"):
        fn(iou[None], 3, "soft")
    with pytest.raises(ValueError, match=f"^{name} must be a floating-point"):
        fn((iou.nan_to_num() > 0).long(), 3, "soft")


@pytest.mark.parametrize(
    "name, values",
    [
        ("num", [-1, True, 2.5, None]),
        ("num_bins", [0, -3, True, 1.5]),
        ("threshold", [-0.01, 1.01, math.nan, math.inf]),
        ("interval_max", [0.0, -0.5, 1.5, math.nan]),
        ("strategy", ["random", "", None]),
    ],
)
def test_bad_arguments_give_a_value_error_naming_them(name, values):
    args = {"num": 2, "strategy": "soft", "num_bins": 2, "threshold": 0.5, "interval_max": None}
    for value in values:
        with pytest.raises(ValueError, match=f"^{name}"):
            sample_negatives(torch.tensor([0.1, 0.5, 0.9]), **{**args, name: value})


@given(
    num_pos=st.integers(0, 6),
    num_neg=st.integers(0, 10),
    num_ignored=st.integers(0, 3),
    pe_with=st.sampled_from(["negatives", "examples"]),
    seed=st.integers(0, 99),
)
def test_overlaps_among_examples_are_ious_of_the_right_pairs(
    num_pos, num_neg, num_ignored, pe_with, seed
):
    g = torch.Generator().manual_seed(seed)
    e = num_pos + num_neg + num_ignored
    labels = torch.cat([torch.full((n,), v) for n, v in ((num_pos, 1), (num_neg, 0),
                                                         (num_ignored, -1))])  # fmt: skip
    labels = labels[torch.randperm(e, generator=g)]
    is_pos, is_neg = labels == 1, labels == 0
    iou = torch.rand(num_pos, e, generator=g)
    iou_pn, iou_pe = overlaps_among_examples(iou, is_pos, is_neg, pe_with)
    assert iou_pn.shape == (num_neg,) and iou_pe.shape == (num_pos,)
    assert ((iou_pn >= 0) & (iou_pn <= 1)).all() and ((iou_pe >= 0) & (iou_pe <= 1)).all()
    if num_pos and num_neg:
        assert torch.equal(iou_pn, iou[:, is_neg].amax(0))  # IoU^{p,n}
    if num_pos:
        others = is_neg if pe_with == "negatives" else is_pos | is_neg
        pos = torch.nonzero(is_pos).flatten()
        for j, p in enumerate(pos.tolist()):
            mask = others.clone()
            mask[p] = False
            expected = iou[j, mask].max().item() if mask.any() else 0.0
            assert iou_pe[j].item() == expected


@given(
    r=st.integers(0, 30),
    num_gt=st.integers(0, 5),
    epsilon=st.one_of(st.floats(1e-3, 10.0), st.just(1.0)),
    seed=st.integers(0, 99),
)
def test_best_positive_weights_match_a_literal_reading(r, num_gt, epsilon, seed):
    g = torch.Generator().manual_seed(seed)
    gt_iou = torch.randint(0, 4, (r,), generator=g) / 4.0  # ties in IoU
    gt_index = torch.randint(0, max(num_gt, 1), (r,), generator=g)
    is_fg = torch.rand(r, generator=g) < 0.5
    w = best_positive_weights(gt_iou, gt_index, is_fg, num_gt, epsilon)
    assert w.shape == (r,) and w.dtype == torch.float32 and (w > 0).all()
    # §3.2: per ground truth, its best-matched sampled positive (largest IoU, lowest index on
    # ties) gets ε, every other RoI 1; then scaled to sum to R
    expected = [1.0] * r
    if num_gt:
        best = {}
        for i in range(r):
            if is_fg[i] and (
                gt_index[i].item() not in best or gt_iou[i] > gt_iou[best[gt_index[i].item()]]
            ):
                best[gt_index[i].item()] = i
        for i in best.values():
            expected[i] = float(epsilon)
    expected = torch.tensor(expected) * (r / sum(expected)) if r else torch.zeros(0)
    torch.testing.assert_close(w, expected.float(), rtol=1e-5, atol=1e-6)


@given(epsilon=st.sampled_from([0.0, -1.0, math.nan]))
def test_best_positive_weights_reject_a_non_positive_epsilon(epsilon):
    with pytest.raises(ValueError, match="^epsilon"):
        best_positive_weights(
            torch.rand(3), torch.zeros(3).long(), torch.ones(3).bool(), 1, epsilon
        )
