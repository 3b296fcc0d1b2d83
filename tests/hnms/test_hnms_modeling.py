"""HashRPN, the RetinaNet / ROI-heads pre-filters and the config keys, on tiny CPU inputs."""

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.roi_heads.fast_rcnn import (  # noqa: E402
    fast_rcnn_inference_single_image,
)
from detectron2.structures import Boxes  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torchvision.ops import batched_nms, box_iou  # noqa: E402

import hnms  # noqa: E402
from hnms.roi_heads import hash_prefiltered_detections  # noqa: E402
from hnms.rpn import find_top_hash_proposals, topk_per_group  # noqa: E402

QUICK = "configs/HNMS/quick_schedules"
RETINA = f"{QUICK}/hnms_retinanet_R_18_FPN_quick_synth_crowd.yaml"
# every candidate kept before the suppression, at most 200 per level: fast, non-empty outputs
RETINA_SMALL = (
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
    "200",
)


def _cfg(path, *opts):
    cfg = get_cfg()
    hnms.add_hnms_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_config_keys_and_defaults():
    cfg = get_cfg()
    hnms.add_hnms_config(cfg)
    h = cfg.MODEL.HNMS
    assert (h.RPN.ALPHA, h.RPN.NUM_HASHES) == (0.7, 1)  # §4.2
    assert (h.PREFILTER.ALPHA, h.PREFILTER.NUM_HASHES) == (0.73, 1)  # §4.3
    assert (h.W0, h.H0, h.BX, h.BY) == (1.0, 1.0, 0.0, 0.0)
    assert h.ROI_HEADS_PREFILTER is False
    assert (h.PREFILTER.ENABLED, h.PREFILTER.SUPPRESSION) == (True, "nms")
    assert (h.SOFT_NMS.METHOD, h.SOFT_NMS.SIGMA, h.SOFT_NMS.SCORE_THRESH) == ("gaussian", 0.5, 1e-3)
    paper = _cfg("configs/HNMS/hnms_faster_rcnn_R_50_FPN_1x.yaml")
    assert paper.MODEL.RPN.PRE_NMS_TOPK_TEST == 9000  # P1
    assert paper.MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST == 2000  # P2
    assert paper.MODEL.RPN.POST_NMS_TOPK_TEST == 4000  # P3
    retina = _cfg("configs/HNMS/hnms_retinanet_R_50_FPN_1x.yaml")
    assert retina.MODEL.META_ARCHITECTURE == "HashPrefilterRetinaNet"
    assert retina.MODEL.RETINANET.TOPK_CANDIDATES_TEST == 9000
    soft = _cfg("configs/HNMS/hnms_retinanet_soft_nms_R_50_FPN_1x.yaml")  # Appendix C.3
    assert soft.MODEL.HNMS.PREFILTER.SUPPRESSION == "soft_nms"
    assert soft.MODEL.RETINANET.TOPK_CANDIDATES_TEST == 9000


def test_topk_per_group():
    keep = torch.tensor([7, 3, 9, 1, 4, 8])
    groups = torch.tensor([0, 1, 0, 0, 1, 2])
    assert topk_per_group(keep, groups, 2).tolist() == [7, 3, 9, 4, 8]
    assert topk_per_group(keep, groups, 0).tolist() == keep.tolist()
    assert topk_per_group(keep[:0], groups[:0], 2).tolist() == []


def _proposals(num_images=2, per_level=(300, 200), seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes, logits = [], []
    for n in per_level:
        c = torch.rand(num_images, 20, 2, generator=g) * 200
        idx = torch.randint(0, 20, (num_images, n), generator=g)
        centers = torch.gather(c, 1, idx[..., None].expand(-1, -1, 2))
        centers = centers + torch.randn(num_images, n, 2, generator=g)
        wh = 20 + torch.rand(num_images, n, 2, generator=g)
        boxes.append(torch.cat([centers - wh / 2, centers + wh / 2], -1))
        logits.append(torch.randn(num_images, n, generator=g))
    return boxes, logits


def test_find_top_hash_proposals():
    boxes, logits = _proposals()
    sizes = [(180, 190), (200, 200)]
    with EventStorage() as storage:
        out = find_top_hash_proposals(
            boxes, logits, sizes, 0.7, 1, pre_nms_topk=250, post_nms_topk=60,
            min_box_size=0.0, training=False, post_topk_per_level=40,
        )  # fmt: skip
        assert "hnms/rpn_kept_fraction" in storage.histories()
    assert len(out) == 2
    for res, (h, w) in zip(out, sizes):
        s = res.objectness_logits
        assert 0 < len(res) <= 60 and (s[:-1] >= s[1:]).all()
        b = res.proposal_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    # without caps: exactly per-level HNMS of the top-k of every level
    out = find_top_hash_proposals(boxes, logits, sizes[:1] * 2, 0.7, 2, 10**6, 10**6, 0.0, False)
    for n, res in enumerate(out):
        b = torch.cat([x[n] for x in boxes]).clamp(min=0)
        b[:, 0::2] = b[:, 0::2].clamp(max=190)
        b[:, 1::2] = b[:, 1::2].clamp(max=180)
        s = torch.cat([x[n] for x in logits])
        lvl = torch.tensor([0] * 300 + [1] * 200)
        nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # clipped outside the image
        b, s, lvl = b[nonempty], s[nonempty], lvl[nonempty]
        keep = hnms.batched_hnms(b, s, lvl, 0.7, 2)
        assert torch.equal(res.objectness_logits, s[keep])


def test_find_top_hash_proposals_non_finite():
    boxes, logits = _proposals(num_images=1)
    boxes[0][0, 5, 0] = float("nan")
    logits[1][0, 3] = float("inf")
    out = find_top_hash_proposals(boxes, logits, [(200, 200)], 0.7, 1, 1000, 1000, 0.0, False)
    assert torch.isfinite(out[0].proposal_boxes.tensor).all()
    assert torch.isfinite(out[0].objectness_logits).all()
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_hash_proposals(boxes, logits, [(200, 200)], 0.7, 1, 1000, 1000, 0.0, True)


def test_hash_rpn_is_registered_and_replaces_only_the_nms():
    cfg = _cfg(f"{QUICK}/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml")
    model = build_model(cfg).eval()
    rpn = model.proposal_generator
    assert type(rpn).__name__ == "HashRPN"
    assert (rpn.hnms_alpha, rpn.hnms_num_hashes) == (0.7, 1)
    image = {"image": torch.rand(3, 256, 256) * 255, "height": 256, "width": 256}
    with torch.no_grad():
        out = model([image])[0]["instances"]
    assert out.pred_boxes.tensor.shape[1] == 4


def test_nms_with_hash_prefilter(make_crowd):
    boxes, scores = make_crowd(3000, seed=2)
    idxs = torch.randint(0, 2, (3000,), generator=torch.Generator().manual_seed(1))
    keep = hnms.nms_with_hash_prefilter(boxes, scores, idxs, 0.5, alpha=0.73)
    survivors = set(hnms.batched_hnms(boxes, scores, idxs, 0.73).tolist())
    assert set(keep.tolist()) <= survivors
    assert (scores[keep][:-1] >= scores[keep][1:]).all()
    for c in (0, 1):
        k = keep[idxs[keep] == c]
        iou = box_iou(boxes[k], boxes[k]).fill_diagonal_(0)
        assert iou.max() <= 0.5  # NMS guarantees
    plain = batched_nms(boxes, scores, idxs, 0.5)
    assert abs(len(keep) - len(plain)) < 0.1 * len(plain)  # a pre-filter, not a different NMS
    # with tiny cells (α -> 1) nothing shares a cell and the result is NMS's
    assert torch.equal(hnms.nms_with_hash_prefilter(boxes, scores, idxs, 0.5, alpha=0.9999), plain)


def test_hash_prefiltered_detections_match_fast_rcnn_without_merges():
    g = torch.Generator().manual_seed(0)
    r, c = 200, 3
    centers = torch.rand(r, 1, 2, generator=g).repeat(1, c, 1) * 100 + torch.rand(r, c, 2) * 5
    boxes = torch.cat([centers - 10, centers + 10], -1).reshape(r, 4 * c)
    scores = torch.softmax(torch.randn(r, c + 1, generator=g), -1)
    ours, ids = hash_prefiltered_detections(boxes, scores, (90, 110), 0.05, 0.5, 50, 0.9999, 1)
    ref, ref_ids = fast_rcnn_inference_single_image(boxes, scores, (90, 110), 0.05, 0.5, 50)
    assert torch.equal(ours.pred_classes, ref.pred_classes)
    assert torch.allclose(ours.pred_boxes.tensor, ref.pred_boxes.tensor)
    assert torch.equal(ids, ref_ids)
    fewer, _ = hash_prefiltered_detections(boxes, scores, (90, 110), 0.05, 0.5, -1, 0.3, 1)
    assert 0 < len(fewer) < len(hash_prefiltered_detections(boxes, scores, (90, 110), 0.05, 0.5,
                                                            -1, 0.9999, 1)[0])  # fmt: skip


def test_roi_heads_prefilter_switch():
    path = f"{QUICK}/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd_roi_prefilter.yaml"
    model = build_model(_cfg(path))
    predictor = model.roi_heads.box_predictor
    assert type(model.roi_heads).__name__ == "HashPrefilterROIHeads"
    assert type(predictor).__name__ == "HashPrefilterFastRCNNOutputLayers"
    assert predictor.prefilter_alpha == 0.73
    off = build_model(_cfg(path, "MODEL.HNMS.ROI_HEADS_PREFILTER", "False"))
    assert type(off.roi_heads.box_predictor).__name__ == "FastRCNNOutputLayers"


def test_prefiltered_retinanet_matches_retinanet_without_merges():
    path, opts = RETINA, RETINA_SMALL
    torch.manual_seed(0)
    model = build_model(_cfg(path, *opts, "MODEL.HNMS.PREFILTER.ALPHA", "0.9999")).eval()
    assert type(model).__name__ == "HashPrefilterRetinaNet"
    base = build_model(_cfg(path, *opts, "MODEL.META_ARCHITECTURE", "RetinaNet")).eval()
    base.load_state_dict(model.state_dict())
    image = [{"image": torch.rand(3, 128, 128) * 255}]
    with torch.no_grad():
        ours = model(image)[0]["instances"]
        ref = base(image)[0]["instances"]
    assert len(ours) > 0
    assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)
    model.prefilter_alpha = 0.5  # coarse cells: the pre-filter removes boxes before NMS
    with torch.no_grad():
        coarse = model(image)[0]["instances"]
    assert 0 < len(coarse) <= len(ref)


def test_retinanet_soft_nms_with_and_without_prefilter(monkeypatch):
    path = RETINA
    opts = (
        *RETINA_SMALL,
        "MODEL.HNMS.PREFILTER.SUPPRESSION",
        "soft_nms",
        "TEST.DETECTIONS_PER_IMAGE",
        "50",
    )
    torch.manual_seed(0)
    alone = build_model(_cfg(path, *opts, "MODEL.HNMS.PREFILTER.ENABLED", "False")).eval()
    assert (alone.suppression, alone.prefilter) == ("soft_nms", False)
    assert alone.soft_nms_args == dict(
        method="gaussian", sigma=0.5, iou_threshold=0.5, score_threshold=0.001
    )
    calls = []

    def recording_soft_nms(boxes, scores, classes, **kwargs):
        out = hnms.batched_soft_nms(boxes, scores, classes, **kwargs)
        calls.append((boxes, out))
        return out

    monkeypatch.setattr(hnms.retinanet, "batched_soft_nms", recording_soft_nms)
    image = [{"image": torch.rand(3, 128, 128) * 255}]
    with torch.no_grad():
        ours = alone(image)[0]["instances"]
    ((boxes, (keep, new_scores)),) = calls
    # capped at TEST.DETECTIONS_PER_IMAGE; detectron2's postprocess then clips the boxes to the
    # image and drops the empty ones
    assert len(keep) > 50
    top = Boxes(boxes[keep[:50]].clone())
    top.clip((128, 128))
    nonempty = top.nonempty()
    assert 0 < len(ours) == int(nonempty.sum())
    assert torch.equal(ours.scores, new_scores[:50][nonempty])  # Soft-NMS's decayed scores
    assert torch.equal(ours.pred_boxes.tensor, top.tensor[nonempty])

    # With tiny cells (α → 1) the pre-filter removes nothing: the same detections.
    prefiltered = build_model(_cfg(path, *opts, "MODEL.HNMS.PREFILTER.ALPHA", "0.9999")).eval()
    prefiltered.load_state_dict(alone.state_dict())
    assert prefiltered.prefilter
    with torch.no_grad():
        same = prefiltered(image)[0]["instances"]
    assert torch.equal(same.pred_boxes.tensor, ours.pred_boxes.tensor)
    assert torch.equal(same.scores, ours.scores)

    # NMS without the pre-filter is detectron2's RetinaNet post-processing.
    small = RETINA_SMALL
    nms_alone = build_model(_cfg(path, *small, "MODEL.HNMS.PREFILTER.ENABLED", "False")).eval()
    base = build_model(_cfg(path, *small, "MODEL.META_ARCHITECTURE", "RetinaNet")).eval()
    nms_alone.load_state_dict(alone.state_dict())
    base.load_state_dict(alone.state_dict())
    with torch.no_grad():
        a, b = nms_alone(image)[0]["instances"], base(image)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.HNMS.PREFILTER.SUPPRESSION", "softnms", r"MODEL.HNMS.PREFILTER.SUPPRESSION"),
        ("MODEL.HNMS.SOFT_NMS.METHOD", "hard", r"MODEL.HNMS.SOFT_NMS.METHOD"),
    ],
)
def test_retinanet_bad_suppression_keys(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(RETINA, key, value))


FASTER = f"{QUICK}/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml"
ROI_PREFILTER = f"{QUICK}/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd_roi_prefilter.yaml"


@pytest.mark.parametrize(
    "path, key, value, message",
    [
        (FASTER, "MODEL.HNMS.RPN.ALPHA", 1.5, r"MODEL.HNMS.RPN.ALPHA must be a number in \(0, 1\)"),
        (FASTER, "MODEL.HNMS.RPN.NUM_HASHES", 0, r"MODEL.HNMS.RPN.NUM_HASHES must be an integer"),
        (FASTER, "MODEL.HNMS.W0", 0.0, r"MODEL.HNMS.W0 must be a finite number > 0"),
        (FASTER, "MODEL.HNMS.BX", 1e300, r"MODEL.HNMS.BX must be a finite number with \|b\| < 2"),
        (FASTER, "MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST", -1,
         r"POST_HNMS_TOPK_PER_LEVEL_TEST must be an integer >= 0"),
        (RETINA, "MODEL.HNMS.PREFILTER.ALPHA", 0.0, r"MODEL.HNMS.PREFILTER.ALPHA must be a number"),
        (RETINA, "MODEL.HNMS.PREFILTER.NUM_HASHES", 1.5, r"NUM_HASHES must be an integer"),
        (RETINA, "MODEL.HNMS.SOFT_NMS.SIGMA", 0.0, r"MODEL.HNMS.SOFT_NMS.SIGMA must be a finite"),
        (RETINA, "MODEL.HNMS.SOFT_NMS.SCORE_THRESH", -0.1, r"SCORE_THRESH must be a finite"),
        (RETINA, "MODEL.HNMS.PREFILTER.ENABLED", "yes", r"PREFILTER.ENABLED must be True or False"),
        (RETINA, "MODEL.HNMS.H0", float("nan"), r"MODEL.HNMS.H0 must be a finite number > 0"),
        # W0 α^(-k/K) of Eq. (16) overflows for the K = 4 hash functions
        (RETINA, "MODEL.HNMS.W0", 1.6e308, r"MODEL.HNMS.W0 .*overflows when Eq. \(16\)"),
        (ROI_PREFILTER, "MODEL.HNMS.PREFILTER.ALPHA", 1.0, r"MODEL.HNMS.PREFILTER.ALPHA must be"),
        (ROI_PREFILTER, "MODEL.HNMS.ROI_HEADS_PREFILTER", 1, r"ROI_HEADS_PREFILTER must be True"),
    ],
)  # fmt: skip
def test_bad_hnms_keys_fail_at_model_build_naming_the_key(path, key, value, message):
    # used to build, and fail (or, for BX = 1e300, silently suppress nothing) at the first image
    cfg = _cfg(path, "MODEL.HNMS.PREFILTER.NUM_HASHES", "4")
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_hnms_modules_check_their_keyword_arguments():
    from hnms.rpn import HashRPN

    cfg = _cfg(FASTER)
    kwargs = HashRPN.from_config(cfg, build_model(cfg).backbone.output_shape())
    with pytest.raises(ValueError, match=r"hnms_alpha must be a finite float in \(0.0, 1.0\)"):
        HashRPN(**{**kwargs, "hnms_alpha": 0.0})
    with pytest.raises(ValueError, match=r"bx must be a finite float with \|bx\| < 2\^52"):
        HashRPN(**{**kwargs, "hash_kwargs": {"bx": 1e300}})
