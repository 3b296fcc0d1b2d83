"""Eq. (2)-(4) and Algorithm 1 of Rank-NMS on hand-computed examples (values derived by hand and
checked against the equations; see ../shared/reference/rank_nms.md §6, T1-T8)."""

import math

import pytest
import torch

from rank_nms import (
    full_pairs,
    fuse_scores,
    num_iou_levels,
    quantize_iou,
    ranking_loss,
    sample_pairs,
)

# T1: IoU -> level, origin 0.5, width 0.05 (ceil: S_k = (0.5 + 0.05(k-1), 0.5 + 0.05k])
T1 = {
    0.0: 0, 0.3: 0, 0.49: 0, 0.5: 0, 0.5000001: 1, 0.51: 1, 0.55: 1, 0.56: 2, 0.60: 2, 0.62: 3,
    0.65: 3, 0.70: 4, 0.74: 5, 0.75: 5, 0.80: 6, 0.85: 7, 0.88: 8, 0.90: 8, 0.93: 9, 0.95: 9,
    0.951: 10, 0.97: 10, 1.0: 10,
}  # fmt: skip

# T2/T3: one image
T2_IOU = [0.30, 0.45, 0.52, 0.58, 0.66, 0.74, 0.91, 0.97]
T2_LEVELS = [0, 0, 1, 2, 4, 5, 9, 10]
T3_SCORES = [0.9, 0.1, 0.5, 0.35, 0.2, 0.8, 0.65, 0.4]
T3_PAIRS = {
    1: {(2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0)},
    2: {(2, 0), (2, 1), (3, 0), (3, 2), (4, 0), (4, 2), (5, 0), (5, 2), (6, 0), (6, 5), (7, 0),
        (7, 5)},
    3: {(2, 0), (2, 1), (3, 0), (3, 2), (3, 1), (4, 0), (4, 2), (4, 3), (5, 0), (5, 2), (5, 3),
        (6, 0), (6, 5), (6, 2), (7, 0), (7, 5), (7, 6)},
}  # fmt: skip


def _pairs(pos, neg):
    return set(zip(pos.tolist(), neg.tolist()))


def _t3(h):
    levels = torch.tensor(T2_LEVELS)
    scores = torch.tensor(T3_SCORES)
    return levels, scores, sample_pairs(levels, scores, h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantize_iou_exact_at_level_boundaries(dtype):
    iou = torch.tensor(list(T1), dtype=dtype)
    assert quantize_iou(iou).tolist() == list(T1.values())
    assert quantize_iou(iou).dtype == torch.int64


@pytest.mark.parametrize(
    "dtype, value, naive_level", [(torch.float64, 0.55, 2), (torch.float64, 0.80, 7),
                                  (torch.float32, 0.60, 3), (torch.float32, 0.85, 8)]
)  # fmt: skip
def test_the_literal_ceil_formula_is_wrong_where_quantize_iou_is_right(dtype, value, naive_level):
    iou = torch.tensor([value], dtype=dtype)
    naive = torch.ceil(torch.clamp(iou - 0.5, min=0) / 0.05).long()
    assert naive.item() == naive_level  # the bug this implementation avoids
    assert quantize_iou(iou).item() == T1[value]


def test_quantize_iou_ref_nms_levels_and_shapes():
    # Ref-NMS: 0.1-wide levels, 6 of them
    iou = torch.tensor([0.5, 0.55, 0.6, 0.61, 0.7, 0.71, 0.9, 0.95, 1.0])
    assert quantize_iou(iou, width=0.1).tolist() == [0, 1, 1, 2, 2, 3, 4, 5, 5]
    assert num_iou_levels(0.5, 0.1) == 6 and num_iou_levels() == 11
    assert quantize_iou(torch.rand(3, 4)).shape == (3, 4)
    assert quantize_iou(torch.zeros(0)).shape == (0,)


def test_quantize_iou_bad_input():
    with pytest.raises(TypeError, match="iou"):
        quantize_iou(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="NaN"):
        quantize_iou(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="width"):
        quantize_iou(torch.tensor([0.5]), width=0.0)
    with pytest.raises(ValueError, match="origin"):
        quantize_iou(torch.tensor([0.5]), origin=1.0)


def test_t2_splitting():
    assert quantize_iou(torch.tensor(T2_IOU)).tolist() == T2_LEVELS


@pytest.mark.parametrize("h", [1, 2, 3])
def test_algorithm1_pairs_hand_computed(h):
    _, _, (pos, neg) = _t3(h)
    assert _pairs(pos, neg) == T3_PAIRS[h]
    assert pos.numel() == len(T3_PAIRS[h])  # no duplicates


def test_algorithm1_without_top_h_is_every_cross_level_pair():
    levels, _, (pos, neg) = _t3(None)
    expected = {(j, i) for j in range(8) for i in range(8) if T2_LEVELS[i] < T2_LEVELS[j]}
    assert _pairs(pos, neg) == expected and len(expected) == 27
    assert bool((levels[pos] > levels[neg]).all())


def test_algorithm1_short_levels_skip_variant():
    levels, scores = torch.tensor(T2_LEVELS), torch.tensor(T3_SCORES)
    # h = 3: level 1 has only 2 lower boxes (0, 1): skipped; level 2 has 3: kept
    pos, neg = sample_pairs(levels, scores, 3, skip_short_levels=True)
    assert _pairs(pos, neg) == T3_PAIRS[3] - {(2, 0), (2, 1)}


def test_algorithm1_ties_go_to_the_lower_index():
    levels = quantize_iou(torch.tensor([0.1, 0.2, 0.3, 0.6]))
    pos, neg = sample_pairs(levels, torch.tensor([0.5, 0.5, 0.5, 0.0]), 2)
    assert _pairs(pos, neg) == {(3, 0), (3, 1)}


def test_algorithm1_never_pairs_across_groups():
    levels = torch.tensor([0, 3, 0, 3])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.3])
    pos, neg = sample_pairs(levels, scores, 5, groups=torch.tensor([0, 0, 1, 1]))
    assert _pairs(pos, neg) == {(1, 0), (3, 2)}


@pytest.mark.parametrize(
    "levels",
    [[0, 0, 0], [3, 3, 3], [], [3, 7]],
    ids=["only-S0", "one-level", "no-rois", "fg-only-no-S0"],
)
def test_algorithm1_degenerate_inputs(levels):
    lv = torch.tensor(levels, dtype=torch.int64)
    pos, neg = sample_pairs(lv, torch.arange(len(levels), dtype=torch.float32), 2)
    expected = {(1, 0)} if levels == [3, 7] else set()  # i = 7: Pos_7 × top-h(S_3)
    assert _pairs(pos, neg) == expected
    assert pos.dtype == neg.dtype == torch.int64


def test_sample_pairs_bad_input():
    lv, sc = torch.tensor([0, 1]), torch.tensor([0.1, 0.2])
    for bad_h in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_h"):
            sample_pairs(lv, sc, bad_h)
    with pytest.raises(ValueError, match="NaN"):
        sample_pairs(lv, torch.tensor([0.1, float("nan")]), 1)
    with pytest.raises(ValueError, match="one entry per box"):
        sample_pairs(lv, torch.tensor([0.1]), 1)
    with pytest.raises(TypeError, match="levels"):
        sample_pairs(lv.float(), sc, 1)


def test_loss_value_and_gradient_hand_example():
    levels, scores, (pos, neg) = _t3(2)
    r = scores.double().requires_grad_()
    loss = ranking_loss(r, pos, neg, margin=0.5)
    assert loss.item() == pytest.approx(8.8 / 12)
    loss.backward()
    expected = torch.tensor([6, 1, 1, -2, -2, 0, -2, -2], dtype=torch.float64) / 12
    torch.testing.assert_close(r.grad, expected)
    assert r.grad.sum().item() == pytest.approx(0.0, abs=1e-12)  # pairwise: sums to zero


@pytest.mark.parametrize("margin, total", [(0.0, 3.5), (0.25, 6.0), (1.0, 14.8)])
def test_loss_margins(margin, total):
    _, scores, (pos, neg) = _t3(2)
    assert ranking_loss(scores.double(), pos, neg, margin).item() == pytest.approx(total / 12)


def test_loss_h1_h3_all_levels_full_pairs_and_normalisations():
    scores = torch.tensor(T3_SCORES, dtype=torch.float64)
    _, _, (pos, neg) = _t3(1)
    assert ranking_loss(scores, pos, neg).item() == pytest.approx(5.5 / 6)
    _, _, (pos, neg) = _t3(3)
    assert ranking_loss(scores, pos, neg).item() == pytest.approx(10.85 / 17)
    _, _, (pos, neg) = _t3(None)
    assert ranking_loss(scores, pos, neg).item() == pytest.approx(13.05 / 27)
    assert ranking_loss(scores, pos, neg, normalization="violating").item() == pytest.approx(
        13.05 / 24
    )
    pos, neg = full_pairs(torch.tensor(T2_IOU, dtype=torch.float64))
    assert pos.numel() == 28
    assert ranking_loss(scores, pos, neg).item() == pytest.approx(14.35 / 28)


def test_loss_two_images_pair_mean_vs_image_mean():
    # image A = T3 with h = 2 (12 pairs, sum 8.8); image B: one pair with hinge 0.7
    levels = torch.tensor(T2_LEVELS + [0, 4])
    scores = torch.tensor(T3_SCORES + [0.3, 0.1], dtype=torch.float64)
    groups = torch.tensor([0] * 8 + [1] * 2)
    pos, neg = sample_pairs(levels, scores, 2, groups=groups)
    assert pos.numel() == 13 and (9, 8) in _pairs(pos, neg)
    assert ranking_loss(scores, pos, neg).item() == pytest.approx(9.5 / 13)
    by_image = ranking_loss(scores, pos, neg, normalization="image", pair_groups=groups[pos])
    assert by_image.item() == pytest.approx((8.8 / 12 + 0.7) / 2)


def test_loss_invariances():
    _, scores, (pos, neg) = _t3(2)
    s = scores.double()
    base = ranking_loss(s, pos, neg, 0.5)
    assert ranking_loss(s + 3.0, pos, neg, 0.5).item() == pytest.approx(base.item())
    assert ranking_loss(2.0 * s, pos, neg, 1.0).item() == pytest.approx(2.0 * base.item())


def test_loss_kink_has_zero_gradient():
    s = torch.tensor([0.0, 0.5], requires_grad=True)  # s_pos - s_neg == margin exactly
    ranking_loss(s, torch.tensor([1]), torch.tensor([0]), 0.5).backward()
    assert s.grad.tolist() == [0.0, 0.0]


def test_loss_without_pairs_is_a_connected_zero():
    s = torch.tensor([0.3, 0.1], requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = ranking_loss(s, empty, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert s.grad.tolist() == [0.0, 0.0]


def test_loss_bad_input():
    s, p, n = torch.tensor([0.1, 0.2]), torch.tensor([1]), torch.tensor([0])
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin"):
            ranking_loss(s, p, n, margin=bad)
    with pytest.raises(ValueError, match="NaN"):
        ranking_loss(torch.tensor([0.1, float("nan")]), p, n)
    with pytest.raises(ValueError, match="normalization"):
        ranking_loss(s, p, n, normalization="mean")
    with pytest.raises(ValueError, match="pair_groups"):
        ranking_loss(s, p, n, normalization="image")
    with pytest.raises(ValueError, match="equal length"):
        ranking_loss(s, p, torch.tensor([0, 1]))


def test_full_pairs_strict_and_grouped():
    iou = torch.tensor([0.6, 0.6, 0.7, 0.2])
    pos, neg = full_pairs(iou, groups=torch.tensor([0, 0, 0, 1]))
    assert _pairs(pos, neg) == {(2, 0), (2, 1)}  # the tie (0, 1) forms no pair


def test_fuse_scores_eq4():
    rank = torch.tensor([0.81, 1.3])
    cls = torch.tensor([[0.70, 0.1], [0.62, 0.2]])
    fused = fuse_scores(rank, cls, 0.15)
    torch.testing.assert_close(fused, 0.15 * rank[:, None] + 0.85 * cls)
    assert fused[0, 0].item() == pytest.approx(0.7165)
    assert torch.equal(fuse_scores(rank, cls, 0.0), cls)  # NMS-Cls exactly
    assert torch.equal(fuse_scores(rank, cls, 1.0), rank[:, None].expand(2, 2))  # NMS-LTR
    assert fuse_scores(rank, cls[:, 0], 0.15).shape == (2,)


def test_fuse_scores_bad_input():
    rank, cls = torch.tensor([0.1]), torch.tensor([[0.5]])
    for beta in (-0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match="beta"):
            fuse_scores(rank, cls, beta)
    with pytest.raises(ValueError, match="equal length"):
        fuse_scores(torch.tensor([0.1, 0.2]), cls)
