"""MODEL.NOISY_ANCHORS.ASSIGNMENT (Table 5's RPN-0.5 rows by config) and the shipped configs'
training settings (paper and released code)."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_proposal_generator
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from d2kit.paths import REPO_ROOT
from noisy_anchors import NoisyAnchorsRetinaNet, NoisyAnchorsRPN, TopNMatcher
from noisy_anchors import add_noisy_anchors_config as add_config

H, W = 64, 96
SHAPE = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}


def _rpn_cfg(*opts):
    cfg = get_cfg()
    add_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/quick_schedules/Base-Quick-RCNN-FPN.yaml"))
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "NoisyAnchorsRPN"
    cfg.MODEL.RPN.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32]]
    cfg.merge_from_list(list(opts))
    return cfg


RPN05 = ["MODEL.RPN.IOU_THRESHOLDS", "[0.5]", "MODEL.RPN.IOU_LABELS", "[0, 1]"]


def _step(rpn):
    gen = torch.Generator().manual_seed(1)
    feats = {
        k: torch.randn(2, 8, H // s.stride, W // s.stride, generator=gen) for k, s in SHAPE.items()
    }
    images = ImageList(torch.zeros(2, 3, H, W), [(H, W), (H, W)])
    gts = []
    for boxes in ([[4.0, 6, 40, 30], [50, 10, 90, 60]], [[10.0, 10, 30, 40]]):
        inst = Instances((H, W))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        gts.append(inst)
    rpn.train()
    torch.manual_seed(7)  # the RPN's positive/negative sampling
    with EventStorage() as storage:
        _, losses = rpn(images, feats, gts)
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    return losses, scalars


def test_default_assignment_is_top_n():
    rpn = build_proposal_generator(_rpn_cfg(), SHAPE)
    assert isinstance(rpn.anchor_matcher, TopNMatcher) and rpn.anchor_matcher.top_n == 30


def test_iou_assignment_keeps_the_rpn_matcher_rpn05():
    rpn = build_proposal_generator(_rpn_cfg("MODEL.NOISY_ANCHORS.ASSIGNMENT", "iou", *RPN05), SHAPE)
    assert isinstance(rpn, NoisyAnchorsRPN)
    m = rpn.anchor_matcher
    assert isinstance(m, Matcher) and not isinstance(m, TopNMatcher)
    assert m.thresholds == [-float("inf"), 0.5, float("inf")] and m.labels == [0, 1]
    # hand example: IoU 0.5 is positive, 0.49 negative, no ignore band
    _, labels = m(torch.tensor([[0.5, 0.49, 0.0, 0.8]]))
    assert labels.tolist() == [1, 0, 0, 1]


def test_rpn05_with_both_switches_off_is_plain_rpn05():
    cfg = _rpn_cfg(
        "MODEL.NOISY_ANCHORS.ASSIGNMENT", "iou", *RPN05,
        "MODEL.NOISY_ANCHORS.SOFT_LABELS", "False",
        "MODEL.NOISY_ANCHORS.REWEIGHTING", "False",
    )  # fmt: skip
    torch.manual_seed(0)
    ours = build_proposal_generator(cfg, SHAPE)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    base = build_proposal_generator(cfg, SHAPE)
    assert type(base) is RPN
    base.load_state_dict(ours.state_dict())
    ref, _ = _step(base)
    out, _ = _step(ours)
    for k in ref:
        assert torch.allclose(out[k], ref[k], rtol=1e-5), k


def test_rpn05_plus_sr_trains_with_the_reweighting():
    cfg = _rpn_cfg(
        "MODEL.NOISY_ANCHORS.ASSIGNMENT", "iou", *RPN05, "MODEL.NOISY_ANCHORS.SOFT_LABELS", "False"
    )
    rpn = build_proposal_generator(cfg, SHAPE)
    assert rpn.soft_labels is False and rpn.reweighting is True
    losses, scalars = _step(rpn)
    assert all(torch.isfinite(v) for v in losses.values())
    assert scalars["noisy_anchors/rpn/num_pos_anchors"] > 0
    assert scalars["noisy_anchors/rpn/mean_target"] == 1.0  # hard labels
    assert scalars["noisy_anchors/rpn/max_weight"] >= scalars["noisy_anchors/rpn/mean_weight"]


@pytest.mark.parametrize("value", ["top_n", "IoU", "", 1])
def test_bad_assignment_fails_at_build_naming_the_key(value):
    cfg = _rpn_cfg()
    cfg.MODEL.NOISY_ANCHORS.ASSIGNMENT = value
    with pytest.raises(
        ValueError, match=r"MODEL.NOISY_ANCHORS.ASSIGNMENT must be one of topn, iou"
    ):
        build_proposal_generator(cfg, SHAPE)
    cfg = _retina_cfg()
    cfg.MODEL.NOISY_ANCHORS.ASSIGNMENT = value
    with pytest.raises(ValueError, match=r"MODEL.NOISY_ANCHORS.ASSIGNMENT"):
        build_model(cfg)


def _retina_cfg():
    cfg = get_cfg()
    add_config(cfg)
    cfg.merge_from_file(
        os.path.join(REPO_ROOT, "configs/quick_schedules/Base-Quick-RetinaNet.yaml")
    )
    cfg.MODEL.META_ARCHITECTURE = "NoisyAnchorsRetinaNet"
    return cfg


def test_iou_assignment_on_retinanet_uses_its_iou_thresholds():
    cfg = _retina_cfg()
    assert isinstance(build_model(cfg).anchor_matcher, TopNMatcher)
    cfg.MODEL.NOISY_ANCHORS.ASSIGNMENT = "iou"
    model = build_model(cfg)
    assert isinstance(model, NoisyAnchorsRetinaNet)
    assert model.anchor_matcher.thresholds[1:-1] == [0.4, 0.5]


# ---------------------------------------------------------------- shipped configs


def _load(name):
    cfg = get_cfg()
    add_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/NoisyAnchors", name))
    return cfg


@pytest.mark.parametrize(
    "name, arch, steps, max_iter",
    [
        ("noisy_anchors_released_retinanet_R_50_FPN_1x_coco.yaml", "NoisyAnchorsRetinaNet",
         (120000, 160000), 180000),
        ("noisy_anchors_released_retinanet_R_50_FPN_3x_coco.yaml", "NoisyAnchorsRetinaNet",
         (420000, 500000), 540000),
        ("noisy_anchors_released_retinanet_R_101_FPN_3x_coco.yaml", "NoisyAnchorsRetinaNet",
         (420000, 500000), 540000),
        ("released_baseline_retinanet_R_50_FPN_1x_coco.yaml", "RetinaNet",
         (120000, 160000), 180000),
        ("released_baseline_retinanet_R_50_FPN_3x_coco.yaml", "RetinaNet",
         (420000, 500000), 540000),
    ],
)  # fmt: skip
def test_released_configs_have_the_released_training_settings(name, arch, steps, max_iter):
    cfg = _load(name)
    assert cfg.MODEL.META_ARCHITECTURE == arch
    assert cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA == 0.1
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA == 0.5
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (8, 0.005)
    assert (tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER) == (steps, max_iter)
    na = cfg.MODEL.NOISY_ANCHORS
    assert (na.VARIANT, na.TOPN, na.ASSIGNMENT, na.ALPHA) == ("released", 30, "topn", 0.75)


@pytest.mark.parametrize(
    "name",
    [
        "noisy_anchors_retinanet_R_50_FPN_1x_coco.yaml",
        "noisy_anchors_retinanet_R_101_FPN_1x_coco.yaml",
        "baseline_retinanet_R_50_FPN_1x_coco.yaml",
    ],
)
def test_paper_configs_use_smooth_l1(name):
    cfg = _load(name)
    assert cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA == 0.1  # Eq. (6): smooth-l1, not L1
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA == 0.25
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,)  # §5.1: shorter side 800
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (8, 0.005, 180000)


def test_table5_configs_reach_rpn05_by_keys():
    shape = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}
    sr = _load("noisy_anchors_rpn05_sr_faster_rcnn_R_50_FPN_1x_coco.yaml")
    rpn = NoisyAnchorsRPN(**NoisyAnchorsRPN.from_config(sr, shape))
    assert type(rpn.anchor_matcher) is Matcher and rpn.anchor_matcher.labels == [0, 1]
    assert rpn.anchor_matcher.thresholds[1:-1] == [0.5]
    assert (rpn.soft_labels, rpn.reweighting) == (False, True)
    base = _load("baseline_rpn05_faster_rcnn_R_50_FPN_1x_coco.yaml")
    assert base.MODEL.PROPOSAL_GENERATOR.NAME == "RPN"
    assert list(base.MODEL.RPN.IOU_THRESHOLDS) == [0.5] and list(base.MODEL.RPN.IOU_LABELS) == [
        0,
        1,
    ]
