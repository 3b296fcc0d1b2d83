"""``NoisyAnchorsRPN``: the RPN of Faster R-CNN trained with Noisy Anchors (paper Tables 5-6).

A thin adapter over detectron2's ``RPN``: ``from_config`` swaps the IoU-threshold anchor matcher
for :class:`~noisy_anchors.assignment.TopNMatcher`, so the inherited ``label_and_sample_anchors``
takes the top-N anchors of each ground truth as candidate positives and every other anchor as
negative, then samples ``BATCH_SIZE_PER_IMAGE`` anchors with ``POSITIVE_FRACTION`` as usual (the
RPN's plain BCE needs the sampling that focal loss makes unnecessary in RetinaNet). ``losses``
computes Eqs. (5)-(6) for the objectness (one class, plain BCE with soft targets) and the box
deltas. Proposal prediction (and any NMS a subclass plugs in) is untouched.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from d2kit.compose import Component, register_component

from ._common import NoisyAnchorsSettings, log_noisy_stats, noisy_kwargs_from_config
from .losses import noisy_anchors_dense_losses

__all__ = ["NoisyAnchorsRPN", "NoisyAnchorsRPNMixin"]


@register_component("RPN", "ASSIGNER", "noisy_anchors", base=RPN)
class NoisyAnchorsRPNMixin(NoisyAnchorsSettings, Component):
    """The method on any ``RPN``: the top-N anchor matcher and the losses of Eqs. (5)-(6).

    The component of ``MODEL.COMPOSE.RPN.ASSIGNER = "noisy_anchors"`` in ``ComposedRPN``; it owns
    the anchor matcher and ``losses`` and leaves proposal selection (and its suppression) alone.
    """

    claims = ("anchor_matcher", "losses")

    @configurable
    def __init__(
        self,
        *,
        cleanliness_alpha: float = 0.75,
        reweight_gamma: float = 1.0,
        noisy_variant: str = "paper",
        soft_labels: bool = True,
        reweighting: bool = True,
        reweight_eps: float = 1e-3,
        **kwargs,
    ):
        """
        Args:
            cleanliness_alpha, reweight_gamma, noisy_variant, soft_labels, reweighting,
                reweight_eps: as in :class:`~noisy_anchors.retinanet.NoisyAnchorsRetinaNet`.
            kwargs: the arguments of detectron2's ``RPN``.
        """
        super().__init__(**kwargs)
        self._init_noisy(
            cleanliness_alpha, reweight_gamma, noisy_variant, soft_labels, reweighting, reweight_eps
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(noisy_kwargs_from_config(cfg))
        return ret

    @torch.jit.unused
    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Eqs. (5)-(6) in place of the RPN's BCE and box losses.

        Arguments and normalisation (``BATCH_SIZE_PER_IMAGE`` x images) are the RPN's:
        anchors: list of L ``Boxes``; pred_objectness_logits: list of L (N, Hi*Wi*A) tensors;
        gt_labels: list of N (R,) tensors in {-1, 0, 1}; pred_anchor_deltas: list of L
        (N, Hi*Wi*A, 4) tensors; gt_boxes: list of N (R, 4) tensors.

        Returns:
            dict with scalar tensors "loss_rpn_cls" and "loss_rpn_loc".
        """
        if not isinstance(anchors[0], Boxes) or anchors[0].tensor.shape[-1] != 4:
            raise ValueError("NoisyAnchorsRPN supports axis-aligned (XYXY) anchors only")
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R) in {-1, 0, 1}
        num_pos = (gt_labels == 1).sum().item()
        num_neg = (gt_labels == 0).sum().item()
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", num_pos / num_images)
        storage.put_scalar("rpn/num_neg_anchors", num_neg / num_images)

        # One "object" class: positive -> class 0, negative -> background index 1, ignore -> -1.
        dense_labels = torch.where(gt_labels == 1, 0, torch.where(gt_labels == 0, 1, -1))
        out = noisy_anchors_dense_losses(
            pred_logits=cat(pred_objectness_logits, dim=1).unsqueeze(-1),
            pred_deltas=cat(pred_anchor_deltas, dim=1),
            anchors=Boxes.cat(anchors).tensor,
            gt_labels=dense_labels,
            gt_boxes=torch.stack(gt_boxes),
            num_classes=1,
            box2box_transform=self.box2box_transform,
            focal_alpha=-1.0,  # plain BCE, as in the RPN
            focal_gamma=0.0,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            **self._noisy_loss_kwargs(),
        )
        log_noisy_stats("rpn/", out, self.cleanliness_alpha, num_images)
        normalizer = self.batch_size_per_image * num_images
        losses = {
            "loss_rpn_cls": out["loss_cls"] / normalizer,
            "loss_rpn_loc": out["loss_box_reg"] / normalizer,
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}


@PROPOSAL_GENERATOR_REGISTRY.register()
class NoisyAnchorsRPN(NoisyAnchorsRPNMixin, RPN):
    """RPN with cleanliness-based soft objectness labels and sample re-weighting.

    Built from a config, the anchor matcher is ``TopNMatcher(MODEL.NOISY_ANCHORS.TOPN)``. For the
    RPN, cls_c is the predicted objectness probability and loc_a the IoU of the regressed anchor
    with its ground truth.
    """
