"""RankNMSROIHeads and CascadeRankNMSROIHeads inside real Detectron2 models (quick configs, CPU)."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from d2kit.paths import CONFIGS_ROOT
from rank_nms import RankHead, RankNMSOutputLayers, add_rank_nms_config

QUICK = f"{CONFIGS_ROOT}/RankNMS/quick_schedules"
CONFIGS = {
    "faster": (
        f"{QUICK}/rank_nms_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        "StandardROIHeads",
    ),
    "mask": (f"{QUICK}/rank_nms_mask_rcnn_R_18_FPN_quick_synth_shapes.yaml", "StandardROIHeads"),
    "cascade": (
        f"{QUICK}/rank_nms_cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        "CascadeROIHeads",
    ),
}


def _cfg(kind, *opts):
    cfg = get_cfg()
    add_rank_nms_config(cfg)
    cfg.merge_from_file(CONFIGS[kind][0])
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _batch(num_images=2, with_gt=(True, True), size=96):
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8).float()
        inst = Instances((size, size))
        if with_gt[i]:
            inst.gt_boxes = Boxes(torch.tensor([[10.0, 12, 50, 60], [40, 30, 90, 80]]))
            inst.gt_classes = torch.tensor([0, 2])
            masks = torch.zeros(2, size, size, dtype=torch.bool)
            masks[0, 12:60, 10:50] = True
            masks[1, 30:80, 40:90] = True
            inst.gt_masks = BitMasks(masks)
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.int64)
            inst.gt_masks = BitMasks(torch.zeros(0, size, size, dtype=torch.bool))
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def _rank_head_params(model):
    predictor = model.roi_heads.box_predictor
    predictor = predictor[-1] if isinstance(predictor, torch.nn.ModuleList) else predictor
    return predictor.rank_head


def test_rank_head_shape_and_parameter_count():
    head = RankHead(ShapeSpec(channels=256, height=7, width=7), num_fc=2, fc_dim=1024)
    assert sum(p.numel() for p in head.parameters()) == 13_896_705  # §4.1: 2 × FC 1024
    assert head(torch.randn(3, 256, 7, 7)).shape == (3,)
    assert head(torch.zeros(0, 256, 7, 7)).shape == (0,)
    assert head.rank_score.bias.item() == 0.0
    with pytest.raises(ValueError, match="NUM_FC"):
        RankHead(ShapeSpec(channels=4, height=7, width=7), num_fc=0)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_training_step_adds_rank_loss_and_logs(kind):
    model = _model(_cfg(kind))
    model.train()
    with EventStorage() as storage:
        losses = model(_batch())
        key = "loss_rank_stage2" if kind == "cascade" else "loss_rank"
        assert key in losses and torch.isfinite(losses[key]) and losses[key].item() > 0
        sum(losses.values()).backward()
        logged = storage.latest()
    prefix = "stage2/rank_nms/" if kind == "cascade" else "rank_nms/"
    assert logged[prefix + "pairs_per_image"][0] > 0
    assert 0 <= logged[prefix + "violated_frac"][0] <= 1
    assert prefix + "score_level0" in logged
    head = _rank_head_params(model)
    assert head.rank_score.weight.grad.abs().sum() > 0
    if kind == "mask":
        assert "loss_mask" in losses


def test_rank_loss_gives_zero_bias_gradient_and_detach_stops_features():
    cfg = _cfg("faster", "MODEL.RANK_NMS.LOSS_WEIGHT", "1.0")
    model = _model(cfg)
    model.train()
    with EventStorage():
        losses = model(_batch())
        losses["loss_rank"].backward()
    head = _rank_head_params(model)
    assert head.rank_score.weight.grad.abs().sum() > 0
    assert abs(head.rank_score.bias.grad.item()) < 1e-6  # Eq. (2) sees score differences only
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0  # end to end

    model = _model(_cfg("faster", "MODEL.RANK_NMS.DETACH_FEATURES", "True"))
    model.train()
    with EventStorage():
        model(_batch())["loss_rank"].backward()
    assert model.backbone.bottom_up.stem.conv1.weight.grad is None


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.RANK_NMS.TRAIN_ON", "foreground"],
        ["MODEL.RANK_NMS.PAIR_SAMPLING", "full", "MODEL.RANK_NMS.LOSS_NORM", "image"],
        ["MODEL.RANK_NMS.PAIR_SAMPLING", "all_levels", "MODEL.RANK_NMS.PAIR_GROUPING", "gt"],
        ["MODEL.RANK_NMS.TARGET_BOX", "regressed", "MODEL.RANK_NMS.LOSS_SCORE", "sigmoid"],
        ["MODEL.RANK_NMS.SHORT_LEVELS", "skip", "MODEL.RANK_NMS.LOSS_NORM", "violating"],
    ],
    ids=["foreground", "full", "all-levels-per-gt", "regressed-sigmoid", "skip-violating"],
)
def test_training_variants(opts):
    model = _model(_cfg("faster", *opts))
    model.train()
    with EventStorage():
        losses = model(_batch())
    assert torch.isfinite(losses["loss_rank"])


@pytest.mark.parametrize("kind", ["faster", "cascade"])
def test_images_without_ground_truth_train(kind):
    model = _model(_cfg(kind))
    model.train()
    with EventStorage():
        losses = model(_batch(with_gt=(False, False)))
        # all RoIs are in S_0: no pair, a zero loss that is still part of the graph
        key = "loss_rank_stage2" if kind == "cascade" else "loss_rank"
        assert losses[key].item() == 0.0 and losses[key].requires_grad
        losses = model(_batch(with_gt=(True, False)))
        assert losses[key].item() > 0


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_beta_zero_reproduces_the_detectron2_heads_exactly(kind):
    cfg = _cfg(kind, "MODEL.RANK_NMS.BETA", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = _model(cfg).eval()
    base_cfg = cfg.clone()
    base_cfg.MODEL.ROI_HEADS.NAME = CONFIGS[kind][1]
    baseline = build_model(base_cfg).eval()
    missing = baseline.load_state_dict(model.state_dict(), strict=False)
    assert not missing.missing_keys  # the baseline's keys are all kept (checkpoints interchange)
    assert all(".rank_head." in k for k in missing.unexpected_keys)
    batch = _batch()
    with torch.no_grad():
        ours, theirs = model(batch), baseline(batch)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)
        if kind == "mask":
            assert torch.equal(a.pred_masks, b.pred_masks)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_inference_outputs_fused_scores(kind):
    cfg = _cfg(kind, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = _model(cfg).eval()
    with torch.no_grad():
        out = model(_batch(num_images=1))[0]["instances"]
    assert len(out) > 0
    fused = 0.15 * out.rank_scores + 0.85 * out.cls_scores
    torch.testing.assert_close(out.scores, fused)
    if kind == "mask":
        assert out.pred_masks.shape[0] == len(out)


def test_no_proposals_at_inference():
    model = _model(_cfg("faster")).eval()
    features = {"p2": torch.zeros(1, 64, 24, 24)}
    proposals = Instances((96, 96))
    proposals.proposal_boxes = Boxes(torch.zeros(0, 4))
    proposals.objectness_logits = torch.zeros(0)
    for name, stride in (("p3", 8), ("p4", 16), ("p5", 32)):
        features[name] = torch.zeros(1, 64, 96 // stride, 96 // stride)
    with torch.no_grad():
        out, _ = model.roi_heads(None, features, [proposals])
    assert len(out[0]) == 0


def test_bad_config_values_fail_at_build_naming_the_key():
    for key, value, match in [
        ("MODEL.RANK_NMS.BETA", "1.5", "BETA"),
        ("MODEL.RANK_NMS.MARGIN", "-0.5", "MARGIN"),
        ("MODEL.RANK_NMS.TOP_H", "0", "TOP_H"),
        ("MODEL.RANK_NMS.PAIR_SAMPLING", "'random'", "PAIR_SAMPLING"),
        ("MODEL.RANK_NMS.SUPPRESSION", "'hnms'", "SUPPRESSION"),
        ("MODEL.RANK_NMS.HEAD.FC_DIM", "0", "FC_DIM"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_model(_cfg("faster", key, value))


def test_heads_reject_a_plain_box_predictor():
    cfg = _cfg("faster")
    model = _model(cfg)
    with pytest.raises(TypeError, match="RankNMSOutputLayers"):
        model.roi_heads.box_predictor(torch.zeros(2, 256))
    assert isinstance(model.roi_heads.box_predictor, RankNMSOutputLayers)


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_rank_head_on_needed_rois_only_gives_the_same_detections(kind):
    model = _model(_cfg(kind)).eval()
    predictor = model.roi_heads.box_predictor
    assert predictor.rank_only_where_needed
    batch = _batch()
    logits = []
    hook = predictor.cls_score.register_forward_hook(lambda m, a, out: logits.append(out))
    with torch.no_grad():
        model(batch)
    hook.remove()
    # a threshold that about half of the (untrained) model's RoIs pass
    best_fg = torch.softmax(logits[0], dim=1)[:, :-1].max(dim=1).values
    predictor.test_score_thresh = float(best_fg.median())
    calls = []
    predictor.rank_head.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    with torch.no_grad():
        lazy = model(batch)
        predictor.rank_only_where_needed = False
        full = model(batch)
    assert 0 < calls[0] < calls[-1] == len(best_fg)  # fewer RoIs through R(·)
    for a, b in zip(lazy, full):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        # a smaller matmul batch may round differently in the last bits
        torch.testing.assert_close(a.scores, b.scores)
        torch.testing.assert_close(a.rank_scores, b.rank_scores)


def test_cascade_runs_the_rank_head_on_every_roi():
    model = _model(_cfg("cascade"))
    assert not model.roi_heads.box_predictor[-1].rank_only_where_needed
