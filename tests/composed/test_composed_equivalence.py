"""With every method off a composed model is Detectron2's; with one method on it is that method's
single-method class (same weights, seeds and inputs: equal losses and detections)."""

import pytest
import torch
from composed_helpers import CASCADE, FASTER, MASK, RETINA, composed_cfg, tiny_batch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

ALL_OFF = {
    "faster": (FASTER, ["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN",
                        "MODEL.ROI_HEADS.NAME", "ComposedROIHeads"]),
    "mask": (MASK, ["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN",
                    "MODEL.ROI_HEADS.NAME", "ComposedROIHeads"]),
    "cascade": (CASCADE, ["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN",
                          "MODEL.ROI_HEADS.NAME", "ComposedCascadeROIHeads"]),
    "retinanet": (RETINA, ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet"]),
}  # fmt: skip
LOW_THRESH = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def _pair(path, ours, theirs, seed=0):
    """Two models built with the same seed; theirs gets our weights (the keys must match)."""
    torch.manual_seed(seed)
    a = build_model(composed_cfg(path, *ours))
    torch.manual_seed(seed)
    b = build_model(composed_cfg(path, *theirs))
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    b.load_state_dict(state_a)
    return a, b


def _losses(model, batch, seed=1):
    model.train()
    torch.manual_seed(seed)  # the RPN and RoI samplers draw at random
    with EventStorage():
        return {k: v.detach() for k, v in model(batch).items()}


def _detections(model, batch):
    model.eval()
    with torch.no_grad():
        return [out["instances"] for out in model(batch)]


def _assert_same_losses(a, b, batch):
    la, lb = _losses(a, batch), _losses(b, batch)
    assert la.keys() == lb.keys()
    for key in la:
        assert torch.equal(la[key], lb[key]), (key, la[key], lb[key])


def _assert_same_detections(a, b, batch, fields=("pred_boxes", "scores", "pred_classes")):
    da, db = _detections(a, batch), _detections(b, batch)
    assert sum(len(x) for x in da) > 0
    for x, y in zip(da, db):
        for field in fields:
            u, v = x.get(field), y.get(field)
            u, v = getattr(u, "tensor", u), getattr(v, "tensor", v)
            assert torch.equal(u, v), field


@pytest.mark.parametrize("kind", list(ALL_OFF))
def test_every_method_off_is_detectron2(kind):
    path, composed = ALL_OFF[kind]
    ours, theirs = _pair(path, [*composed, *LOW_THRESH], LOW_THRESH)
    names = {type(m).__name__ for m in ours.modules()}
    assert names & {"ComposedRPN", "ComposedROIHeads", "ComposedCascadeROIHeads",
                    "ComposedRetinaNet"}  # fmt: skip
    if kind != "retinanet":  # the predictor stays Detectron2's FastRCNNOutputLayers
        predictors = ours.roi_heads.box_predictor
        predictors = predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
        assert {type(p).__name__ for p in predictors} == {"FastRCNNOutputLayers"}
    # built from the same seed, without copying: the same modules in the same order
    torch.manual_seed(0)
    fresh = build_model(composed_cfg(path, *composed)).state_dict()
    torch.manual_seed(0)
    plain = build_model(composed_cfg(path)).state_dict()
    assert list(fresh) == list(plain)
    assert all(torch.equal(fresh[k], plain[k]) for k in plain)
    batch = tiny_batch()
    _assert_same_losses(ours, theirs, batch)
    fields = ("pred_boxes", "scores", "pred_classes") + (("pred_masks",) if kind == "mask" else ())
    _assert_same_detections(ours, theirs, batch, fields)


C = "MODEL.COMPOSE."
ROI = ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads"]


def test_overlap_sampler_alone_is_overlap_sampler_roi_heads():
    ours, theirs = _pair(
        FASTER,
        [*ROI, C + "ROI_HEADS.SAMPLER", "overlap_sampler", *LOW_THRESH],
        ["MODEL.ROI_HEADS.NAME", "OverlapSamplerROIHeads", *LOW_THRESH],
    )
    batch = tiny_batch()
    _assert_same_losses(ours, theirs, batch)
    _assert_same_detections(ours, theirs, batch)


@pytest.mark.parametrize("soft", [False, True], ids=["nms", "soft_nms"])
def test_rank_nms_alone_is_rank_nms_roi_heads(soft):
    rank = ["MODEL.RANK_NMS.TOP_H", "25", "MODEL.RANK_NMS.HEAD.FC_DIM", "64", *LOW_THRESH]
    ours = [*ROI, C + "ROI_HEADS.SCORING", "rank_nms", *rank]
    theirs = ["MODEL.ROI_HEADS.NAME", "RankNMSROIHeads", *rank]
    if soft:  # the same Soft-NMS through MODEL.SUPPRESSION and through MODEL.RANK_NMS
        ours += ["MODEL.SUPPRESSION.METHOD", "soft_nms", "MODEL.HNMS.SOFT_NMS.METHOD", "linear"]
        theirs += ["MODEL.RANK_NMS.SUPPRESSION", "soft_nms"]
    a, b = _pair(FASTER, ours, theirs)
    batch = tiny_batch()
    _assert_same_losses(a, b, batch)
    _assert_same_detections(a, b, batch, ("pred_boxes", "scores", "cls_scores", "rank_scores"))


def test_rank_nms_alone_on_cascade_is_cascade_rank_nms_roi_heads():
    rank = ["MODEL.RANK_NMS.TOP_H", "25", "MODEL.RANK_NMS.HEAD.FC_DIM", "64", *LOW_THRESH]
    a, b = _pair(
        CASCADE,
        ["MODEL.ROI_HEADS.NAME", "ComposedCascadeROIHeads", C + "ROI_HEADS.SCORING", "rank_nms",
         *rank],
        ["MODEL.ROI_HEADS.NAME", "CascadeRankNMSROIHeads", *rank],
    )  # fmt: skip
    batch = tiny_batch()
    _assert_same_losses(a, b, batch)
    _assert_same_detections(a, b, batch)


def test_noisy_anchors_alone_is_the_noisy_anchors_models():
    a, b = _pair(
        RETINA,
        ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet", C + "RETINANET.ASSIGNER",
         "noisy_anchors"],
        ["MODEL.META_ARCHITECTURE", "NoisyAnchorsRetinaNet"],
    )  # fmt: skip
    _assert_same_losses(a, b, tiny_batch())
    a, b = _pair(
        FASTER,
        ["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", C + "RPN.ASSIGNER", "noisy_anchors"],
        ["MODEL.PROPOSAL_GENERATOR.NAME", "NoisyAnchorsRPN"],
    )
    _assert_same_losses(a, b, tiny_batch())


def test_hnms_rpn_is_hash_rpn():
    a, b = _pair(
        FASTER,
        ["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", "MODEL.SUPPRESSION.RPN.METHOD", "hnms",
         "MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST", "50", *LOW_THRESH],
        ["MODEL.PROPOSAL_GENERATOR.NAME", "HashRPN",
         "MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST", "50", *LOW_THRESH],
    )  # fmt: skip
    batch = tiny_batch()
    _assert_same_losses(a, b, batch)
    _assert_same_detections(a, b, batch)


def test_roi_prefilter_is_hash_prefilter_roi_heads():
    a, b = _pair(
        FASTER,
        [*ROI, "MODEL.SUPPRESSION.PREFILTER", "hnms", "MODEL.HNMS.PREFILTER.ALPHA", "0.6",
         *LOW_THRESH],
        ["MODEL.ROI_HEADS.NAME", "HashPrefilterROIHeads", "MODEL.HNMS.ROI_HEADS_PREFILTER",
         "True", "MODEL.HNMS.PREFILTER.ALPHA", "0.6", *LOW_THRESH],
    )  # fmt: skip
    _assert_same_detections(a, b, tiny_batch())


@pytest.mark.parametrize("prefilter", [False, True], ids=["soft_nms", "hnms+soft_nms"])
def test_retinanet_suppressions_are_hash_prefilter_retinanet(prefilter):
    # score threshold above Soft-NMS's (0.001): the two readings of the threshold agree
    thresh = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.002", "MODEL.HNMS.PREFILTER.ALPHA", "0.6"]
    ours = [
        "MODEL.META_ARCHITECTURE",
        "ComposedRetinaNet",
        "MODEL.SUPPRESSION.METHOD",
        "soft_nms",
        "MODEL.SUPPRESSION.PREFILTER",
        "hnms" if prefilter else "none",
        *thresh,
    ]
    theirs = ["MODEL.META_ARCHITECTURE", "HashPrefilterRetinaNet",
              "MODEL.HNMS.PREFILTER.SUPPRESSION", "soft_nms",
              "MODEL.HNMS.PREFILTER.ENABLED", str(prefilter), *thresh]  # fmt: skip
    a, b = _pair(RETINA, ours, theirs)
    _assert_same_detections(a, b, tiny_batch(num_images=1))


def test_the_ranking_wraps_the_weighted_box_losses():
    """Overlap Sampler + Rank-NMS: the box losses are the Overlap Sampler's ε-weighted ones."""
    rank = ["MODEL.RANK_NMS.TOP_H", "25", "MODEL.RANK_NMS.HEAD.FC_DIM", "64"]
    sampler = [*ROI, C + "ROI_HEADS.SAMPLER", "overlap_sampler", *rank]
    torch.manual_seed(0)
    both = build_model(composed_cfg(FASTER, *sampler, C + "ROI_HEADS.SCORING", "rank_nms"))
    alone = build_model(composed_cfg(FASTER, *sampler))
    unexpected = alone.load_state_dict(both.state_dict(), strict=False).unexpected_keys
    assert unexpected and all(".rank_head." in k for k in unexpected)
    batch = tiny_batch()
    la, lb = _losses(both, batch), _losses(alone, batch)
    assert set(la) - set(lb) == {"loss_rank"}
    for key in lb:
        assert torch.equal(la[key], lb[key]), key
