"""Per-RoI loss weights in the box head (the ε re-weighting of §3.2, Table 2(e)).

:class:`LossWeightMixin` goes in front of any ``FastRCNNOutputLayers`` subclass (another package's
box predictor included) and makes its ``losses`` honour a ``loss_weight`` field on the sampled
proposals. :class:`OverlapSamplerOutputLayers` is the mixin on Detectron2's own predictor.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances
from fvcore.nn import smooth_l1_loss

from d2kit.compose import Component

__all__ = ["LossWeightMixin", "OverlapSamplerOutputLayers", "WEIGHT_FIELD"]

#: Name of the ``Instances`` field holding each sampled RoI's loss weight (float, shape (R,)).
WEIGHT_FIELD = "loss_weight"


class LossWeightMixin(Component):
    """Box-head losses weighted per RoI by the proposals' ``loss_weight`` field.

    With weights w_i over the R sampled RoIs of the batch (the samplers make them sum to R, mean 1):

    - ``loss_cls`` = Σ_i w_i · CE_i / R (Detectron2: the mean of CE_i);
    - ``loss_box_reg`` = Σ_{i fg} w_i · L_i / R (Detectron2: Σ_{i fg} L_i / R).

    So the losses keep Detectron2's normalisation and scale: with all w_i = 1 they are exactly
    Detectron2's, and the ε weight moves loss towards the best-matched positives without changing
    the total weight of the batch. The smooth-L1 regression loss (Detectron2's default) is computed
    per RoI in one pass; other ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE`` values reuse the
    predictor's own ``box_reg_loss`` once per distinct weight value. Proposals
    without the field fall back to the predictor's unweighted ``losses``. The federated loss is not
    supported with weights.

    As a component of a composed box predictor it owns ``losses`` (the classification and box
    losses); a component that adds a loss extends ``losses`` and runs before it.
    """

    claims = ("losses",)

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if not proposals or not all(p.has(WEIGHT_FIELD) for p in proposals):
            return super().losses(predictions, proposals)
        if getattr(self, "use_fed_loss", False):
            raise ValueError(
                "per-RoI loss weights (MODEL.OVERLAP_SAMPLER.EPSILON) do not support "
                "MODEL.ROI_BOX_HEAD.USE_FED_LOSS"
            )
        scores, proposal_deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes)
        weights = cat([p.get(WEIGHT_FIELD) for p in proposals], dim=0).to(scores.dtype)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        )
        num = max(gt_classes.numel(), 1)
        if getattr(self, "use_sigmoid_ce", False):
            target = F.one_hot(gt_classes, scores.shape[1]).to(scores.dtype)[:, :-1]
            per_roi = F.binary_cross_entropy_with_logits(
                scores[:, :-1], target, reduction="none"
            ).sum(dim=1)
        else:
            per_roi = F.cross_entropy(scores, gt_classes, reduction="none")
        loss_cls = (per_roi * weights).sum() / num

        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if self.box_reg_loss_type == "smooth_l1":
            loss_box_reg = (
                self._weighted_smooth_l1(
                    proposal_boxes, gt_boxes, proposal_deltas, gt_classes, fg, weights
                )
                / num
            )
        else:
            loss_box_reg = self._weighted_box_reg_by_groups(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes, fg, weights
            )
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def _weighted_smooth_l1(self, proposal_boxes, gt_boxes, deltas, gt_classes, fg, weights):
        """Σ_{i fg} w_i · smooth-L1(deltas_i, target_i), summed over the box coordinates."""
        fg_inds = torch.nonzero(fg).flatten()
        box_dim = proposal_boxes.shape[1]
        if deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_deltas = deltas[fg_inds]
        else:
            fg_deltas = deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        target = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        per_roi = smooth_l1_loss(fg_deltas, target, self.smooth_l1_beta, reduction="none")
        return (per_roi.sum(dim=1) * weights[fg_inds]).sum()

    def _weighted_box_reg_by_groups(
        self, proposal_boxes, gt_boxes, deltas, gt_classes, fg, weights
    ):
        """Any ``box_reg_loss`` type: the predictor's own loss once per distinct weight value."""
        loss_box_reg = deltas.sum() * 0.0
        for w in torch.unique(weights[fg]).tolist():
            group = fg & (weights == w)
            # box_reg_loss sums over the foreground RoIs of ``group`` and divides by all RoIs.
            masked = torch.where(group, gt_classes, torch.full_like(gt_classes, self.num_classes))
            loss_box_reg = loss_box_reg + w * self.box_reg_loss(
                proposal_boxes, gt_boxes, deltas, masked
            )
        return loss_box_reg


class OverlapSamplerOutputLayers(LossWeightMixin, FastRCNNOutputLayers):
    """Detectron2's ``FastRCNNOutputLayers`` with per-RoI loss weights (see
    :class:`LossWeightMixin`); inference is unchanged."""
