"""ref_nms.losses: labels and BCE (Eq. (3), ref_nms.md §7 T2), the ranking loss (Eq. (4), T5)
and its delegation to rank_nms.ranking."""

import math

import pytest
import torch

import rank_nms.ranking
from ref_nms import (
    bce_loss,
    rank_loss,
    relatedness_targets,
    sample_bce_proposals,
    sample_rank_proposals,
)
from ref_nms import losses as ref_losses


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Targets (T2)


def test_targets_strict_paper_vs_inclusive_release():
    proposals = t([0, 0, 10, 5], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10])
    critical = t([0, 0, 10, 10])
    targets, max_iou = relatedness_targets(proposals, critical)
    assert max_iou.tolist() == pytest.approx([0.5, 90 / 110, 0.0, 1.0])
    assert max_iou[0].item() == 0.5  # exactly
    assert targets.tolist() == [0.0, 1.0, 0.0, 1.0]  # paper: IoU > 0.5
    inclusive, _ = relatedness_targets(proposals, critical, inclusive=True)
    assert inclusive.tolist() == [1.0, 1.0, 0.0, 1.0]  # release: IoU >= 0.5
    assert targets.dtype == torch.float64


def test_targets_take_the_best_foreground_box():
    proposals = t([0, 0, 10, 10], [20, 0, 30, 10], [40, 40, 41, 41])
    critical = t([0, 0, 10, 10], [21, 0, 30, 10])  # referent + one context object
    targets, max_iou = relatedness_targets(proposals, critical)
    assert max_iou.tolist() == pytest.approx([1.0, 0.9, 0.0])
    assert targets.tolist() == [1.0, 1.0, 0.0]


def test_targets_without_foreground_or_candidates():
    targets, max_iou = relatedness_targets(t([0, 0, 1, 1]), torch.zeros(0, 4, dtype=torch.float64))
    assert targets.tolist() == [0.0] and max_iou.tolist() == [0.0]
    targets, max_iou = relatedness_targets(torch.zeros(0, 4), t([0, 0, 1, 1], dtype=torch.float32))
    assert targets.shape == (0,) and max_iou.shape == (0,)


# ------------------------------------------------------------------------------------------------
# BCE (T2)


def test_bce_hand_value_t2():
    logits = t(0.0, math.log(9.0))
    targets = t(1.0, 0.0)
    loss = bce_loss(logits, targets)
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(10.0)) / 2)
    assert loss.item() == pytest.approx(1.497866, abs=1e-6)


def test_bce_reduction_per_expression_vs_per_box():
    # expression 0: one box with term ln 2; expression 1: three boxes with term ln 10 each
    logits = t(0.0, math.log(9.0), math.log(9.0), math.log(9.0))
    targets = t(1.0, 0.0, 0.0, 0.0)
    idx = torch.tensor([0, 1, 1, 1])
    a, b = math.log(2.0), math.log(10.0)
    assert bce_loss(logits, targets, idx).item() == pytest.approx((a + b) / 2)
    assert bce_loss(logits, targets, idx, reduction="box").item() == pytest.approx((a + 3 * b) / 4)


@pytest.mark.parametrize("n_pos, n_neg, want", [(5, 100, (5, 27)), (40, 100, (16, 16)),
                                                (40, 10, (22, 10)), (3, 4, (3, 4))])  # fmt: skip
def test_release_bce_sampler_counts_t2(n_pos, n_neg, want):
    targets = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])[torch.randperm(n_pos + n_neg)]
    keep = sample_bce_proposals(targets, generator=torch.Generator().manual_seed(0))
    assert len(set(keep.tolist())) == keep.numel()
    got = targets[keep]
    assert (int(got.sum()), int((got == 0).sum())) == want
    k = want[0]
    assert got[:k].eq(1).all() and got[k:].eq(0).all()  # positives first


def test_release_bce_sampling_per_expression():
    targets = torch.cat([torch.ones(20), torch.zeros(50), torch.ones(2), torch.zeros(3)])
    idx = torch.cat([torch.zeros(70, dtype=torch.int64), torch.ones(5, dtype=torch.int64)])
    keep = sample_bce_proposals(targets, idx, generator=torch.Generator().manual_seed(1))
    assert (idx[keep] == 0).sum() == 32 and (idx[keep] == 1).sum() == 5
    assert targets[keep][idx[keep] == 0].sum() == 16
    logits = torch.randn(75, dtype=torch.float64)
    loss = bce_loss(
        logits, targets, idx, sampling="release", generator=torch.Generator().manual_seed(1)
    )
    expected = bce_loss(logits[keep], targets[keep], idx[keep])
    assert loss.item() == pytest.approx(expected.item())


def test_bce_empty_and_gradient():
    logits = torch.zeros(0, requires_grad=True)
    loss = bce_loss(logits, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()
    logits = t(0.0, 2.0).requires_grad_()
    bce_loss(logits, t(1.0, 0.0)).backward()
    # d/dx mean BCE = (sigmoid(x) − y) / 2
    assert logits.grad.tolist() == pytest.approx([-0.25, (1 / (1 + math.exp(-2.0))) / 2])


# ------------------------------------------------------------------------------------------------
# Ranking loss (T5)

# T5: 3 negatives, 2 of level 1, 2 of level 2 (origin 0.5, width 0.1: ρ 0.55, 0.6 -> 1;
# 0.65, 0.7 -> 2)
T5_SCORES = [0.9, 0.3, 0.1, 0.6, 0.2, 0.8, 0.7]
T5_IOU = [0.3, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]


def test_rank_loss_hand_value_t5():
    loss = rank_loss(t(*T5_SCORES), t(*T5_IOU), top_h=2, use_sigmoid=False)
    assert loss.item() == pytest.approx(1.9 / 8)
    assert loss.item() == pytest.approx(0.2375)


def test_rank_loss_applies_the_sigmoid_to_logits():
    p = t(*T5_SCORES)
    logits = torch.log(p / (1 - p))
    assert rank_loss(logits, t(*T5_IOU), top_h=2).item() == pytest.approx(0.2375)
    # top_h = 100 (default): level 1 against all 3 negatives, level 2 against all 5 lower ones
    hinge = lambda pos, neg: max(0.0, T5_SCORES[neg] - T5_SCORES[pos] + 0.1)  # noqa: E731
    pairs = [(i, j) for i in (3, 4) for j in (0, 1, 2)] + [(i, j) for i in (5, 6) for j in range(5)]
    expected = sum(hinge(i, j) for i, j in pairs) / len(pairs)
    assert rank_loss(logits, t(*T5_IOU)).item() == pytest.approx(expected)


def test_levels_from_rank_nms_t5():
    iou = t(0.3, 0.5, 0.5000001, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    levels = rank_nms.ranking.quantize_iou(iou, origin=0.5, width=0.1)
    # exact arithmetic: 0.8 -> 3 (the released float formula gives 4)
    assert levels.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rank_nms.ranking.num_iou_levels(0.5, 0.1) == 6


def test_rank_loss_delegates_to_rank_nms():
    assert ref_losses.quantize_iou is rank_nms.ranking.quantize_iou
    assert ref_losses.sample_pairs is rank_nms.ranking.sample_pairs
    assert ref_losses.ranking_loss is rank_nms.ranking.ranking_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, generator=g, dtype=torch.float64)
    iou = torch.rand(300, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 3, (300,), generator=g)
    scores = torch.sigmoid(logits)
    levels = rank_nms.ranking.quantize_iou(iou, 0.5, 0.1)
    pos, neg = rank_nms.ranking.sample_pairs(levels, scores, 100, groups=idx)
    assert (idx[pos] == idx[neg]).all()  # pairs stay inside an expression
    for norm, rn_norm in (("pairs", "pairs"), ("expression", "image"), ("violating", "violating")):
        direct = rank_nms.ranking.ranking_loss(scores, pos, neg, 0.1, rn_norm, idx[pos])
        ours = rank_loss(logits, iou, idx, normalization=norm)
        assert ours.item() == pytest.approx(direct.item(), rel=1e-12)


def test_rank_loss_pairs_do_not_cross_expressions_and_gradient():
    # expression 0 has only level-5 boxes, expression 1 only negatives: no pair at all
    logits = t(0.5, 1.0, -1.0, 2.0).requires_grad_()
    loss = rank_loss(logits, t(0.9, 0.95, 0.1, 0.2), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.tolist() == [0.0] * 4
    logits = t(0.0, 0.0).requires_grad_()  # neg 0 (ρ 0.2), pos 1 (ρ 0.9): hinge 0.1 > 0
    rank_loss(logits, t(0.2, 0.9)).backward()
    assert logits.grad[1].item() == pytest.approx(-0.25)  # −sigmoid'(0)
    assert logits.grad[0].item() == pytest.approx(0.25)


def test_release_rank_sampler_counts():
    g = torch.Generator().manual_seed(0)
    iou = torch.cat([torch.full((200,), 0.2), torch.full((30,), 0.58), torch.full((4,), 0.97)])
    keep = sample_rank_proposals(iou, generator=g)
    levels = rank_nms.ranking.quantize_iou(iou[keep], 0.5, 0.1)
    assert levels.tolist() == [0] * 150 + [1] * 10 + [5] * 4  # by level, negatives first
    assert len(set(keep.tolist())) == keep.numel()
    small = sample_rank_proposals(iou, num_negative=3, per_level=2, generator=g)
    assert small.numel() == 7


# ------------------------------------------------------------------------------------------------
# Bad input


def test_losses_bad_input():
    with pytest.raises(ValueError, match="margin"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9), margin=-0.1)
    with pytest.raises(ValueError, match="logits_or_scores contains NaN"):
        rank_loss(t(float("nan"), 0.2), t(0.2, 0.9))
    with pytest.raises(ValueError, match="max_iou"):
        rank_loss(t(0.1, 0.2), t(0.2, 1.5))
    with pytest.raises(ValueError, match="max_iou"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9, 0.3))
    with pytest.raises(ValueError, match="top_h"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9), top_h=0)
    with pytest.raises(ValueError, match="width"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9), width=0.0)
    with pytest.raises(ValueError, match="expr_index"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9), torch.tensor([0]))
    with pytest.raises(ValueError, match="normalization"):
        rank_loss(t(0.1, 0.2), t(0.2, 0.9), normalization="image")
    with pytest.raises(ValueError, match="logits contains an infinite"):
        bce_loss(t(float("inf"), 0.0), t(1.0, 0.0))
    with pytest.raises(ValueError, match="targets"):
        bce_loss(t(0.0, 0.0), t(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="targets must be in"):
        bce_loss(t(0.0, 0.0), t(2.0, 0.0))
    with pytest.raises(ValueError, match="sampling"):
        bce_loss(t(0.0), t(1.0), sampling="random")
    with pytest.raises(ValueError, match="reduction"):
        bce_loss(t(0.0), t(1.0), reduction="sum")
    with pytest.raises(ValueError, match=r"proposal_boxes\[1\]"):
        relatedness_targets(t([0, 0, 1, 1], [5, 0, 4, 1]), t([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="critical_boxes"):
        relatedness_targets(t([0, 0, 1, 1]), t(0, 0, 1, 1))
    with pytest.raises(ValueError, match="iou_threshold"):
        relatedness_targets(t([0, 0, 1, 1]), t([0, 0, 1, 1]), iou_threshold=1.5)
