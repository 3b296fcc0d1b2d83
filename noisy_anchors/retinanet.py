"""``NoisyAnchorsRetinaNet``: RetinaNet trained with Noisy Anchors (paper §4, Alg. 1).

A thin adapter over detectron2's ``RetinaNet``: ``from_config`` swaps the IoU-threshold anchor
matcher for :class:`~noisy_anchors.assignment.TopNMatcher` (so the inherited ``label_anchors``
produces the top-N candidate positives of Alg. 1) and ``losses`` computes Eqs. (5)-(6) with
:func:`~noisy_anchors.losses.noisy_anchors_dense_losses`. Forward and inference are RetinaNet's.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from d2kit.compose import Component, register_component

from ._common import NoisyAnchorsSettings, log_noisy_stats, noisy_kwargs_from_config
from .losses import noisy_anchors_dense_losses

__all__ = ["NoisyAnchorsRetinaNet", "NoisyAnchorsRetinaNetMixin"]


@register_component("RETINANET", "ASSIGNER", "noisy_anchors", base=RetinaNet)
class NoisyAnchorsRetinaNetMixin(NoisyAnchorsSettings, Component):
    """The method on any ``RetinaNet``: the top-N anchor matcher and the losses of Eqs. (5)-(6).

    The component of ``MODEL.COMPOSE.RETINANET.ASSIGNER = "noisy_anchors"`` in
    ``ComposedRetinaNet``; it owns the anchor matcher and ``losses`` and leaves inference (and
    its suppression) alone.
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
            cleanliness_alpha: α of Eqs. (3)-(4), in [0, 1].
            reweight_gamma: γ of Eq. (4), >= 0.
            noisy_variant: "paper" or "released" (see ``noisy_anchors.cleanliness``).
            soft_labels: SL of Table 3 (soft targets c for the positives, else 1).
            reweighting: SR of Table 3 (weights r for the positives, else 1).
            reweight_eps: ε in (0, 1), f(x) = 1/(1-x) is evaluated at min(x, 1-ε).
            kwargs: the arguments of detectron2's ``RetinaNet``.
        """
        super().__init__(**kwargs)
        self._init_noisy(
            cleanliness_alpha, reweight_gamma, noisy_variant, soft_labels, reweighting, reweight_eps
        )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(noisy_kwargs_from_config(cfg))
        return ret

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Eqs. (5)-(6) in place of RetinaNet's focal and box losses.

        Arguments and normalisation (EMA of the number of positives) are RetinaNet's:
        anchors: list of L ``Boxes``; pred_logits / pred_anchor_deltas: lists of L tensors of shape
        (N, Hi*Wi*A, K) / (N, Hi*Wi*A, 4); gt_labels / gt_boxes: lists of N tensors of shape (R,) /
        (R, 4) from ``label_anchors``.

        Returns:
            dict with scalar tensors "loss_cls" and "loss_box_reg".
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        num_pos_anchors = ((gt_labels >= 0) & (gt_labels != self.num_classes)).sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        out = noisy_anchors_dense_losses(
            pred_logits=cat(pred_logits, dim=1),
            pred_deltas=cat(pred_anchor_deltas, dim=1),
            anchors=Boxes.cat(anchors).tensor,
            gt_labels=gt_labels,
            gt_boxes=torch.stack(gt_boxes),
            num_classes=self.num_classes,
            box2box_transform=self.box2box_transform,
            focal_alpha=self.focal_loss_alpha,
            focal_gamma=self.focal_loss_gamma,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            **self._noisy_loss_kwargs(),
        )
        log_noisy_stats("", out, self.cleanliness_alpha, num_images)
        return {
            "loss_cls": out["loss_cls"] / normalizer,
            "loss_box_reg": out["loss_box_reg"] / normalizer,
        }


@META_ARCH_REGISTRY.register()
class NoisyAnchorsRetinaNet(NoisyAnchorsRetinaNetMixin, RetinaNet):
    """RetinaNet with cleanliness-based soft labels and sample re-weighting.

    Built from a config, the anchor matcher is ``TopNMatcher(MODEL.NOISY_ANCHORS.TOPN)``; built
    from keyword arguments, ``anchor_matcher`` is whatever is given (a detectron2 ``Matcher``
    gives IoU-threshold positives with the Noisy Anchors losses).
    """
