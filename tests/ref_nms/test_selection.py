"""ref_nms.selection: fused-score NMS and selection vs the baseline rule (ref_nms.md §7 T3), the
δ candidates, empty expressions, bad input."""

import math

import pytest
import torch

from ref_nms import baseline_proposals, filter_candidates, select_proposals

PERSON, DOG = 0, 17
# T3: b1..b4 (indices 0..3)
T3_BOXES = torch.tensor(
    [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32
)
T3_CLASSES = torch.tensor([PERSON, PERSON, PERSON, DOG])
T3_CONF = torch.tensor([0.9, 0.6, 0.3, 0.5])
T3_LOGITS = torch.tensor([math.log(0.25), math.log(9.0), 0.0, 0.0])  # r = 0.2, 0.9, 0.5, 0.5


def t3(**kwargs):
    r = torch.sigmoid(T3_LOGITS)
    return select_proposals(T3_BOXES, T3_CLASSES, T3_CONF, r, **kwargs).tolist()


def test_t3_ref_nms_keeps_a_different_box_than_the_baseline():
    # fused s = [0.18, 0.54, 0.15, 0.25]: b2 suppresses b1 (IoU 0.818 > 0.3); b4 is another class
    assert t3() == [1, 3, 2]
    # plain NMS on c keeps b1 and suppresses b2; the baseline then keeps c >= 0.65
    assert baseline_proposals(T3_BOXES, T3_CLASSES, T3_CONF).tolist() == [0]
    plain = baseline_proposals(T3_BOXES, T3_CLASSES, T3_CONF, score_thresh=0.0)
    assert plain.tolist() == [0, 3, 2]


@pytest.mark.parametrize("conf, want", [(0.2, [1, 3]), (0.6, [1]), (0.1, [1, 3, 2])])
def test_t3_threshold_rule_keeps_the_top1(conf, want):
    assert t3(score_thresh=conf) == want


def test_t3_top_n_and_strictness():
    assert t3(top_n=2) == [1, 3]
    assert t3(top_n=100) == [1, 3, 2]
    assert t3(score_thresh=0.1, top_n=2) == [1, 3]
    assert t3(score_thresh=0.6, keep_top1=False) == []
    r = torch.tensor([0.5, 0.5, 0.5, 0.5])
    c = torch.tensor([0.5, 0.5, 0.5, 0.5])  # s = 0.25 exactly for every box
    kept = select_proposals(T3_BOXES, T3_CLASSES, c, r, score_thresh=0.25, keep_top1=False)
    assert kept.tolist() == []  # s > conf, strict as released
    assert select_proposals(T3_BOXES, T3_CLASSES, c, r).tolist() == [0, 2, 3]  # ties: index


def test_nms_threshold_is_respected():
    # IoU(b1, b2) = 0.818: NMS at 0.9 keeps both
    assert t3(nms_thresh=0.9) == [1, 3, 0, 2]


def test_empty_expression_falls_back_to_plain_nms_on_confidence():
    """A constant relatedness (what an empty expression gives) keeps the order of c."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=g) * 20], dim=1)
    classes = torch.randint(0, 3, (40,), generator=g)
    conf = torch.rand(40, generator=g)
    r = torch.full((40,), torch.sigmoid(torch.tensor(0.3)).item())
    ours = select_proposals(boxes, classes, conf, r)
    plain = baseline_proposals(boxes, classes, conf, score_thresh=0.0)
    assert ours.tolist() == plain.tolist()


def test_no_candidates():
    empty = torch.zeros(0, 4)
    idx = torch.zeros(0, dtype=torch.int64)
    out = select_proposals(empty, idx, torch.zeros(0), torch.zeros(0), score_thresh=0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    assert baseline_proposals(empty, idx, torch.zeros(0)).shape == (0,)


def test_baseline_lowers_the_threshold_until_something_passes():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], dtype=torch.float32)
    classes = torch.tensor([0, 0, 1])
    conf = torch.tensor([0.45, 0.5, 0.2])
    # 0.65 -> 0.55 -> 0.45 (rounded: 0.65 − 2·0.1 is 0.45000000000000007 in float)
    assert baseline_proposals(boxes, classes, conf).tolist() == [1, 0]
    assert baseline_proposals(boxes, classes, conf, lower_step=None).tolist() == []


def test_filter_candidates_delta_and_lowering():
    scores = torch.tensor([[0.9, 0.05, 0.0], [0.04, 0.06, 0.02], [0.0, 0.0, 0.051]])
    roi, cls, thr = filter_candidates(scores)
    assert list(zip(roi.tolist(), cls.tolist())) == [(0, 0), (1, 1), (2, 2)]  # strict > 0.05
    assert thr == 0.05
    # the release lowers δ by 0.005 while fewer than 32 (here 5) pass
    roi, cls, thr = filter_candidates(scores, min_candidates=5)
    assert thr == pytest.approx(0.035) and roi.numel() == 5
    # no candidate above δ: lowered until some pass; all-zero scores end below 0 (all pass)
    roi, _, thr = filter_candidates(torch.full((2, 3), 0.01))
    assert roi.numel() == 6 and thr == pytest.approx(0.005)
    roi, _, thr = filter_candidates(torch.zeros(2, 3))
    assert roi.numel() == 6 and thr < 0
    roi, _, _ = filter_candidates(torch.zeros(2, 3), min_candidates=0)
    assert roi.numel() == 0


def test_selection_bad_input():
    r = torch.sigmoid(T3_LOGITS)
    with pytest.raises(ValueError, match="relatedness"):
        select_proposals(T3_BOXES, T3_CLASSES, T3_CONF, T3_LOGITS)  # logits, not in [0, 1]
    with pytest.raises(ValueError, match="relatedness"):
        select_proposals(T3_BOXES, T3_CLASSES, T3_CONF, r[:3])
    with pytest.raises(ValueError, match="confidence"):
        select_proposals(T3_BOXES, T3_CLASSES, T3_CONF[:2], r)
    with pytest.raises(ValueError, match="classes"):
        select_proposals(T3_BOXES, T3_CLASSES.float(), T3_CONF, r)
    nan_boxes = T3_BOXES.clone()
    nan_boxes[2, 0] = float("nan")
    with pytest.raises(ValueError, match="boxes contains NaN"):
        select_proposals(nan_boxes, T3_CLASSES, T3_CONF, r)
    bad_boxes = T3_BOXES.clone()
    bad_boxes[1, 2] = -1.0
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        baseline_proposals(bad_boxes, T3_CLASSES, T3_CONF)
    with pytest.raises(ValueError, match="top_n"):
        select_proposals(T3_BOXES, T3_CLASSES, T3_CONF, r, top_n=0)
    with pytest.raises(ValueError, match="score_thresh"):
        select_proposals(T3_BOXES, T3_CLASSES, T3_CONF, r, score_thresh=1.5)
    with pytest.raises(ValueError, match="nms_thresh"):
        baseline_proposals(T3_BOXES, T3_CLASSES, T3_CONF, nms_thresh=-0.1)
    with pytest.raises(ValueError, match="class_scores"):
        filter_candidates(torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="delta"):
        filter_candidates(torch.zeros(2, 2), delta=2.0)


def test_t3_in_float64():
    r = torch.sigmoid(T3_LOGITS).double()
    kept = select_proposals(T3_BOXES.double(), T3_CLASSES, T3_CONF.double(), r, score_thresh=0.2)
    assert kept.tolist() == [1, 3]
    assert baseline_proposals(T3_BOXES.double(), T3_CLASSES, T3_CONF.double()).tolist() == [0]
