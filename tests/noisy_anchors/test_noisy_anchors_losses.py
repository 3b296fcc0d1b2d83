"""Soft-label focal BCE (Eqs. 1, 5), regression re-weighting (Eq. 6) and the dense loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import sigmoid_focal_loss

from noisy_anchors import (
    cleanliness,
    localization_accuracy,
    noisy_anchors_dense_losses,
    reweighting,
    soft_sigmoid_focal_loss,
)

T = torch.tensor


def test_soft_focal_loss_by_hand():
    # p = 0.5, t = 0.6, alpha = 0.25, gamma = 2:
    # -0.6*0.25*0.5^2*ln(0.5) - 0.4*0.75*0.5^2*ln(0.5) = ln(2) * (0.0375 + 0.075)
    out = soft_sigmoid_focal_loss(T([0.0]), T([0.6]), alpha=0.25, gamma=2.0)
    assert torch.allclose(out, T([math.log(2) * 0.1125]))


def test_soft_focal_loss_equals_detectron2_focal_loss_for_hard_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=gen) * 4
    targets = (torch.rand(20, 5, generator=gen) > 0.7).float()
    ours = soft_sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    ref = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    assert torch.allclose(ours, ref, atol=1e-6)


def test_soft_focal_loss_without_alpha_and_gamma_is_bce():
    logits, targets = T([-3.0, 0.5, 8.0]), T([0.2, 0.7, 1.0])
    ours = soft_sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=0.0)
    ref = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_soft_focal_loss_finite_with_gradients_for_saturated_logits(gamma):
    logits = T([-1e4, -100.0, -30.0, 30.0, 100.0, 1e4], requires_grad=True)
    targets = T([0.0, 0.3, 1.0, 0.0, 0.7, 1.0])
    loss = soft_sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=gamma)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # soft targets away from the saturated prediction still pull it back
    assert logits.grad[1] < 0 and logits.grad[4] > 0
    # fp16 logits are computed in fp32
    half = soft_sigmoid_focal_loss(logits.detach().half(), targets.half(), 0.25, gamma)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_soft_focal_loss_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        soft_sigmoid_focal_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="gamma"):
        soft_sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), gamma=-1.0)


def test_localization_accuracy_by_hand():
    pred = T([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    gt = T([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(localization_accuracy(pred, gt), T([50 / 150, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\(P, 4\)"):
        localization_accuracy(pred, gt[:2])


def _dense_case(requires_grad=True):
    """One image, 4 anchors, K = 2: anchors 0, 1 positive (classes 1, 0), 2 negative, 3 ignored."""
    anchors = T(
        [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [0, 0, 5, 5], [50, 50, 60, 60.0]]
    )
    logits = T([[[0.0, 1.0], [-1.0, -2.0], [-3.0, 0.5], [2.0, 2.0]]], requires_grad=requires_grad)
    deltas = torch.zeros(1, 4, 4, requires_grad=requires_grad)
    gt_labels = T([[1, 0, 2, -1]])
    gt_boxes = T([[[0.0, 0.0, 10.0, 20.0], [20.0, 20.0, 40.0, 40.0], [0] * 4, [0] * 4]]).float()
    return dict(
        pred_logits=logits,
        pred_deltas=deltas,
        anchors=anchors,
        gt_labels=gt_labels,
        gt_boxes=gt_boxes,
        num_classes=2,
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        focal_alpha=0.25,
        focal_gamma=2.0,
        smooth_l1_beta=0.0,
    )


def test_dense_loss_paper_variant_against_the_equations():
    case = _dense_case()
    out = noisy_anchors_dense_losses(**case, alpha=0.75, gamma=1.0)
    # zero deltas: regressed box = anchor. loc_a: IoU([0,0,10,10], [0,0,10,20]) = 0.5, and 1.
    loc = T([0.5, 1.0])
    cls = torch.sigmoid(T([1.0, -1.0]))  # the ground-truth-class channels
    c = cleanliness(loc, cls, 0.75)
    r = reweighting(loc, cls, 0.75, 1.0)
    logits = case["pred_logits"].detach()[0]
    targets = T([[0.0, c[0]], [c[1], 0.0], [0.0, 0.0]])
    per_anchor = soft_sigmoid_focal_loss(logits[:3], targets, 0.25, 2.0).sum(-1)
    expected_cls = r[0] * per_anchor[0] + r[1] * per_anchor[1] + per_anchor[2]  # Eq. (5)
    assert torch.allclose(out["loss_cls"], expected_cls)
    # smooth-L1 (beta 0 = L1) on deltas; anchor 0 -> gt [0,0,10,20]: dy = 0.5, dh = ln 2
    expected_reg = r[0] * (0.5 + math.log(2.0)) + r[1] * 0.0  # Eq. (6)
    assert torch.allclose(out["loss_box_reg"], expected_reg)
    assert out["num_pos"] == 2
    assert out["mean_loc_a"] == pytest.approx(0.75)
    assert out["mean_weight"] == pytest.approx(1.0)
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    grad = case["pred_logits"].grad[0]
    assert grad[3].abs().sum() == 0  # ignored anchor
    assert grad[:3].abs().sum() > 0 and case["pred_deltas"].grad[0, 0].abs().sum() > 0


def test_dense_loss_switches_off_is_focal_loss_with_hard_labels():
    case = _dense_case()
    out = noisy_anchors_dense_losses(**case, soft_labels=False, reweight=False)
    logits = case["pred_logits"].detach()[0, :3]
    targets = T([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    ref = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    assert torch.allclose(out["loss_cls"], ref)
    assert torch.allclose(out["loss_box_reg"], T(0.5 + math.log(2.0)))


def test_dense_loss_released_variant_preserves_the_loss_sums():
    plain_case = _dense_case()
    unweighted = noisy_anchors_dense_losses(**plain_case, variant="released", reweight=False)
    case = _dense_case()
    out = noisy_anchors_dense_losses(**case, variant="released")
    # same soft labels; the re-weighting only redistributes the (cls, reg) loss sums ...
    assert torch.allclose(out["loss_cls"], unweighted["loss_cls"])
    assert torch.allclose(out["loss_box_reg"], unweighted["loss_box_reg"])
    # ... and so changes the gradients (r != 1 for the two positives)
    assert out["max_weight"] > 1.0
    out["loss_cls"].backward()
    unweighted["loss_cls"].backward()
    assert not torch.allclose(case["pred_logits"].grad, plain_case["pred_logits"].grad)


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_dense_loss_finite_for_saturated_logits_and_perfect_boxes(variant):
    case = _dense_case()
    with torch.no_grad():
        case["pred_logits"].mul_(0).add_(T([[[1e4, 1e4], [1e4, -1e4], [-1e4, 1e4], [0, 0]]]))
    case["gt_boxes"][0, 0] = case["anchors"][0]  # loc_a = 1 for anchor 0
    out = noisy_anchors_dense_losses(**case, variant=variant)
    total = out["loss_cls"] + out["loss_box_reg"]
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(case["pred_logits"].grad).all()
    assert torch.isfinite(case["pred_deltas"].grad).all()
    assert case["pred_logits"].grad.abs().sum() > 0


def test_dense_loss_without_positives():
    case = _dense_case()
    case["gt_labels"] = T([[2, 2, 2, -1]])
    out = noisy_anchors_dense_losses(**case)
    assert out["num_pos"] == 0 and out["mean_weight"] == 0.0
    assert out["loss_box_reg"].item() == 0.0
    (out["loss_cls"] + out["loss_box_reg"]).backward()  # the graph is intact
    assert case["pred_deltas"].grad is not None and case["pred_deltas"].grad.abs().sum() == 0


def test_dense_loss_giou_regression_is_reweighted():
    case = _dense_case()
    out = noisy_anchors_dense_losses(**case, box_reg_loss_type="giou")
    r = reweighting(T([0.5, 1.0]), torch.sigmoid(T([1.0, -1.0])), 0.75, 1.0)
    # GIoU loss of the anchor-0 box vs its ground truth: 1 - 0.5 (no enclosing gap); anchor 1: 0
    assert torch.allclose(out["loss_box_reg"], r[0] * 0.5, atol=1e-6)


def test_dense_loss_bad_shapes_and_variant():
    case = _dense_case()
    case["pred_logits"] = case["pred_logits"][:, :3]
    with pytest.raises(ValueError, match="pred_logits"):
        noisy_anchors_dense_losses(**case)
    case = _dense_case()
    case["anchors"] = case["anchors"][:3]
    with pytest.raises(ValueError, match="anchors"):
        noisy_anchors_dense_losses(**case)
    with pytest.raises(ValueError, match="variant"):
        noisy_anchors_dense_losses(**_dense_case(), variant="v2")
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        noisy_anchors_dense_losses(**_dense_case(), box_reg_loss_type="l2")


def test_weight_concentration_is_reported_and_logged(caplog, monkeypatch):
    from detectron2.utils.events import EventStorage

    from noisy_anchors._common import log_noisy_stats

    case = _dense_case()
    out = noisy_anchors_dense_losses(**case, alpha=0.75, gamma=1.0)
    r = reweighting(T([0.5, 1.0]), torch.sigmoid(T([1.0, -1.0])), 0.75, 1.0)
    assert out["max_weight_over_mean"] == pytest.approx((r.max() / r.mean()).item())
    # Eq. (4) with f capped at 1/ε = 1000: one exactly localised anchor among 300 typical ones
    # gets 750.4 * 300 / (750.4 + 299 * 2.0) = 167x the mean weight
    loc = torch.cat([T([1.0]), torch.full((299,), 0.5)])
    cls = torch.cat([T([0.5]), torch.full((299,), 0.5)])
    heavy = reweighting(loc, cls, 0.75, 1.0)
    assert (heavy.max() / heavy.mean()).item() == pytest.approx(750.5 * 300 / (750.5 + 299 * 2))
    stats = {**out, "max_weight": heavy.max().item(), "max_weight_over_mean": 167.0}
    import detectron2.utils.logger as d2_logger

    monkeypatch.setattr(d2_logger, "_LOG_TIMER", {})  # the warning is rate-limited per call site
    with EventStorage() as storage, caplog.at_level("WARNING", logger="noisy_anchors"):
        log_noisy_stats("", stats, 0.75, 2)
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    assert scalars["noisy_anchors/max_weight_over_mean"] == 167.0
    assert any("167x the mean" in rec.getMessage() for rec in caplog.records)
