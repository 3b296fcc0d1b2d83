"""``OverlapSamplerROIHeads``: ``StandardROIHeads`` trained with the Overlap Sampler."""

import math
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from d2kit.compose import Component, register_component

from .config import check_overlap_sampler_config
from .losses import WEIGHT_FIELD, LossWeightMixin, OverlapSamplerOutputLayers
from .samplers import ImageExamples, build_overlap_sampler
from .sampling import (
    EPSILON_TARGETS,
    _check_args,
    best_positive_weights,
    bin_indices,
    overlaps_among_examples,
)

__all__ = ["OverlapSamplerMixin", "OverlapSamplerROIHeads"]


@register_component("ROI_HEADS", "SAMPLER", "overlap_sampler", base=StandardROIHeads)
class OverlapSamplerMixin(Component):
    """``StandardROIHeads`` whose training RoIs are chosen by the overlaps among the examples.

    The mixin holds the method (``OverlapSamplerROIHeads`` is it on ``StandardROIHeads``, and
    ``MODEL.COMPOSE.ROI_HEADS.SAMPLER = "overlap_sampler"`` selects it in ``ComposedROIHeads``):
    it owns ``label_and_sample_proposals`` and brings the weighted box losses
    (:class:`~overlap_sampler.losses.LossWeightMixin`) to the box predictor.

    Only the labelling-and-sampling step and the box predictor's losses change; the box, mask and
    keypoint heads and inference are Detectron2's (Faster and Mask R-CNN alike).

    Per image, in training (``label_and_sample_proposals``):

    1. the proposals, with the ground-truth boxes appended (``ROI_HEADS.PROPOSAL_APPEND_GT``), are
       matched to the ground truth as in Detectron2 and labelled positive (foreground), negative
       (background) or ignored;
    2. IoU^{p,n} of each negative (largest IoU with a positive, the appended ground truth
       included) and IoU^{p,e} of each positive are computed among these examples;
    3. the number of positives and negatives is Detectron2's (``BATCH_SIZE_PER_IMAGE``,
       ``POSITIVE_FRACTION``); which ones is decided by the configured samplers
       (``OVERLAP_SAMPLER_REGISTRY``);
    4. the best-matched sampled positive of each ground truth gets loss weight ε (§3.2), stored in
       the sampled proposals' ``loss_weight`` field and used by the box predictor
       (:class:`~overlap_sampler.losses.OverlapSamplerOutputLayers`). Loss scale: each image's
       weights are rescaled to sum to its number of sampled RoIs (mean 1), and the box losses keep
       Detectron2's normalisation by the number of RoIs, so their scale stays comparable to
       ``StandardROIHeads`` (ε = 1 reproduces its losses exactly).

    ``_sample_proposals`` is not overridden: it gets no boxes, and the overlaps among examples need
    them; ``label_and_sample_proposals`` is the narrowest hook that has them.
    """

    claims = ("label_and_sample_proposals",)
    predictor_components = (LossWeightMixin,)

    @configurable
    def __init__(
        self,
        *,
        negative_sampler,
        positive_sampler,
        epsilon: float = 2.0,
        epsilon_target: str = "best_including_gt",
        pe_with: str = "negatives",
        threshold: float = 0.55,
        log_num_bins: int = 2,
        log_interval_max: float | None = None,
        **kwargs,
    ):
        """
        Args:
            negative_sampler: a sampler of ``OVERLAP_SAMPLER_REGISTRY`` for the negatives.
            positive_sampler: a sampler for the positives.
            epsilon: ε > 0, loss weight of each ground truth's best-matched positive (1: off).
            epsilon_target: which positive gets ε, one of ``EPSILON_TARGETS``
                (see :func:`~overlap_sampler.sampling.best_positive_weights`).
            pe_with: "negatives" or "examples", what IoU^{p,e} is taken against
                (see :func:`~overlap_sampler.sampling.overlaps_among_examples`).
            threshold: θ, only for the logged fraction of sampled negatives with IoU^{p,n} >= θ.
            log_num_bins, log_interval_max: bins (Eq. 2) of the logged per-bin counts of the
                sampled negatives' IoU^{p,n}.
            kwargs: the arguments of ``StandardROIHeads``; ``box_predictor`` should honour the
                ``loss_weight`` field (e.g. ``OverlapSamplerOutputLayers``) for ε to act.
        """
        super().__init__(**kwargs)
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon (ε) must be a finite number > 0, got {epsilon!r}")
        if pe_with not in ("negatives", "examples"):
            raise ValueError(f"pe_with must be one of negatives, examples; got {pe_with!r}")
        _check_args(0, "soft", log_num_bins, threshold, log_interval_max)
        self.negative_sampler = negative_sampler
        self.positive_sampler = positive_sampler
        self.epsilon = float(epsilon)
        if epsilon_target not in EPSILON_TARGETS:
            raise ValueError(
                f"epsilon_target must be one of {EPSILON_TARGETS}; got {epsilon_target!r}"
            )
        self.epsilon_target = epsilon_target
        self.pe_with = pe_with
        self.threshold = float(threshold)
        self.log_num_bins = int(log_num_bins)
        self.log_interval_max = log_interval_max

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_overlap_sampler_config(cfg)  # every key, with its valid range, at model build
        ret = super().from_config(cfg, input_shape)
        oc = cfg.MODEL.OVERLAP_SAMPLER
        ret.update(
            negative_sampler=build_overlap_sampler(cfg, "negative"),
            positive_sampler=build_overlap_sampler(cfg, "positive"),
            epsilon=oc.EPSILON,
            epsilon_target=oc.EPSILON_TARGET,
            pe_with=oc.POSITIVE.IOU_WITH,
            threshold=oc.THRESHOLD,
            log_num_bins=oc.NEGATIVE.NUM_BINS,
            log_interval_max=oc.NEGATIVE.INTERVAL_MAX if oc.NEGATIVE.INTERVAL_MAX > 0 else None,
        )
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Label the proposals and sample the RoIs of each image with the Overlap Sampler.

        Args:
            proposals: per image, ``Instances`` with ``proposal_boxes`` (and
                ``objectness_logits``).
            targets: per image, ``Instances`` with ``gt_boxes``, ``gt_classes`` (and ``gt_masks``
                etc.); may be empty.

        Returns:
            per image, the sampled ``Instances`` (at most ``BATCH_SIZE_PER_IMAGE``) with the
            fields of Detectron2's ``label_and_sample_proposals`` (``gt_classes`` in
            [0, num_classes], the matched ``gt_*`` fields when the image has ground truth) plus
            ``loss_weight``: float32 (R,), positive, summing to R.
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled, logs = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            out, log = self._label_and_sample_image(proposals_per_image, targets_per_image)
            sampled.append(out)
            logs.append(log)
        self._log(logs)
        return sampled

    def _label_and_sample_image(self, proposals: Instances, targets: Instances):
        boxes = proposals.proposal_boxes
        num_gt = len(targets)
        gt_iou = pairwise_iou(targets.gt_boxes, boxes)  # (G, E)
        matched_idxs, matched_labels = self.proposal_matcher(gt_iou)
        # Labels as in StandardROIHeads._sample_proposals: num_classes = background, -1 = ignored.
        if num_gt > 0:
            gt_classes = targets.gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
            # IoU with the matched (= best) ground truth, without a second max over gt_iou
            iou_gt = gt_iou.gather(0, matched_idxs[None]).squeeze(0)
        else:
            gt_classes = torch.full_like(matched_idxs, self.num_classes)
            iou_gt = gt_iou.new_zeros(len(proposals))
        is_pos = (gt_classes >= 0) & (gt_classes != self.num_classes)
        is_neg = gt_classes == self.num_classes
        pos = torch.nonzero(is_pos).flatten()
        neg = torch.nonzero(is_neg).flatten()
        iou_pn, iou_pe = overlaps_among_examples(
            pairwise_iou(boxes[pos], boxes), is_pos, is_neg, pe_with=self.pe_with
        )
        examples = ImageExamples(pos=pos, neg=neg, iou_pn=iou_pn, iou_pe=iou_pe, iou_gt=iou_gt)

        # How many of each: Detectron2's subsample_labels rule.
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), pos.numel())
        num_neg = min(self.batch_size_per_image - num_pos, neg.numel())
        pos_keep = self.positive_sampler(examples, "positive", num_pos)
        neg_keep = self.negative_sampler(examples, "negative", num_neg)
        sampled_idxs = torch.cat([pos[pos_keep], neg[neg_keep]])

        out = proposals[sampled_idxs]
        out.gt_classes = gt_classes[sampled_idxs]
        if num_gt > 0:
            sampled_targets = matched_idxs[sampled_idxs]
            for name, value in targets.get_fields().items():
                if name.startswith("gt_") and not out.has(name):
                    out.set(name, value[sampled_targets])
        is_fg = torch.arange(sampled_idxs.numel(), device=sampled_idxs.device) < pos_keep.numel()
        out.set(
            WEIGHT_FIELD,
            best_positive_weights(  # ε re-weighting (§3.2)
                iou_gt[sampled_idxs],
                matched_idxs[sampled_idxs],
                is_fg,
                num_gt,
                self.epsilon,
                target=self.epsilon_target,
                # the appended ground truths are the last num_gt examples
                is_gt=sampled_idxs >= len(proposals) - num_gt if self.proposal_append_gt else None,
            ),
        )
        log = {
            "num_fg": pos_keep.numel(),
            "num_bg": neg_keep.numel(),
            "iou_pn_sampled": iou_pn[neg_keep],
            "iou_pn_all": iou_pn,
            "iou_pe_sampled": iou_pe[pos_keep],
            "iou_gn_sampled": iou_gt[neg[neg_keep]],
            "neg_bins": bin_indices(iou_pn, self.log_num_bins, self.log_interval_max)[neg_keep],
            "num_reweighted": int((out.get(WEIGHT_FIELD) > out.get(WEIGHT_FIELD).min()).sum())
            if self.epsilon > 1 and len(out)
            else 0,
        }
        return out, log

    def _log(self, logs: List[Dict]) -> None:
        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", np.mean([x["num_fg"] for x in logs]))
        storage.put_scalar("roi_head/num_bg_samples", np.mean([x["num_bg"] for x in logs]))
        sampled = torch.cat([x["iou_pn_sampled"] for x in logs]).float()
        candidates = torch.cat([x["iou_pn_all"] for x in logs]).float()
        pe = torch.cat([x["iou_pe_sampled"] for x in logs]).float()
        gn = torch.cat([x["iou_gn_sampled"] for x in logs]).float()
        prefix = "overlap_sampler/"
        if sampled.numel():
            storage.put_scalar(prefix + "neg_iou_pn_mean", sampled.mean().item())
            storage.put_scalar(prefix + "neg_iou_gn_mean", gn.mean().item())
            storage.put_scalar(
                prefix + "neg_frac_above_thresh", (sampled >= self.threshold).float().mean().item()
            )
        if candidates.numel():
            storage.put_scalar(prefix + "neg_candidates_iou_pn_mean", candidates.mean().item())
        if pe.numel():
            storage.put_scalar(prefix + "pos_iou_pe_mean", pe.mean().item())
        # Per-bin counts (bins of Eq. (2) on each image's IoU^{p,n}), averaged over the images.
        counts = torch.zeros(self.log_num_bins, dtype=torch.float64)
        for x in logs:
            counts += torch.bincount(x["neg_bins"].cpu(), minlength=self.log_num_bins).double()
        for b in range(self.log_num_bins):
            storage.put_scalar(prefix + f"neg_bin{b}", (counts[b] / max(len(logs), 1)).item())
        storage.put_scalar(
            prefix + "num_reweighted", float(np.mean([x["num_reweighted"] for x in logs]))
        )


@ROI_HEADS_REGISTRY.register()
class OverlapSamplerROIHeads(OverlapSamplerMixin, StandardROIHeads):
    """``StandardROIHeads`` trained with the Overlap Sampler (see :class:`OverlapSamplerMixin`),
    with :class:`~overlap_sampler.losses.OverlapSamplerOutputLayers` as box predictor."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = OverlapSamplerOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
