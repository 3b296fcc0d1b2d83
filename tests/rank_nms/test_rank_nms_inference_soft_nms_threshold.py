"""Rank-NMS with Soft-NMS keeps dropping fused scores <= 0 (and below the Soft-NMS threshold)
now that ``hnms.soft_nms`` outputs the best box of each class whatever its score (Bodla et al.:
the current maximum is output before thresholding)."""

import torch

from rank_nms import RankNMSInferenceParams, rank_nms_inference_single_image

BOXES = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
# box 0 is the only candidate of class 0 (s_c = 0.06), box 1 the only one of class 1 (0.9)
PROBS = torch.tensor([[0.06, 0.0, 0.94], [0.0, 0.9, 0.1]])


def _soft(rank, **kw):
    params = RankNMSInferenceParams(score_thresh=0.05, suppression="soft_nms", **kw)
    return rank_nms_inference_single_image(BOXES, PROBS, rank, (100, 100), params)[1]


def test_a_class_whose_only_fused_score_is_not_positive_outputs_nothing():
    # s = 0.15 * (-1) + 0.85 * 0.06 = -0.099 <= 0: dropped although it is its class's best box
    assert _soft(torch.tensor([-1.0, 0.5])).tolist() == [1]
    # the same at a Soft-NMS threshold of 0 (0 >= 0 would otherwise pass)
    assert _soft(torch.tensor([-1.0, 0.5]), soft_nms_score_thresh=0.0).tolist() == [1]


def test_a_fused_score_below_the_soft_nms_threshold_is_dropped():
    # s = 0.15 * (-0.3) + 0.85 * 0.06 = 0.006 < 0.01
    assert _soft(torch.tensor([-0.3, 0.5]), soft_nms_score_thresh=0.01).tolist() == [1]
    assert _soft(torch.tensor([-0.3, 0.5]), soft_nms_score_thresh=0.001).tolist() == [1, 0]
