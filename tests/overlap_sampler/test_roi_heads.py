"""OverlapSamplerROIHeads, the sampler registry and the ε-weighted box losses."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from overlap_sampler_helpers import tiny_roi_heads_cfg

import overlap_sampler
from overlap_sampler import (
    WEIGHT_FIELD,
    ImageExamples,
    OverlapSampler,
    OverlapSamplerIoUBalanced,
    OverlapSamplerOutputLayers,
    OverlapSamplerRandom,
    OverlapSamplerROIHeads,
    build_overlap_sampler,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = (
    "configs/OverlapSampler/quick_schedules/"
    "faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
)


def _cfg(*opts):
    return tiny_roi_heads_cfg(*opts)


def _heads(*opts):
    return build_roi_heads(_cfg(*opts), {"p2": ShapeSpec(channels=8, stride=4)})


def _image(proposal_boxes, gt_boxes, gt_classes):
    proposals = Instances((100, 100))
    proposals.proposal_boxes = Boxes(torch.tensor(proposal_boxes, dtype=torch.float32).view(-1, 4))
    proposals.objectness_logits = torch.zeros(len(proposals))
    targets = Instances((100, 100))
    targets.gt_boxes = Boxes(torch.tensor(gt_boxes, dtype=torch.float32).view(-1, 4))
    targets.gt_classes = torch.tensor(gt_classes, dtype=torch.int64)
    return proposals, targets


def _hand_built():
    """One ground truth [0, 0, 40, 40]; 3 positives (2 proposals and the appended gt box);
    negatives 3-5 overlap positive 0 by IoU_pn 0.6 / 0.569 / 0.429 (>= θ = 0.55 for the first two)
    and the gt by < 0.5; the 10 negatives 6-15 overlap no positive."""
    props = [[10, 0, 50, 40], [2, 2, 40, 40]]  # IoU with the gt 0.6 and 0.9025
    props += [[20, 0, 60, 40], [21, 0, 61, 40], [26, 0, 66, 40]]
    props += [[60 + 2 * i, 60, 70 + 2 * i, 70] for i in range(10)]
    return _image(props, [[0, 0, 40, 40]], [1])


N1, N2, N3 = [20.0, 0, 60, 40], [21.0, 0, 61, 40], [26.0, 0, 66, 40]


def test_registry_and_from_config():
    cfg = _cfg()
    neg = build_overlap_sampler(cfg, "negative")
    pos = build_overlap_sampler(cfg, "positive")
    assert isinstance(neg, OverlapSampler) and neg.strategy == "soft" and neg.num_bins == 2
    assert neg.threshold == 0.55 and neg.interval_max is None
    assert isinstance(pos, OverlapSampler)
    cfg.MODEL.OVERLAP_SAMPLER.NEGATIVE.NAME = "OverlapSamplerIoUBalanced"
    libra = build_overlap_sampler(cfg, "negative")
    assert isinstance(libra, OverlapSamplerIoUBalanced) and libra.num_bins == 3
    cfg.MODEL.OVERLAP_SAMPLER.POSITIVE.NAME = "OverlapSamplerIoUBalanced"
    with pytest.raises(ValueError, match="negatives only"):
        build_overlap_sampler(cfg, "positive")
    cfg.MODEL.OVERLAP_SAMPLER.POSITIVE.NAME = "OverlapSamplerRandom"
    assert isinstance(build_overlap_sampler(cfg, "positive"), OverlapSamplerRandom)
    with pytest.raises(ValueError, match="side"):
        build_overlap_sampler(cfg, "both")
    with pytest.raises(ValueError, match="strategy"):
        OverlapSampler(strategy="random")


def test_heads_are_built_from_config_with_weighted_predictor():
    heads = _heads()
    assert isinstance(heads, OverlapSamplerROIHeads)
    assert isinstance(heads.box_predictor, OverlapSamplerOutputLayers)
    assert heads.epsilon == 2.0 and heads.pe_with == "negatives"


def test_hard_negatives_are_sampled_and_logged():
    heads = _heads("MODEL.OVERLAP_SAMPLER.NEGATIVE.STRATEGY", "hard")
    heads.train()
    proposals, targets = _hand_built()
    left_out_n3 = 0
    for seed in range(30):
        torch.manual_seed(seed)
        with EventStorage() as storage:
            (out,) = heads.label_and_sample_proposals([proposals], [targets])
        # 12 RoIs: the 3 positives and 9 of the 13 negatives, which include the two with
        # IoU_pn >= θ (Eq. 1)
        assert len(out) == 12
        assert (out.gt_classes == 1).sum() == 3 and (out.gt_classes == 3).sum() == 9
        neg_boxes = out.proposal_boxes.tensor[out.gt_classes == 3].tolist()
        assert N1 in neg_boxes and N2 in neg_boxes
        left_out_n3 += N3 not in neg_boxes  # below θ: drawn uniformly with the rest
        hist = storage.histories()
        assert hist["overlap_sampler/neg_frac_above_thresh"].latest() == pytest.approx(2 / 9)
        assert hist["roi_head/num_fg_samples"].latest() == 3
        bins = [hist[f"overlap_sampler/neg_bin{k}"].latest() for k in range(2)]
        assert sum(bins) == 9 and bins[1] >= 2
        assert 0 < hist["overlap_sampler/neg_iou_pn_mean"].latest() < 1
    assert left_out_n3 > 0


@pytest.mark.parametrize("strategy", ["soft", "uniform"])
def test_soft_negatives_follow_eq2_on_heads(strategy):
    # K = 2 over [0, 0.6]: bin 1 = {N1, N2, N3}, fewer than N/K = 4.5, so soft sampling takes all
    # three every time; uniform sampling takes 9 · 3 / 13 ≈ 2.1 of them on average.
    heads = _heads("MODEL.OVERLAP_SAMPLER.NEGATIVE.STRATEGY", strategy)
    heads.train()
    proposals, targets = _hand_built()
    counts = []
    for seed in range(30):
        torch.manual_seed(seed)
        with EventStorage() as storage:
            heads.label_and_sample_proposals([proposals], [targets])
        counts.append(storage.histories()["overlap_sampler/neg_bin1"].latest())
    if strategy == "soft":
        assert set(counts) == {3.0}
    else:
        assert len(set(counts)) > 1 and abs(sum(counts) / len(counts) - 27 / 13) < 0.5


def test_epsilon_lands_on_best_matched_positive():
    heads = _heads("MODEL.OVERLAP_SAMPLER.EPSILON", "2.0")
    heads.train()
    proposals, targets = _hand_built()
    with EventStorage():
        (out,) = heads.label_and_sample_proposals([proposals], [targets])
    w = out.get(WEIGHT_FIELD)
    assert w.shape == (12,) and abs(float(w.sum()) - 12) < 1e-5
    boxes = out.proposal_boxes.tensor
    best = (boxes == torch.tensor([0.0, 0, 40, 40])).all(dim=1)  # the appended gt box, IoU 1
    assert best.sum() == 1
    assert torch.allclose(w[best], torch.tensor([2.0 * 12 / 13]))
    assert torch.allclose(w[~best], torch.full((11,), 12 / 13))
    # without the appended gt, the best proposal (IoU 0.9025) gets ε
    heads = _heads("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False")
    heads.train()
    with EventStorage():
        (out,) = heads.label_and_sample_proposals([proposals], [targets])
    boxes, w = out.proposal_boxes.tensor, out.get(WEIGHT_FIELD)
    best = (boxes == torch.tensor([2.0, 2, 40, 40])).all(dim=1)
    assert w[best].item() == pytest.approx(2.0 * 12 / 13)
    assert w[~best].max().item() == pytest.approx(12 / 13)


def test_degenerate_batch_empty_gt_no_negatives_no_positives():
    heads = _heads("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False")
    heads.train()
    empty_gt = _image([[0, 0, 10, 10], [5, 5, 20, 20]], [], [])
    only_pos = _image([[0, 0, 40, 40], [1, 1, 40, 40]], [[0, 0, 40, 40]], [2])
    no_pos = _image([[60, 60, 70, 70], [0, 0, 5, 5]], [[20, 20, 50, 50]], [0])
    no_props = _image([], [[0, 0, 10, 10]], [1])
    images = [empty_gt, only_pos, no_pos, no_props]
    with EventStorage() as storage:
        outs = heads.label_and_sample_proposals([p for p, _ in images], [t for _, t in images])
    assert [len(o) for o in outs] == [2, 2, 2, 0]
    assert outs[0].gt_classes.tolist() == [3, 3] and not outs[0].has("gt_boxes")
    assert outs[1].gt_classes.tolist() == [2, 2]
    assert outs[2].gt_classes.tolist() == [3, 3]
    for o in outs:
        assert o.get(WEIGHT_FIELD).shape == (len(o),)
    assert torch.allclose(outs[1].get(WEIGHT_FIELD), torch.tensor([4 / 3, 2 / 3]))
    assert "overlap_sampler/neg_bin0" in storage.histories()


def test_iou_balanced_baseline_on_heads():
    heads = _heads(
        "MODEL.OVERLAP_SAMPLER.NEGATIVE.NAME",
        "OverlapSamplerIoUBalanced",
        "MODEL.OVERLAP_SAMPLER.POSITIVE.NAME",
        "OverlapSamplerRandom",
        "MODEL.OVERLAP_SAMPLER.EPSILON",
        "1.0",
    )
    heads.train()
    proposals, targets = _hand_built()
    with EventStorage():
        (out,) = heads.label_and_sample_proposals([proposals], [targets])
    assert len(out) == 12 and torch.equal(out.get(WEIGHT_FIELD), torch.ones(12))
    # IoU_gn 0.33 / 0.30 / 0.21: bins 2, 2, 1 of K = 3 over [0, 0.33]; the far negatives fill bin 0
    neg_boxes = out.proposal_boxes.tensor[out.gt_classes == 3].tolist()
    assert N1 in neg_boxes and N2 in neg_boxes and N3 in neg_boxes


def _predictor_inputs(num_rois=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = _cfg()
    pred = OverlapSamplerOutputLayers(cfg, ShapeSpec(channels=16))
    x = torch.randn(num_rois, 16, generator=g)
    props = Instances((100, 100))
    xy = torch.rand(num_rois, 2, generator=g) * 50
    props.proposal_boxes = Boxes(torch.cat([xy, xy + 20], dim=1))
    props.gt_boxes = Boxes(torch.cat([xy + 2, xy + 21], dim=1))
    props.gt_classes = torch.tensor([0, 1, 2, 0] + [3] * (num_rois - 4))
    return pred, x, props


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_weighted_losses_equal_detectron2_with_unit_weights(loss_type):
    pred, x, props = _predictor_inputs()
    pred.box_reg_loss_type = loss_type
    plain = FastRCNNOutputLayers(_cfg(), ShapeSpec(channels=16))
    plain.box_reg_loss_type = loss_type
    plain.load_state_dict(pred.state_dict())
    with EventStorage():
        ref = plain.losses(plain(x), [props])
        props.set(WEIGHT_FIELD, torch.ones(len(props)))
        got = pred.losses(pred(x), [props])
    for k in ref:
        assert torch.allclose(ref[k], got[k], atol=1e-6), k


def test_weighted_losses_apply_epsilon():
    pred, x, props = _predictor_inputs()
    w = torch.ones(len(props))
    w[1] = 2.0
    w = w * len(w) / w.sum()
    props.set(WEIGHT_FIELD, w)
    with EventStorage():
        scores, deltas = pred(x)
        got = pred.losses((scores, deltas), [props])
    ce = torch.nn.functional.cross_entropy(scores, props.gt_classes, reduction="none")
    assert torch.allclose(got["loss_cls"], (ce * w).sum() / len(w), atol=1e-6)
    # box regression: smooth L1 (beta 0) of the class-specific deltas, per RoI, weighted
    fg = props.gt_classes < 3
    target = pred.box2box_transform.get_deltas(
        props.proposal_boxes.tensor[fg], props.gt_boxes.tensor[fg]
    )
    d = deltas.view(len(props), -1, 4)[fg.nonzero().flatten(), props.gt_classes[fg]]
    per_roi = (d - target).abs().sum(dim=1)
    assert torch.allclose(got["loss_box_reg"], (per_roi * w[fg]).sum() / len(w), atol=1e-5)
    # the per-weight-group path (other loss types) gives the same weighted sum
    grouped = pred._weighted_box_reg_by_groups(
        props.proposal_boxes.tensor, props.gt_boxes.tensor, deltas, props.gt_classes, fg, w
    )
    assert torch.allclose(grouped, got["loss_box_reg"], atol=1e-5)
    # gradients flow
    (got["loss_cls"] + got["loss_box_reg"]).backward()
    assert pred.cls_score.weight.grad is not None


def test_weighted_losses_empty_batch():
    pred, _, _ = _predictor_inputs()
    props = Instances((100, 100))
    props.proposal_boxes = Boxes(torch.zeros(0, 4))
    props.gt_classes = torch.zeros(0, dtype=torch.int64)
    props.set(WEIGHT_FIELD, torch.zeros(0))
    x = torch.zeros(0, 16, requires_grad=True)
    with EventStorage():
        losses = pred.losses(pred(x), [props])
    assert all(float(v) == 0 for v in losses.values())
    sum(losses.values()).backward()


def test_mask_rcnn_forward_backward_with_empty_gt_image():
    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, QUICK.replace("faster", "mask")))
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = []
    for n in (2, 0):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 4, 30, 30], [20, 20, 60, 50]])[:n])
        inst.gt_classes = torch.tensor([0, 2])[:n]
        inst.gt_masks = BitMasks(torch.ones(n, 64, 64, dtype=torch.bool))
        batch.append({"image": torch.rand(3, 64, 64) * 255, "instances": inst})
    with EventStorage():
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize(
    "path",
    sorted(
        os.path.join(d, f)
        for d, _, fs in os.walk(os.path.join(REPO, "configs", "OverlapSampler"))
        for f in fs
        if f.endswith(".yaml")
    ),
)
def test_configs_merge(path):
    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.merge_from_file(path)
    assert cfg.MODEL.ROI_HEADS.NAME == "OverlapSamplerROIHeads"


def test_image_examples_positions_index_candidates():
    ex = ImageExamples(
        pos=torch.tensor([0]),
        neg=torch.tensor([1, 2, 3]),
        iou_pn=torch.tensor([0.6, 0.0, 0.1]),
        iou_pe=torch.tensor([0.6]),
        iou_gt=torch.tensor([0.9, 0.3, 0.0, 0.45]),
    )
    hard = OverlapSampler(strategy="hard", threshold=0.55)
    assert 0 in hard(ex, "negative", 1).tolist()
    libra = OverlapSamplerIoUBalanced(num_bins=3)
    assert libra(ex, "negative", 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="negatives only"):
        libra(ex, "positive", 1)


# ---------------------------------------------------------------- config checks at model build


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("NEGATIVE.NUM_BINS", 0, r"NEGATIVE.NUM_BINS must be an integer >= 1 \(K of Eq. 2\)"),
        ("POSITIVE.NUM_BINS", -2, r"POSITIVE.NUM_BINS must be an integer >= 1"),
        ("NEGATIVE.LIBRA_NUM_BINS", 0, r"NEGATIVE.LIBRA_NUM_BINS must be an integer >= 1"),
        ("THRESHOLD", 1.5, r"THRESHOLD must be a number in \[0, 1\] \(θ of Eq. 1\), got 1.5"),
        ("THRESHOLD", float("nan"), r"THRESHOLD must be a number in \[0, 1\]"),
        ("EPSILON", 0.0, r"EPSILON must be a finite number > 0"),
        ("EPSILON", float("inf"), r"EPSILON must be a finite number > 0"),
        ("NEGATIVE.INTERVAL_MAX", 1.5, r"NEGATIVE.INTERVAL_MAX must be 0 .* or in \(0, 1\]"),
        ("NEGATIVE.INTERVAL_MAX", -0.5, r"NEGATIVE.INTERVAL_MAX must be 0 .* got -0.5"),
        ("POSITIVE.INTERVAL_MAX", -1e-9, r"POSITIVE.INTERVAL_MAX must be 0"),
        ("NEGATIVE.STRATEGY", "hardest", r"NEGATIVE.STRATEGY must be one of uniform, hard"),
        ("POSITIVE.STRATEGY", "", r"POSITIVE.STRATEGY must be one of"),
        ("NEGATIVE.NAME", "OHEM", r"NEGATIVE.NAME must be one of .*OverlapSamplerIoUBalanced"),
        ("POSITIVE.IOU_WITH", "all", r"POSITIVE.IOU_WITH must be one of negatives, examples"),
        ("NEGATIVE.NUM_BINS", 2.5, r"NEGATIVE.NUM_BINS must be an integer >= 1"),
        ("THRESHOLD", True, r"THRESHOLD must be a number"),
    ],
)
def test_bad_config_values_fail_at_model_build_naming_the_key(key, value, message):
    # used to build a model and fail at the first iteration (or, for a negative INTERVAL_MAX,
    # to be read silently as "the image's maximum")
    cfg = _cfg()
    node = cfg.MODEL.OVERLAP_SAMPLER
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match="MODEL.OVERLAP_SAMPLER." + message):
        build_roi_heads(cfg, {"p2": ShapeSpec(channels=8, stride=4)})
    with pytest.raises(ValueError, match="MODEL.OVERLAP_SAMPLER."):
        build_overlap_sampler(cfg, "negative" if "POSITIVE" not in key else "positive")


def test_bad_keyword_arguments_fail_at_construction():
    with pytest.raises(ValueError, match=r"num_bins \(K\) must be an int >= 1"):
        OverlapSampler(num_bins=0)
    with pytest.raises(ValueError, match=r"threshold \(θ\) must be in \[0, 1\]"):
        OverlapSampler(threshold=1.5)
    with pytest.raises(ValueError, match=r"interval_max must be None or in \(0, 1\]"):
        OverlapSampler(interval_max=-0.5)
    with pytest.raises(ValueError, match=r"num_bins \(K\) must be an int >= 1"):
        OverlapSamplerIoUBalanced(num_bins=0)
