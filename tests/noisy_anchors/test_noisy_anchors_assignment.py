"""Top-N candidate-positive assignment (Alg. 1 lines 2-6): hand-made IoU matrices."""

import pytest
import torch

from noisy_anchors import TopNMatcher, topn_anchor_assignment


def _positives(labels):
    return sorted(torch.nonzero(labels == 1).flatten().tolist())


def test_top_n_of_one_ground_truth():
    iou = torch.tensor([[0.1, 0.5, 0.3, 0.0, 0.7]])
    matched, labels = topn_anchor_assignment(iou, top_n=2)
    assert labels.dtype == torch.int8 and matched.dtype == torch.int64
    assert _positives(labels) == [1, 4]
    assert labels.tolist() == [0, 1, 0, 0, 1]  # every other anchor is negative, none ignored
    assert matched.tolist() == [0, 0, 0, 0, 0]


def test_ties_at_the_nth_place_go_to_the_lowest_anchor_index():
    iou = torch.tensor([[0.2, 0.5, 0.5, 0.5, 0.6]])
    _, labels = topn_anchor_assignment(iou, top_n=3)
    assert _positives(labels) == [1, 2, 4]  # 0.6, then two of the three 0.5s: anchors 1 and 2
    _, labels = topn_anchor_assignment(torch.full((1, 6), 0.25), top_n=4)
    assert _positives(labels) == [0, 1, 2, 3]


def test_small_object_with_fewer_than_n_overlapping_anchors():
    iou = torch.tensor([[0.3, 0.0, 0.05, 0.0, 0.0]])
    _, labels = topn_anchor_assignment(iou, top_n=4)
    assert _positives(labels) == [0, 2]  # zero-IoU anchors are never positives
    _, labels = topn_anchor_assignment(iou, top_n=4, min_iou=0.1)
    assert _positives(labels) == [0]


def test_anchor_in_the_top_n_of_two_ground_truths_goes_to_the_higher_iou():
    iou = torch.tensor(
        [
            [0.9, 0.6, 0.5, 0.0],
            [0.0, 0.7, 0.1, 0.4],
        ]
    )
    matched, labels = topn_anchor_assignment(iou, top_n=2)
    # gt0 takes {0, 1}, gt1 takes {1, 3}; anchor 1 has IoU 0.7 with gt1 > 0.6 with gt0.
    assert labels.tolist() == [1, 1, 0, 1]
    assert matched[[0, 1, 3]].tolist() == [0, 1, 1]


def test_shared_anchor_with_equal_iou_goes_to_the_lower_ground_truth_index():
    iou = torch.tensor([[0.5, 0.1], [0.5, 0.2]])
    matched, labels = topn_anchor_assignment(iou, top_n=1)
    assert labels.tolist() == [1, 0]
    assert matched[0].item() == 0


def test_assignment_only_among_the_ground_truths_that_chose_the_anchor():
    # Anchor 2 is gt0's top-1 (IoU 0.3) but not gt1's (gt1's top-1 is anchor 0), although its IoU
    # with gt1 is higher (0.45): it stays with gt0 (the released code would give it to gt1).
    iou = torch.tensor([[0.0, 0.0, 0.3, 0.0], [0.9, 0.8, 0.45, 0.0]])
    matched, labels = topn_anchor_assignment(iou, top_n=1)
    assert labels.tolist() == [1, 0, 1, 0]
    assert matched[[0, 2]].tolist() == [1, 0]


def test_no_ground_truth_and_no_anchors():
    matched, labels = topn_anchor_assignment(torch.zeros(0, 7), top_n=3)
    assert matched.tolist() == [0] * 7 and labels.tolist() == [0] * 7
    matched, labels = topn_anchor_assignment(torch.zeros(2, 0), top_n=3)
    assert matched.shape == (0,) and labels.shape == (0,)


def test_n_larger_than_the_number_of_anchors():
    iou = torch.tensor([[0.2, 0.0, 0.4]])
    _, labels = topn_anchor_assignment(iou, top_n=50)
    assert _positives(labels) == [0, 2]


def _reference(iou, top_n):
    """Alg. 1 lines 2-6 literally: a stable descending sort per ground truth."""
    g, a = iou.shape
    best = [(-1.0, 0)] * a  # (iou, gt) of the best ground truth that chose each anchor
    for j in range(g):
        order = sorted(range(a), key=lambda i: (-iou[j, i].item(), i))[:top_n]
        for i in order:
            q = iou[j, i].item()
            if q > 0 and q > best[i][0]:
                best[i] = (q, j)
    labels = [1 if q > 0 else 0 for q, _ in best]
    matched = [m for _, m in best]
    return labels, matched


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_literal_reference_with_many_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    iou = (torch.rand(4, 40, generator=gen) * 5).floor() / 5  # values in {0, .2, .4, .6, .8}
    matched, labels = topn_anchor_assignment(iou, top_n=7)
    ref_labels, ref_matched = _reference(iou, 7)
    assert labels.tolist() == ref_labels
    pos = labels == 1
    assert matched[pos].tolist() == [m for m, p in zip(ref_matched, ref_labels) if p]
    # each ground truth contributes at most N candidates
    assert pos.sum() <= 4 * 7


def test_matcher_is_a_drop_in_for_detectron2s_matcher():
    matcher = TopNMatcher(2)
    assert "top_n=2" in repr(matcher)
    matched, labels = matcher(torch.tensor([[0.1, 0.5, 0.3]]))
    assert labels.tolist() == [0, 1, 1] and matched.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "iou, top_n, match",
    [
        (torch.tensor([0.1, 0.2]), 1, "shape"),
        (torch.tensor([[0.1, float("nan")]]), 1, "NaN"),
        (torch.tensor([[0.1, float("inf")]]), 1, "NaN or inf"),
        (torch.tensor([[1, 0]]), 1, "floating"),
        (torch.tensor([[0.1, 0.2]]), 0, "top_n"),
        (torch.tensor([[0.1, 0.2]]), 2.5, "top_n"),
    ],
)
def test_bad_input(iou, top_n, match):
    with pytest.raises(ValueError, match=match):
        topn_anchor_assignment(iou, top_n)


def test_bad_matcher_arguments():
    with pytest.raises(ValueError, match="top_n"):
        TopNMatcher(0)
    with pytest.raises(ValueError, match="min_iou"):
        TopNMatcher(3, min_iou=1.0)
    with pytest.raises(TypeError, match="match_quality_matrix"):
        topn_anchor_assignment([[0.1]], 1)
