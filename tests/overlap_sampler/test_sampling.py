"""The sampling functions of the Overlap Sampler on hand-built overlaps (Eqs. 1-3)."""

import math

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou

from overlap_sampler import (
    STRATEGIES,
    best_positive_weights,
    bin_indices,
    overlaps_among_examples,
    sample_iou_balanced,
    sample_negatives,
    sample_positives,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _inclusion_freq(fn, iou, num, trials, **kwargs):
    """Empirical inclusion probability of each candidate over ``trials`` draws (fixed seed)."""
    g = _gen(123)
    hits = torch.zeros(iou.numel())
    for _ in range(trials):
        idx = fn(iou, num, generator=g, **kwargs)
        assert idx.numel() == min(num, iou.numel())
        assert idx.unique().numel() == idx.numel(), "indices must be distinct"
        hits[idx] += 1
    return hits / trials


def _tol(p, trials, sigmas=5.0):
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / trials) + 1e-9


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_count_dtype_order(strategy):
    iou = torch.linspace(0, 0.7, 50)
    idx = sample_negatives(iou, 20, strategy, generator=_gen())
    assert idx.dtype == torch.int64 and idx.shape == (20,)
    assert torch.equal(idx, torch.sort(idx).values)
    assert idx.unique().numel() == 20 and int(idx.min()) >= 0 and int(idx.max()) < 50


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reproducible_with_generator(strategy):
    iou = torch.rand(200, generator=_gen(5)) * 0.7
    a = sample_negatives(iou, 40, strategy, generator=_gen(9))
    b = sample_negatives(iou, 40, strategy, generator=_gen(9))
    c = sample_negatives(iou, 40, strategy, generator=_gen(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_degenerate_inputs(strategy):
    empty = torch.zeros(0)
    assert sample_negatives(empty, 5, strategy).shape == (0,)
    iou = torch.tensor([0.1, 0.6, 0.3])
    assert sample_negatives(iou, 0, strategy).shape == (0,)
    # fewer candidates than asked: every one of them
    assert torch.equal(sample_negatives(iou, 10, strategy), torch.arange(3))
    # all IoU_pn zero (e.g. an image without positives): a uniform draw of the right size
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy=strategy, **k), torch.zeros(10), 4, 2000
    )
    assert torch.allclose(freq, torch.full((10,), 0.4), atol=_tol(0.4, 2000)), freq


def test_uniform_is_uniform():
    iou = torch.cat([torch.zeros(10), torch.full((10,), 0.6)])
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="uniform", **k), iou, 5, 3000
    )
    assert torch.allclose(freq, torch.full((20,), 0.25), atol=_tol(0.25, 3000)), freq


def test_hard_takes_every_high_overlap_first():
    # Eq. (1): U = #{IoU_pn >= θ} = 3 (0.55 itself counts), then N - U = 2 uniformly from the rest
    iou = torch.tensor([0.9, 0.1, 0.6, 0.2, 0.55, 0.0, 0.3, 0.549])
    for seed in range(20):
        idx = set(sample_negatives(iou, 5, "hard", threshold=0.55, generator=_gen(seed)).tolist())
        assert {0, 2, 4} <= idx, idx
        assert len(idx - {0, 2, 4}) == 2
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="hard", threshold=0.55, **k), iou, 5, 3000
    )
    low = torch.tensor([1, 3, 5, 6, 7])
    assert torch.allclose(freq[low], torch.full((5,), 0.4), atol=_tol(0.4, 3000)), freq


def test_hard_more_high_overlaps_than_asked():
    iou = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2])
    for seed in range(10):
        idx = sample_negatives(iou, 2, "hard", threshold=0.55, generator=_gen(seed))
        assert set(idx.tolist()) <= {0, 1, 2}


def test_bin_indices_eq2():
    iou = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.31, 0.6])
    # K = 2 over [0, 0.6]: split at 0.3; the maximum goes in the last bin
    assert bin_indices(iou, 2).tolist() == [0, 0, 0, 1, 1, 1]
    # fixed interval [0, 0.7) (footnote 3): split at 0.35
    assert bin_indices(iou, 2, interval_max=0.7).tolist() == [0, 0, 0, 0, 0, 1]
    assert bin_indices(torch.tensor([0.9]), 2, interval_max=0.7).tolist() == [1]
    assert bin_indices(torch.zeros(3), 4).tolist() == [0, 0, 0]


def test_soft_expectation_eq2():
    # 80 candidates in bin 0 ([0, 0.35)), 20 in bin 1 ([0.35, 0.7]), N = 20, K = 2:
    # Eq. (2) gives p = N/K · 1/N_k = 10/80 = 0.125 in bin 0 and 10/20 = 0.5 in bin 1.
    iou = torch.cat([torch.linspace(0.0, 0.34, 80), torch.linspace(0.36, 0.7, 20)])
    trials = 3000
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="soft", num_bins=2, **k), iou, 20, trials
    )
    assert abs(freq[:80].mean() - 0.125) < _tol(0.125, trials * 80), freq[:80].mean()
    assert abs(freq[80:].mean() - 0.5) < _tol(0.5, trials * 20), freq[80:].mean()
    assert (freq[:80] - 0.125).abs().max() < _tol(0.125, trials)
    assert (freq[80:] - 0.5).abs().max() < _tol(0.5, trials)


def test_soft_expectation_eq2_uneven_split():
    # N = 10, K = 3 does not divide: every bin still gets N/K in expectation.
    iou = torch.cat([torch.full((30,), 0.05), torch.full((30,), 0.3), torch.full((30,), 0.6)])
    trials = 3000
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="soft", num_bins=3, **k), iou, 10, trials
    )
    for b in range(3):
        mean = freq[30 * b : 30 * (b + 1)].mean()
        assert abs(mean - 1 / 9) < _tol(1 / 9, trials * 30), (b, mean)


def test_soft_small_bin_gives_all_and_shortfall_goes_to_others():
    iou = torch.cat([torch.full((50,), 0.1), torch.full((3,), 0.6)])
    for seed in range(10):
        idx = sample_negatives(iou, 20, "soft", num_bins=2, generator=_gen(seed))
        assert {50, 51, 52} <= set(idx.tolist())
        assert idx.numel() == 20


def test_soft_k1_is_uniform():
    iou = torch.cat([torch.zeros(10), torch.full((10,), 0.6)])
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="soft", num_bins=1, **k), iou, 5, 3000
    )
    assert torch.allclose(freq, torch.full((20,), 0.25), atol=_tol(0.25, 3000)), freq


def test_linear_expectation_eq3():
    # Eq. (3): p_i = N · IoU_i / Σ IoU = 2 · [0.1, 0.2, 0.3, 0.4] / 1.0; IoU = 0 never drawn
    iou = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0])
    trials = 4000
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="linear", **k), iou, 2, trials
    )
    expected = torch.tensor([0.2, 0.4, 0.6, 0.8, 0, 0, 0, 0])
    for f, e in zip(freq.tolist(), expected.tolist()):
        assert abs(f - e) <= _tol(e, trials), (freq, expected)


def test_linear_caps_probabilities_at_one():
    # raw p = 2 · 0.9 / 1.0 = 1.8 > 1: capped at 1, the other draw is shared 0.5 / 0.5
    iou = torch.tensor([0.9, 0.05, 0.05])
    freq = _inclusion_freq(
        lambda *a, **k: sample_negatives(*a, strategy="linear", **k), iou, 2, 3000
    )
    assert freq[0] == 1.0
    assert abs(freq[1] - 0.5) < _tol(0.5, 3000) and abs(freq[2] - 0.5) < _tol(0.5, 3000)


def test_linear_fewer_nonzero_than_asked_fills_uniformly():
    iou = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.3])
    idx = sample_negatives(iou, 3, "linear", generator=_gen())
    assert {1, 4} <= set(idx.tolist()) and idx.numel() == 3


def test_positive_sampler_same_strategies():
    iou = torch.tensor([0.9, 0.1, 0.6, 0.2, 0.3])
    idx = sample_positives(iou, 3, "hard", threshold=0.55, generator=_gen())
    assert {0, 2} <= set(idx.tolist())
    with pytest.raises(ValueError, match="iou_pe"):
        sample_positives(torch.tensor([float("nan")]), 1, "soft")


@pytest.mark.parametrize(
    "iou, match",
    [
        (torch.tensor([0.1, float("nan")]), "NaN"),
        (torch.tensor([0.1, float("inf")]), "NaN or inf"),
        (torch.zeros(2, 3), "1-D"),
        (torch.tensor([1, 0]), "floating"),
        (torch.tensor([0.1, 1.5]), r"\[0, 1\]"),
        (torch.tensor([-0.1]), r"\[0, 1\]"),
        ([0.1, 0.2], "torch.Tensor"),
    ],
)
def test_bad_iou(iou, match):
    with pytest.raises(ValueError, match=match) as e:
        sample_negatives(iou, 1, "soft")
    assert "iou_pn" in str(e.value)


def test_bad_arguments_name_the_argument_and_valid_values():
    iou = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match="strategy must be one of uniform, hard, soft, linear"):
        sample_negatives(iou, 1, "random")
    with pytest.raises(ValueError, match="num must be"):
        sample_negatives(iou, -1, "soft")
    with pytest.raises(ValueError, match="num must be"):
        sample_negatives(iou, 1.5, "soft")
    with pytest.raises(ValueError, match="num_bins"):
        sample_negatives(iou, 1, "soft", num_bins=0)
    with pytest.raises(ValueError, match="threshold"):
        sample_negatives(iou, 1, "hard", threshold=1.5)
    with pytest.raises(ValueError, match="interval_max"):
        sample_negatives(iou, 1, "soft", interval_max=0.0)


def test_iou_balanced_libra():
    # IoU with the ground truth in 3 bins over [0, 0.45]: 30 / 2 / 8 candidates, N = 12:
    # 4 per bin, the middle bin gives its 2, and the shortfall of 2 is drawn from the rest.
    iou_gn = torch.cat([torch.full((30,), 0.05), torch.full((2,), 0.2), torch.full((8,), 0.45)])
    for seed in range(10):
        idx = sample_iou_balanced(iou_gn, 12, num_bins=3, generator=_gen(seed))
        assert idx.numel() == 12 and idx.unique().numel() == 12
        assert {30, 31} <= set(idx.tolist())
        assert (idx >= 32).sum() >= 4 and (idx < 30).sum() >= 4
    assert torch.equal(sample_iou_balanced(iou_gn, 100), torch.arange(40))


def test_overlaps_among_examples_hand_built():
    boxes = Boxes(
        torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # 0: positive (an appended ground-truth box)
                [0.0, 0.0, 10.0, 9.0],  # 1: positive
                [5.0, 0.0, 15.0, 10.0],  # 2: negative, IoU 1/3 with box 0, 45/145 with box 1
                [20.0, 20.0, 30.0, 30.0],  # 3: negative, no overlap
                [0.0, 5.0, 10.0, 15.0],  # 4: ignored
            ]
        )
    )
    is_pos = torch.tensor([True, True, False, False, False])
    is_neg = torch.tensor([False, False, True, True, False])
    iou_pos = pairwise_iou(boxes[is_pos], boxes)
    iou_pn, iou_pe = overlaps_among_examples(iou_pos, is_pos, is_neg)
    assert torch.allclose(iou_pn, torch.tensor([1 / 3, 0.0]))
    assert torch.allclose(iou_pe, torch.tensor([1 / 3, 45 / 145]))  # with negatives only
    _, iou_pe_all = overlaps_among_examples(iou_pos, is_pos, is_neg, pe_with="examples")
    assert torch.allclose(iou_pe_all, torch.tensor([0.9, 0.9]))  # with each other, not itself
    # no positives: IoU_pn all zero
    none = torch.zeros(5, dtype=torch.bool)
    iou_pn, iou_pe = overlaps_among_examples(torch.zeros(0, 5), none, is_neg)
    assert iou_pn.tolist() == [0.0, 0.0] and iou_pe.numel() == 0
    with pytest.raises(ValueError, match="pe_with"):
        overlaps_among_examples(iou_pos, is_pos, is_neg, pe_with="all")
    with pytest.raises(ValueError, match="iou_pos"):
        overlaps_among_examples(iou_pos[:1], is_pos, is_neg)


def test_best_positive_weights_lands_on_best_matched():
    gt_iou = torch.tensor([0.6, 0.9, 0.7, 0.7, 0.3, 0.1])
    gt_index = torch.tensor([0, 0, 1, 1, 0, 1])
    is_fg = torch.tensor([True, True, True, True, False, False])
    w = best_positive_weights(gt_iou, gt_index, is_fg, num_gt=2, epsilon=2.0)
    # best of gt 0: RoI 1 (0.9); gt 1: tie 0.7 -> lowest index 2; then scaled to sum R = 6
    expected = torch.tensor([1.0, 2.0, 2.0, 1.0, 1.0, 1.0]) * 6 / 8
    assert torch.allclose(w, expected), w
    assert abs(float(w.sum()) - 6) < 1e-5
    ones = torch.ones(6)
    assert torch.equal(best_positive_weights(gt_iou, gt_index, is_fg, 2, 1.0), ones)
    assert torch.equal(
        best_positive_weights(gt_iou, gt_index, torch.zeros(6, dtype=bool), 2, 2.0), ones
    )
    assert torch.equal(best_positive_weights(gt_iou, gt_index, is_fg, 0, 2.0), ones)
    assert best_positive_weights(
        torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=bool), 1, 2.0
    ).shape == (0,)
    with pytest.raises(ValueError, match="epsilon"):
        best_positive_weights(gt_iou, gt_index, is_fg, 2, 0.0)


def test_soft_shortfall_is_spread_evenly_over_the_other_bins():
    # K = 3 bins of 50 / 2 / 50 candidates, N = 12: quotas 4 / 2 / 4, and the middle bin's
    # shortfall of 2 goes one to each other bin: exactly 5 / 2 / 5 every time.
    iou = torch.cat([torch.full((50,), 0.05), torch.full((2,), 0.3), torch.full((50,), 0.6)])
    for seed in range(10):
        idx = sample_negatives(iou, 12, "soft", num_bins=3, generator=_gen(seed))
        per_bin = [int((idx < 50).sum()), int(((idx >= 50) & (idx < 52)).sum())]
        per_bin.append(int((idx >= 52).sum()))
        assert per_bin == [5, 2, 5], per_bin
