"""Losses of Noisy Anchors: soft-label focal BCE and re-weighted regression (Eqs. 1, 5, 6).

``noisy_anchors_dense_losses`` is the whole loss of a dense detector head (RetinaNet, or the RPN
with one "object" class and plain BCE) as a plain function of tensors, used by the thin adapters
in ``retinanet.py`` and ``rpn.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers.losses import ciou_loss, diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import giou_loss, smooth_l1_loss

from .cleanliness import VARIANTS, soft_labels_and_weights

__all__ = [
    "soft_sigmoid_focal_loss",
    "localization_accuracy",
    "box_regression_loss_per_anchor",
    "noisy_anchors_dense_losses",
]

_BOX_LOSSES = ("smooth_l1", "giou", "diou", "ciou")


def soft_sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal BCE of Eq. (1) with a soft target t in [0, 1] (Eq. 5 uses t = c).

    ``BCE(p, t) = -t·w_p·log(p) - (1-t)·w_n·log(1-p)``, ``w_p = α·(1-p)^γ``, ``w_n = (1-α)·p^γ``,
    p = sigmoid(logits). For t in {0, 1} it equals detectron2's ``sigmoid_focal_loss``. All logs
    are log-sigmoids of the logits, so saturated logits (|x| in the thousands) give finite values
    and gradients. α < 0 disables the α-balancing (w_p, w_n without α) and γ = 0 gives plain BCE,
    as for the RPN.

    Args:
        logits: float tensor of any shape.
        targets: float tensor of the same shape, values in [0, 1].
        alpha: α of the focal loss (< 0: none); gamma: γ >= 0 of the focal loss.

    Returns:
        float32 tensor of the shape of ``logits``, non-negative.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    x = logits.float()
    t = targets.float()
    log_p = F.logsigmoid(x)  # log(p)
    log_1mp = F.logsigmoid(-x)  # log(1 - p)
    pos = t * log_p
    neg = (1.0 - t) * log_1mp
    if gamma > 0:
        pos = pos * torch.exp(gamma * log_1mp)  # (1-p)^γ
        neg = neg * torch.exp(gamma * log_p)  # p^γ
    if alpha >= 0:
        pos = alpha * pos
        neg = (1.0 - alpha) * neg
    return -(pos + neg)  # Eq. (1) with t -> c


def localization_accuracy(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """loc_a: IoU of each predicted box with its own ground truth (not pairwise).

    Args:
        pred_boxes, gt_boxes: float tensors of shape (P, 4), XYXY absolute coordinates.

    Returns:
        (P,) float32 tensor in [0, 1]; 0 where both boxes are empty.
    """
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.dim() != 2 or pred_boxes.shape[1] != 4:
        raise ValueError(
            "pred_boxes and gt_boxes must both have shape (P, 4), got "
            f"{tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}"
        )
    a, b = pred_boxes.float(), gt_boxes.float()
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou.clamp(0.0, 1.0)


def box_regression_loss_per_anchor(
    pred_deltas: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    box2box_transform: Box2BoxTransform,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Regression loss of each positive anchor (the summand of Eq. 6 before r).

    Args:
        pred_deltas: (P, 4) predicted deltas of the positives.
        anchors: (P, 4) their anchors, XYXY.
        gt_boxes: (P, 4) their matched ground-truth boxes, XYXY.
        box2box_transform: detectron2's ``Box2BoxTransform``.
        box_reg_loss_type: "smooth_l1" (on deltas, summed over the 4 coordinates), "giou",
            "diou" or "ciou" (on decoded boxes).
        smooth_l1_beta: β of smooth-L1 (0 = L1).

    Returns:
        (P,) float tensor, non-negative.
    """
    if box_reg_loss_type not in _BOX_LOSSES:
        raise ValueError(
            f"box_reg_loss_type must be one of {_BOX_LOSSES}, got {box_reg_loss_type!r}"
        )
    if box_reg_loss_type == "smooth_l1":
        target = box2box_transform.get_deltas(anchors, gt_boxes)
        return smooth_l1_loss(pred_deltas, target, beta=smooth_l1_beta, reduction="none").sum(-1)
    pred_boxes = box2box_transform.apply_deltas(pred_deltas, anchors)
    fn = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[box_reg_loss_type]
    return fn(pred_boxes, gt_boxes, reduction="none")


def _loss_preserving_scale(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Detached factor s with sum(s·w·loss) = sum(loss) (the released code's normalisation)."""
    with torch.no_grad():
        weighted = (loss * weights).sum()
        total = loss.sum()
        return torch.where(weighted > 0, total / weighted.clamp(min=1e-12), torch.ones_like(total))


def noisy_anchors_dense_losses(
    *,
    pred_logits: torch.Tensor,
    pred_deltas: torch.Tensor,
    anchors: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    num_classes: int,
    box2box_transform: Box2BoxTransform,
    focal_alpha: float,
    focal_gamma: float,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
    alpha: float = 0.75,
    gamma: float = 1.0,
    variant: str = "paper",
    soft_labels: bool = True,
    reweight: bool = True,
    eps: float = 1e-3,
) -> dict[str, torch.Tensor | float | int]:
    """Un-normalised L_cls and L_reg of Eqs. (5)-(6) for a batch of dense predictions.

    For each positive anchor i (label in [0, K)), with its ground-truth class k_i and box g_i:
    ``cls_c = sigmoid(logit[i, k_i])`` and ``loc_a = IoU(decode(deltas[i], anchor_i), g_i)``, both
    detached; they give the target ``c_i`` of channel k_i and the weight ``r_i`` of the anchor
    (all K channels and its regression). Negatives (label K) have targets 0 and weight 1;
    ignored anchors (label -1) are left out.

    Args:
        pred_logits: (N, R, K) classification logits (N images, R anchors, K classes).
        pred_deltas: (N, R, 4) box deltas.
        anchors: (R, 4) anchors, XYXY, shared by the images.
        gt_labels: (N, R) int64 in {-1, 0, ..., K}: -1 ignore, K background, else the class.
        gt_boxes: (N, R, 4) matched ground-truth boxes (used for positives only).
        num_classes: K.
        box2box_transform: detectron2's ``Box2BoxTransform``.
        focal_alpha, focal_gamma: focal-loss α (< 0: none) and γ (0: plain BCE).
        box_reg_loss_type, smooth_l1_beta: see :func:`box_regression_loss_per_anchor`.
        alpha, gamma, variant, soft_labels, reweight, eps: see
            :func:`noisy_anchors.cleanliness.soft_labels_and_weights`.

    Returns:
        dict with ``loss_cls`` and ``loss_box_reg`` (scalar tensors, sums over anchors, to be
        divided by the caller's normaliser), ``num_pos`` (int) and the float statistics
        ``mean_loc_a``, ``mean_cls_c``, ``mean_target``, ``mean_weight``, ``max_weight``,
        ``max_weight_over_mean`` (the largest r over the mean r of the batch's positives)
        (0 when there are no positives).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n, r = gt_labels.shape
    if pred_logits.shape != (n, r, num_classes):
        raise ValueError(
            f"pred_logits must have shape {(n, r, num_classes)}, got {tuple(pred_logits.shape)}"
        )
    if pred_deltas.shape != (n, r, 4) or gt_boxes.shape != (n, r, 4) or anchors.shape != (r, 4):
        raise ValueError(
            f"expected pred_deltas and gt_boxes of shape {(n, r, 4)} and anchors of shape "
            f"{(r, 4)}, got {tuple(pred_deltas.shape)}, {tuple(gt_boxes.shape)}, "
            f"{tuple(anchors.shape)}"
        )

    valid = gt_labels >= 0
    pos = valid & (gt_labels != num_classes)
    img_idx, anchor_idx = pos.nonzero(as_tuple=True)  # row-major: image by image
    num_per_image = pos.sum(dim=1).tolist()
    pos_labels = gt_labels[img_idx, anchor_idx]
    pos_deltas = pred_deltas[img_idx, anchor_idx]
    pos_anchors = anchors[anchor_idx]
    pos_gt = gt_boxes[img_idx, anchor_idx]

    with torch.no_grad():
        pos_logit = pred_logits[img_idx, anchor_idx, pos_labels].float()
        cls_c = torch.sigmoid(pos_logit)  # probability of the ground-truth class
        pred_boxes = box2box_transform.apply_deltas(pos_deltas.detach().float(), pos_anchors)
        loc_a = localization_accuracy(pred_boxes, pos_gt)  # IoU of the regressed box
        targets, weights = soft_labels_and_weights(
            loc_a,
            cls_c,
            num_per_image,
            alpha=alpha,
            gamma=gamma,
            variant=variant,
            soft_labels=soft_labels,
            reweight=reweight,
            eps=eps,
        )
        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)
        cls_targets[img_idx, anchor_idx, pos_labels] = targets  # t -> c (Eq. 5); 0 for A_neg
        anchor_weights = torch.ones(n, r, dtype=torch.float32, device=pred_logits.device)
        anchor_weights[img_idx, anchor_idx] = weights  # r for A_pos, 1 for A_neg (Alg. 1)

    per_anchor_cls = soft_sigmoid_focal_loss(
        pred_logits[valid], cls_targets[valid], focal_alpha, focal_gamma
    ).sum(dim=-1)
    valid_weights = anchor_weights[valid]
    per_pos_reg = box_regression_loss_per_anchor(
        pos_deltas, pos_anchors, pos_gt, box2box_transform, box_reg_loss_type, smooth_l1_beta
    ).float()

    loss_cls = (valid_weights * per_anchor_cls).sum()  # Eq. (5)
    loss_box_reg = (weights * per_pos_reg).sum()  # Eq. (6)
    if variant == "released" and reweight:
        # The released code rescales so that re-weighting keeps the sum of each loss.
        loss_cls = loss_cls * _loss_preserving_scale(per_anchor_cls, valid_weights)
        loss_box_reg = loss_box_reg * _loss_preserving_scale(per_pos_reg, weights)

    num_pos = int(img_idx.numel())
    has_pos = num_pos > 0
    return {
        "loss_cls": loss_cls,
        "loss_box_reg": loss_box_reg,
        "num_pos": num_pos,
        "mean_loc_a": loc_a.mean().item() if has_pos else 0.0,
        "mean_cls_c": cls_c.mean().item() if has_pos else 0.0,
        "mean_target": targets.mean().item() if has_pos else 0.0,
        "mean_weight": weights.mean().item() if has_pos else 0.0,
        "max_weight": weights.max().item() if has_pos else 0.0,
        # Eq. (4) can put ~100x the mean weight on one anchor (see noisy_anchors.cleanliness)
        "max_weight_over_mean": (weights.max() / weights.mean()).item() if has_pos else 0.0,
    }
