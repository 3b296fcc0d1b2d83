"""Fused-score suppression (Eq. (4)) on Fig. 1's four boxes (T9-T11 of rank_nms.md §6)."""

import dataclasses
import math

import pytest
import torch

from rank_nms import RankNMSInferenceParams, rank_nms_inference, rank_nms_inference_single_image

# Fig. 1: two objects, each with an accurate and an inaccurate candidate; one class.
GT1, GT2 = [0, 0, 100, 100], [200, 0, 300, 100]
A, B = [0, 0, 100, 60], [0, 0, 100, 93]  # IoU with GT1: 0.60, 0.93
C, D = [200, 0, 300, 92], [200, 0, 300, 66]  # IoU with GT2: 0.92, 0.66
BOXES = torch.tensor([A, B, C, D], dtype=torch.float32)
CLS = torch.tensor([0.70, 0.62, 0.73, 0.80])
RANK = torch.tensor([0.81, 1.3, 0.97, 0.22])
IMAGE = (120, 320)


def _run(beta=0.15, **kw):
    probs = torch.stack([CLS, 1 - CLS], dim=1)  # one class + background
    params = RankNMSInferenceParams(beta=beta, score_thresh=0.05, nms_thresh=0.5, **kw)
    return rank_nms_inference_single_image(BOXES, probs, RANK, IMAGE, params)


def _kept(result, index):
    names = "ABCD"
    return [(names[i], round(s, 6)) for i, s in zip(index.tolist(), result.scores.tolist())]


@pytest.mark.parametrize(
    "beta, expected",
    [
        (0.0, [("D", 0.80), ("A", 0.70)]),  # NMS-Cls keeps the inaccurate box of each pair
        (0.15, [("C", 0.766), ("B", 0.722)]),  # Eq. (4): both pairs flip to the accurate box
        (0.05, [("D", 0.771), ("A", 0.7055)]),
        (1.0, [("B", 1.3), ("C", 0.97)]),  # NMS-LTR
    ],
)
def test_fig1_fused_nms(beta, expected):
    result, index = _run(beta)
    assert _kept(result, index) == expected
    assert result.pred_classes.tolist() == [0, 0]
    torch.testing.assert_close(result.pred_boxes.tensor, BOXES[index])
    torch.testing.assert_close(result.cls_scores, CLS[index])
    torch.testing.assert_close(result.rank_scores, RANK[index])


def test_nms_score_source_is_table7():
    for nms_score, beta in (("cls", 0.0), ("rank", 1.0)):
        result, index = _run(0.15, nms_score=nms_score)
        ref, ref_index = _run(beta)
        assert index.tolist() == ref_index.tolist()
        torch.testing.assert_close(result.scores, ref.scores)


def test_squashed_rank_score_undoes_the_flip():
    result, index = _run(0.15, fusion_score="sigmoid")
    assert [k for k, _ in _kept(result, index)] == ["D", "A"]
    expected = 0.15 * torch.sigmoid(RANK[index]) + 0.85 * CLS[index]
    torch.testing.assert_close(result.scores, expected)


def test_output_class_score_keeps_the_fused_order():
    result, index = _run(0.15, output_score="cls")
    assert index.tolist() == [2, 1]
    torch.testing.assert_close(result.scores, CLS[index])


def test_soft_nms_on_fused_scores():
    result, index = _run(0.15, suppression="soft_nms", soft_nms_method="gaussian")
    a = 0.7165 * math.exp(-(0.645161**2) / 0.5)
    d = 0.713 * math.exp(-(0.717391**2) / 0.5)
    assert [k for k, _ in _kept(result, index)] == ["C", "B", "A", "D"]
    torch.testing.assert_close(result.scores, torch.tensor([0.766, 0.722, a, d]), atol=1e-5, rtol=0)
    result, index = _run(0.15, suppression="soft_nms", soft_nms_method="linear")
    expected = [0.766, 0.722, 0.7165 * (1 - 0.645161), 0.713 * (1 - 0.717391)]
    torch.testing.assert_close(result.scores, torch.tensor(expected), atol=1e-5, rtol=0)


def test_soft_nms_drops_fused_scores_below_zero():
    # s_r = -1, s_c = 0.06: s = -0.099 < 0 counts as 0 and is dropped; hard NMS keeps it
    probs = torch.tensor([[0.06, 0.94], [0.9, 0.1]])
    boxes = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    rank = torch.tensor([-1.0, 0.5])
    hard = RankNMSInferenceParams(score_thresh=0.05)
    soft = dataclasses.replace(hard, suppression="soft_nms")
    kept_hard = rank_nms_inference_single_image(boxes, probs, rank, (100, 100), hard)[1]
    kept_soft = rank_nms_inference_single_image(boxes, probs, rank, (100, 100), soft)[1]
    assert sorted(kept_hard.tolist()) == [0, 1] and kept_soft.tolist() == [1]


def test_score_threshold_on_class_or_fused_score():
    probs = torch.tensor([[0.04, 0.96], [0.5, 0.5]])
    boxes = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    rank = torch.tensor([3.0, -0.5])
    on_cls = RankNMSInferenceParams(score_thresh=0.05, score_thresh_on="cls")
    result, index = rank_nms_inference_single_image(boxes, probs, rank, (100, 100), on_cls)
    assert index.tolist() == [1] and result.scores.tolist() == pytest.approx([0.35])
    on_fused = dataclasses.replace(on_cls, score_thresh_on="fused")
    result, index = rank_nms_inference_single_image(boxes, probs, rank, (100, 100), on_fused)
    assert index.tolist() == [0, 1] and result.scores.tolist() == pytest.approx([0.484, 0.35])


def test_per_class_boxes_topk_nonfinite_and_empty():
    # two classes with per-class boxes; a NaN RoI is dropped; top-k cuts the sorted output
    boxes = torch.tensor([[0, 0, 10, 10, 0, 0, 12, 12], [0, 0, 10, 10, 30, 30, 40, 40],
                          [float("nan")] * 8])  # fmt: skip
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    rank = torch.tensor([0.0, 1.0, 2.0])
    params = RankNMSInferenceParams(beta=0.0, score_thresh=0.05, topk_per_image=3)
    result, index = rank_nms_inference_single_image(boxes, probs, rank, (50, 50), params)
    assert index.tolist() == [1, 0, 0]  # by score: (1, cls 1) .7, (0, cls 0) .6, (0, cls 1) .3
    assert result.pred_classes.tolist() == [1, 0, 1]
    assert result.pred_boxes.tensor[0].tolist() == [30, 30, 40, 40]
    empty = rank_nms_inference(
        [torch.zeros(0, 4)], [torch.zeros(0, 2)], [torch.zeros(0)], [(10, 10)], params
    )
    assert len(empty[0][0]) == 0 and empty[1][0].numel() == 0


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="BETA"):
        RankNMSInferenceParams(beta=1.5)
    with pytest.raises(ValueError, match="NMS_SCORE"):
        RankNMSInferenceParams(nms_score="both")
    with pytest.raises(ValueError, match="OUTPUT_SCORE"):
        RankNMSInferenceParams(suppression="soft_nms", output_score="cls")
    with pytest.raises(ValueError, match="SOFT_NMS.METHOD"):
        RankNMSInferenceParams(suppression="soft_nms", soft_nms_method="cubic")
    with pytest.raises(ValueError, match="one entry per image"):
        rank_nms_inference([BOXES], [], [RANK], [IMAGE], RankNMSInferenceParams())
