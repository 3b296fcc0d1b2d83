"""NoisyAnchorsRetinaNet and NoisyAnchorsRPN: built from configs and from keyword arguments."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_proposal_generator
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from d2kit.paths import REPO_ROOT
from noisy_anchors import (
    NoisyAnchorsRetinaNet,
    NoisyAnchorsRPN,
    TopNMatcher,
    add_noisy_anchors_config,
)

H, W = 64, 96


def _instances(n):
    inst = Instances((H, W))
    boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0], [30, 30, 34, 35]])
    inst.gt_boxes = Boxes(boxes[:n])
    inst.gt_classes = torch.tensor([0, 2, 1])[:n]
    return inst


def _batch(num_gt=(2, 0)):
    gen = torch.Generator().manual_seed(3)
    return [
        {"image": torch.rand(3, H, W, generator=gen) * 255, "instances": _instances(n)}
        for n in num_gt
    ]


def _retinanet_cfg(**noisy):
    cfg = get_cfg()
    add_noisy_anchors_config(cfg)
    cfg.merge_from_file(
        os.path.join(REPO_ROOT, "configs/quick_schedules/Base-Quick-RetinaNet.yaml")
    )
    cfg.MODEL.META_ARCHITECTURE = "NoisyAnchorsRetinaNet"
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    for k, v in noisy.items():
        cfg.MODEL.NOISY_ANCHORS[k] = v
    return cfg


def _train_step(model, batch):
    model.train()
    with EventStorage() as storage:
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    return losses, scalars


def test_config_keys_and_defaults():
    cfg = get_cfg()
    add_noisy_anchors_config(cfg)
    na = cfg.MODEL.NOISY_ANCHORS
    assert (na.TOPN, na.ALPHA, na.GAMMA, na.VARIANT) == (30, 0.75, 1.0, "paper")
    assert na.SOFT_LABELS and na.REWEIGHTING and 0 < na.EPS < 1


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_retinanet_trains_on_a_mixed_batch_and_logs(variant):
    torch.manual_seed(0)
    model = build_model(_retinanet_cfg(VARIANT=variant))
    assert isinstance(model, NoisyAnchorsRetinaNet)
    assert isinstance(model.anchor_matcher, TopNMatcher) and model.anchor_matcher.top_n == 30
    losses, scalars = _train_step(model, _batch((2, 0)))
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    # two ground truths in image 0, top-30 each, none in image 1: 60 positives / 2 images
    assert scalars["noisy_anchors/num_pos_anchors"] == 30.0
    assert 0.0 <= scalars["noisy_anchors/mean_cleanliness"] <= 1.0
    assert scalars["noisy_anchors/mean_weight"] == pytest.approx(1.0, abs=1e-4)
    head = model.head
    assert head.cls_score.weight.grad.abs().sum() > 0
    assert head.bbox_pred.weight.grad.abs().sum() > 0


def test_retinanet_with_no_ground_truth_in_the_batch():
    torch.manual_seed(0)
    model = build_model(_retinanet_cfg())
    losses, scalars = _train_step(model, _batch((0, 0)))
    assert losses["loss_box_reg"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    assert scalars["noisy_anchors/num_pos_anchors"] == 0.0
    assert "noisy_anchors/mean_cleanliness" not in scalars


def test_retinanet_inference_is_retinanets():
    torch.manual_seed(0)
    cfg = _retinanet_cfg()
    model = build_model(cfg).eval()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    base = build_model(cfg).eval()
    base.load_state_dict(model.state_dict())
    images = [{"image": b["image"]} for b in _batch((1, 1))]
    with torch.no_grad():
        ours, ref = model(images), base(images)
    for a, b in zip(ours, ref):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_retinanet_switches_off_with_detectron2_matcher_equals_retinanet():
    """SL and SR off, IoU-threshold matcher: the losses are exactly RetinaNet's."""
    cfg = _retinanet_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    torch.manual_seed(0)
    base = build_model(cfg)
    kwargs = RetinaNet.from_config(cfg)  # detectron2's IoU-threshold Matcher
    ours = NoisyAnchorsRetinaNet(**kwargs, soft_labels=False, reweighting=False)
    ours.load_state_dict(base.state_dict())
    ref_losses, _ = _train_step(base, _batch((2, 1)))
    losses, _ = _train_step(ours, _batch((2, 1)))
    for k in ref_losses:
        assert torch.allclose(losses[k], ref_losses[k], rtol=1e-5), k
    # ... and with the method on, they differ
    on = NoisyAnchorsRetinaNet(**RetinaNet.from_config(cfg))
    on.load_state_dict(base.state_dict())
    losses_on, _ = _train_step(on, _batch((2, 1)))
    assert not torch.allclose(losses_on["loss_cls"], ref_losses["loss_cls"])


def test_retinanet_top_n_labels():
    torch.manual_seed(0)
    model = build_model(_retinanet_cfg(TOPN=5))
    inst = _instances(2)
    features = model.backbone(torch.zeros(1, 3, H, W))
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    gt_labels, gt_boxes = model.label_anchors(anchors, [inst])
    labels = gt_labels[0]
    assert (labels == -1).sum() == 0  # no ignore band
    assert (labels == 0).sum() == 5 and (labels == 2).sum() == 5  # classes 0 and 2, N = 5 each
    assert (labels == model.num_classes).sum() == labels.numel() - 10


def test_bad_noisy_arguments_name_the_key():
    with pytest.raises(ValueError, match="MODEL.NOISY_ANCHORS.ALPHA"):
        build_model(_retinanet_cfg(ALPHA=1.5))
    with pytest.raises(ValueError, match="MODEL.NOISY_ANCHORS.VARIANT"):
        build_model(_retinanet_cfg(VARIANT="v2"))
    with pytest.raises(ValueError, match="MODEL.NOISY_ANCHORS.GAMMA"):
        build_model(_retinanet_cfg(GAMMA=-1.0))
    with pytest.raises(ValueError, match="top_n"):
        build_model(_retinanet_cfg(TOPN=0))


def _rpn_cfg(**noisy):
    cfg = get_cfg()
    add_noisy_anchors_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/quick_schedules/Base-Quick-RCNN-FPN.yaml"))
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "NoisyAnchorsRPN"
    cfg.MODEL.RPN.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32]]
    for k, v in noisy.items():
        cfg.MODEL.NOISY_ANCHORS[k] = v
    return cfg


def _rpn_inputs():
    gen = torch.Generator().manual_seed(1)
    shape = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}
    feats = {
        "p3": torch.randn(2, 8, H // 8, W // 8, generator=gen),
        "p4": torch.randn(2, 8, H // 16, W // 16, generator=gen),
    }
    images = ImageList(torch.zeros(2, 3, H, W), [(H, W), (H, W)])
    return shape, feats, images


def _rpn_step(rpn, feats, images, gts):
    rpn.train()
    torch.manual_seed(7)  # the RPN's positive/negative sampling
    with EventStorage() as storage:
        proposals, losses = rpn(images, feats, gts)
        sum(losses.values()).backward()
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    return proposals, losses, scalars


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_rpn_trains_and_logs(variant):
    shape, feats, images = _rpn_inputs()
    torch.manual_seed(0)
    rpn = build_proposal_generator(_rpn_cfg(VARIANT=variant, TOPN=4), shape)
    assert isinstance(rpn, NoisyAnchorsRPN)
    proposals, losses, scalars = _rpn_step(rpn, feats, images, [_instances(3), _instances(0)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    # 3 ground truths x top-4 (the tiny third box overlaps fewer anchors), none in image 1
    assert 0 < scalars["rpn/num_pos_anchors"] <= 6.0
    assert scalars["noisy_anchors/rpn/num_pos_anchors"] == scalars["rpn/num_pos_anchors"]
    assert 0.0 <= scalars["noisy_anchors/rpn/mean_target"] <= 1.0
    assert rpn.rpn_head.objectness_logits.weight.grad.abs().sum() > 0
    assert rpn.rpn_head.anchor_deltas.weight.grad.abs().sum() > 0
    assert len(proposals) == 2


def test_rpn_switches_off_with_detectron2_matcher_equals_rpn():
    shape, feats, images = _rpn_inputs()
    cfg = _rpn_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    torch.manual_seed(0)
    base = build_proposal_generator(cfg, shape)
    ours = NoisyAnchorsRPN(**RPN.from_config(cfg, shape), soft_labels=False, reweighting=False)
    ours.load_state_dict(base.state_dict())
    gts = [_instances(3), _instances(1)]
    _, ref, _ = _rpn_step(base, feats, images, gts)
    _, out, _ = _rpn_step(ours, feats, images, gts)
    for k in ref:
        assert torch.allclose(out[k], ref[k], rtol=1e-5), k


def test_rpn_with_no_ground_truth():
    shape, feats, images = _rpn_inputs()
    torch.manual_seed(0)
    rpn = build_proposal_generator(_rpn_cfg(), shape)
    _, losses, scalars = _rpn_step(rpn, feats, images, [_instances(0), _instances(0)])
    assert losses["loss_rpn_loc"].item() == 0.0 and torch.isfinite(losses["loss_rpn_cls"])
    assert scalars["rpn/num_pos_anchors"] == 0.0


def test_every_noisy_anchors_config_merges():
    files = sorted(
        glob.glob(os.path.join(REPO_ROOT, "configs/NoisyAnchors/**/*.yaml"), recursive=True)
    )
    assert len(files) >= 8
    for path in files:
        cfg = get_cfg()
        add_noisy_anchors_config(cfg)
        cfg.merge_from_file(path)
        name = os.path.basename(path)
        if name.startswith("noisy_anchors_"):
            assert cfg.MODEL.META_ARCHITECTURE == "NoisyAnchorsRetinaNet" or (
                cfg.MODEL.PROPOSAL_GENERATOR.NAME == "NoisyAnchorsRPN"
            ), path
        elif "baseline" in name:  # the baselines the method configs are compared with
            assert cfg.MODEL.META_ARCHITECTURE in ("RetinaNet", "GeneralizedRCNN"), path
            assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN", path


class _MarkedProposalsRPN(RPN):
    """Stands for another method's RPN that changes proposal selection (e.g. its NMS)."""

    calls = 0

    def predict_proposals(self, *args, **kwargs):
        _MarkedProposalsRPN.calls += 1
        return super().predict_proposals(*args, **kwargs)


class _CombinedRPN(NoisyAnchorsRPN, _MarkedProposalsRPN):
    """Noisy-Anchors training of an RPN whose proposal selection another subclass owns."""


def test_rpn_composes_with_another_rpn_subclass():
    shape, feats, images = _rpn_inputs()
    torch.manual_seed(0)
    rpn = _CombinedRPN(_rpn_cfg(TOPN=4), shape)
    assert isinstance(rpn.anchor_matcher, TopNMatcher)
    _MarkedProposalsRPN.calls = 0
    _, losses, scalars = _rpn_step(rpn, feats, images, [_instances(2), _instances(1)])
    assert _MarkedProposalsRPN.calls == 1  # the other subclass's hook ran
    assert "noisy_anchors/rpn/mean_cleanliness" in scalars  # and the Noisy Anchors losses
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TOPN", 0, r"top_n \(MODEL.NOISY_ANCHORS.TOPN\) must be an integer >= 1"),
        ("TOPN", True, r"MODEL.NOISY_ANCHORS.TOPN\) must be an integer >= 1"),
        ("ALPHA", float("nan"), r"MODEL.NOISY_ANCHORS.ALPHA\) must be in \[0, 1\]"),
        ("GAMMA", float("inf"), r"MODEL.NOISY_ANCHORS.GAMMA\) must be finite and >= 0"),
        ("GAMMA", float("nan"), r"MODEL.NOISY_ANCHORS.GAMMA\) must be finite and >= 0"),
        ("EPS", 0.0, r"MODEL.NOISY_ANCHORS.EPS\) must be in \(0, 1\)"),
        ("EPS", 1.0, r"MODEL.NOISY_ANCHORS.EPS\) must be in \(0, 1\)"),
        ("SOFT_LABELS", "False", r"MODEL.NOISY_ANCHORS.SOFT_LABELS\) must be True or False"),
        ("REWEIGHTING", 1, r"MODEL.NOISY_ANCHORS.REWEIGHTING\) must be True or False"),
    ],
)
@pytest.mark.parametrize("cfg_fn", ["retinanet", "rpn"])
def test_every_noisy_anchors_key_is_checked_at_build(cfg_fn, key, value, message):
    # GAMMA = inf used to build and fail at the first iteration; SOFT_LABELS = "False" (a string)
    # used to switch soft labels on
    cfg = (_retinanet_cfg if cfg_fn == "retinanet" else _rpn_cfg)(**{key: value})
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
