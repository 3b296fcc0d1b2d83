"""Which positive gets ε: MODEL.OVERLAP_SAMPLER.EPSILON_TARGET on hand-built examples."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from overlap_sampler_helpers import tiny_roi_heads_cfg

from overlap_sampler import WEIGHT_FIELD, OverlapSamplerROIHeads, best_positive_weights
from overlap_sampler.sampling import EPSILON_TARGETS

# ---------------------------------------------------------------- the plain function

# One image, R = 5 sampled RoIs, two ground truths. RoI 0 is gt 0's appended box (IoU 1), RoIs
# 1-2 are proposals of gt 0 (IoU 0.9, 0.8), RoI 3 is gt 1's appended box and its only sampled
# positive, RoI 4 a negative.
GT_IOU = torch.tensor([1.0, 0.9, 0.8, 1.0, 0.2])
GT_INDEX = torch.tensor([0, 0, 0, 1, 0])
IS_FG = torch.tensor([True, True, True, True, False])
IS_GT = torch.tensor([True, False, False, True, False])


def test_best_including_gt_gives_epsilon_to_the_appended_boxes():
    w = best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best_including_gt", IS_GT)
    # RoIs 0 and 3 get ε = 2; total 7 rescaled to R = 5
    assert torch.allclose(w, torch.tensor([2.0, 1, 1, 2, 1]) * 5 / 7)
    # is_gt is not read for this target: same weights without it (the existing behaviour)
    assert torch.equal(w, best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0))


def test_best_proposal_gives_epsilon_to_the_best_real_proposal():
    w = best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best_proposal", IS_GT)
    # gt 0: RoI 1 (0.9, the best real proposal); gt 1: only its own box, so no ε; total 6 -> 5
    assert torch.allclose(w, torch.tensor([1.0, 2, 1, 1, 1]) * 5 / 6)
    assert abs(float(w.sum()) - 5) < 1e-5
    # no appended boxes flagged: every positive competes, as with best_including_gt
    assert torch.equal(
        best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best_proposal"),
        best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best_including_gt"),
    )
    # only appended boxes among the positives: nobody gets ε
    only_gt = torch.tensor([True, False, False, True, False])
    assert torch.equal(
        best_positive_weights(GT_IOU, GT_INDEX, only_gt, 2, 2.0, "best_proposal", IS_GT),
        torch.ones(5),
    )


def test_bad_target_and_mask_are_rejected():
    with pytest.raises(ValueError, match="target must be one of best_including_gt"):
        best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best")
    with pytest.raises(ValueError, match=r"is_gt must have shape \(5,\)"):
        best_positive_weights(GT_IOU, GT_INDEX, IS_FG, 2, 2.0, "best_proposal", IS_GT[:3])


# ---------------------------------------------------------------- through the ROI heads


def _cfg(*opts):
    return tiny_roi_heads_cfg(*opts, batch_size_per_image=8, positive_fraction=0.5)


def _heads(*opts):
    heads = build_roi_heads(_cfg(*opts), {"p2": ShapeSpec(channels=8, stride=4)})
    heads.train()
    return heads


def _sample(heads, proposal_boxes):
    proposals = Instances((100, 100))
    proposals.proposal_boxes = Boxes(torch.tensor(proposal_boxes, dtype=torch.float32))
    proposals.objectness_logits = torch.zeros(len(proposals))
    targets = Instances((100, 100))
    targets.gt_boxes = Boxes(torch.tensor([[0.0, 0, 40, 40]]))
    targets.gt_classes = torch.tensor([1])
    with EventStorage():
        (out,) = heads.label_and_sample_proposals([proposals], [targets])
    return out.proposal_boxes.tensor, out.get(WEIGHT_FIELD)


# Positives: the appended gt box and proposals with IoU 0.9025 and 0.6; two far negatives. Every
# example is sampled (5 <= 8), so the weights are deterministic.
PROPOSALS = [[10.0, 0, 50, 40], [2.0, 2, 40, 40], [60, 60, 70, 70], [70, 70, 80, 80]]


def _weight_of(boxes, w, box):
    row = (boxes == torch.tensor(box)).all(dim=1)
    assert row.sum() == 1
    return w[row].item()


def test_heads_default_target_is_the_appended_ground_truth():
    heads = _heads()
    assert heads.epsilon_target == "best_including_gt"
    boxes, w = _sample(heads, PROPOSALS)
    assert len(w) == 5 and abs(float(w.sum()) - 5) < 1e-5
    assert _weight_of(boxes, w, [0.0, 0, 40, 40]) == pytest.approx(2 * 5 / 6)
    assert _weight_of(boxes, w, [2.0, 2, 40, 40]) == pytest.approx(5 / 6)


def test_heads_best_proposal_target_skips_the_appended_ground_truth():
    heads = _heads("MODEL.OVERLAP_SAMPLER.EPSILON_TARGET", "best_proposal")
    assert heads.epsilon_target == "best_proposal"
    boxes, w = _sample(heads, PROPOSALS)
    assert _weight_of(boxes, w, [2.0, 2, 40, 40]) == pytest.approx(2 * 5 / 6)
    assert _weight_of(boxes, w, [0.0, 0, 40, 40]) == pytest.approx(5 / 6)


def test_heads_best_proposal_keeps_a_real_proposal_equal_to_the_ground_truth():
    # A real proposal identical to the gt (IoU 1, first in the list) competes; the appended copy,
    # found by position (the last num_gt examples), does not.
    heads = _heads("MODEL.OVERLAP_SAMPLER.EPSILON_TARGET", "best_proposal")
    boxes, w = _sample(heads, [[0.0, 0, 40, 40]] + PROPOSALS)
    assert len(w) == 6
    gt_rows = (boxes == torch.tensor([0.0, 0, 40, 40])).all(dim=1).nonzero().flatten()
    assert gt_rows.numel() == 2
    # sampled positives come first in proposal order, so the real copy precedes the appended one
    assert w[gt_rows].tolist() == pytest.approx([2 * 6 / 7, 6 / 7])


def test_heads_without_appended_ground_truth_agree_for_both_targets():
    a = _sample(_heads("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False"), PROPOSALS)[1]
    b = _sample(
        _heads(
            "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT",
            "False",
            "MODEL.OVERLAP_SAMPLER.EPSILON_TARGET",
            "best_proposal",
        ),
        PROPOSALS,
    )[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("value", ["best", "", 1])
def test_bad_epsilon_target_fails_at_build_naming_the_key(value):
    cfg = _cfg()
    cfg.MODEL.OVERLAP_SAMPLER.EPSILON_TARGET = value
    with pytest.raises(
        ValueError,
        match=r"MODEL.OVERLAP_SAMPLER.EPSILON_TARGET must be one of best_including_gt, "
        r"best_proposal",
    ):
        build_roi_heads(cfg, {"p2": ShapeSpec(channels=8, stride=4)})


def test_bad_epsilon_target_keyword_fails_at_construction():
    cfg = _cfg()
    kwargs = OverlapSamplerROIHeads.from_config(cfg, {"p2": ShapeSpec(channels=8, stride=4)})
    kwargs["epsilon_target"] = "best_gt"
    with pytest.raises(ValueError, match="epsilon_target must be one of"):
        OverlapSamplerROIHeads(**kwargs)
    assert EPSILON_TARGETS == ("best_including_gt", "best_proposal")
