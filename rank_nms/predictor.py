"""The ranking subnetwork R(·) and the box predictor that trains it and fuses its score.

``RankNMSOutputLayers`` is Detectron2's ``FastRCNNOutputLayers`` plus:

- ``rank_head``: R(·) of §3.1 / Fig. 2, RoIAlign features → NUM_FC × FC (ReLU) → one
  class-agnostic score per RoI, parallel to the box head;
- ``losses``: the box losses of the parent plus ``loss_rank``, Eq. (2) over the pairs of
  Algorithm 1 (or the variants of ``MODEL.RANK_NMS.PAIR_SAMPLING``);
- ``inference``: per-class NMS ordered by the fused score of Eq. (4)
  (:func:`rank_nms.inference.rank_nms_inference`).

Its input is ``(box_features, pooled_features)``: the box head's output and the RoIAlign output
the box head read (the ROI heads make the box head also return its input; see
:func:`also_return_pooled_features`). Predictions are ``(scores, proposal_deltas, rank_scores)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads import FastRCNNConvFCHead
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from d2kit.compose import Component
from d2kit.composed import ComposedOutputLayers

from .inference import (
    RANK_ACTIVATIONS,
    RankNMSInferenceParams,
    _check_choice,
    rank_nms_inference,
)
from .ranking import (
    LOSS_NORMALIZATIONS,
    full_pairs,
    num_iou_levels,
    quantize_iou,
    ranking_loss,
    sample_pairs,
)

__all__ = [
    "PAIR_SAMPLINGS",
    "RankHead",
    "RankLossParams",
    "RankNMSOutputLayers",
    "RankNMSPredictorMixin",
    "also_return_pooled_features",
]

PAIR_SAMPLINGS = ("hard", "all_levels", "full")
SHORT_LEVELS = ("take_all", "skip")
TRAIN_ON = ("sampled", "foreground")
PAIR_GROUPINGS = ("image", "gt")
TARGET_BOXES = ("proposal", "regressed")


class RankHead(nn.Module):
    """R(·): pooled RoI features (R, C, H, W) → ranking score (R,) (§3.1, Fig. 2).

    Hidden layers are Detectron2's FC box head (Xavier-filled, ReLU); the output layer is a
    Linear(FC_DIM, 1) initialised N(0, ``output_init_std``) with bias 0 (§4.1). The bias gets no
    gradient from the pairwise loss, which depends only on score differences.
    """

    def __init__(
        self, input_shape: ShapeSpec, num_fc: int = 2, fc_dim: int = 1024, output_init_std=0.01
    ):
        super().__init__()
        if isinstance(num_fc, bool) or int(num_fc) != num_fc or num_fc < 1:
            raise ValueError(f"num_fc (MODEL.RANK_NMS.HEAD.NUM_FC) must be >= 1, got {num_fc!r}")
        if isinstance(fc_dim, bool) or int(fc_dim) != fc_dim or fc_dim < 1:
            raise ValueError(f"fc_dim (MODEL.RANK_NMS.HEAD.FC_DIM) must be >= 1, got {fc_dim!r}")
        if not output_init_std >= 0:
            raise ValueError(f"output_init_std must be >= 0, got {output_init_std!r}")
        self.hidden = FastRCNNConvFCHead(input_shape, conv_dims=[], fc_dims=[int(fc_dim)] * num_fc)
        out_dim = int(fc_dim)
        self.rank_score = nn.Linear(out_dim, 1)
        nn.init.normal_(self.rank_score.weight, std=output_init_std)
        nn.init.constant_(self.rank_score.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rank_score(self.hidden(x)).squeeze(1)


def also_return_pooled_features(module: nn.Module, args, output):
    """Forward hook for a box head: return ``(box_features, pooled_features)``.

    The rank head reads the same RoIAlign output as the box head (Fig. 2 draws the two heads
    on identical "ROI Align 7*7*256" blocks), without copying Detectron2's ``_forward_box``.
    """
    return output, args[0]


@dataclass(frozen=True)
class RankLossParams:
    """How the ranking loss is trained (``MODEL.RANK_NMS`` keys in brackets)."""

    margin: float = 0.5  # α [MARGIN]
    weight: float = 1.0  # [LOSS_WEIGHT]
    iou_origin: float = 0.5  # Eq. (3) [IOU_ORIGIN]
    level_width: float = 0.05  # Eq. (3) [LEVEL_WIDTH]
    top_h: int = 100  # h of Algorithm 1 [TOP_H]
    pair_sampling: str = "hard"  # [PAIR_SAMPLING]
    short_levels: str = "take_all"  # [SHORT_LEVELS]
    train_on: str = "sampled"  # [TRAIN_ON]
    pair_grouping: str = "image"  # [PAIR_GROUPING]
    normalization: str = "pairs"  # [LOSS_NORM]
    loss_score: str = "raw"  # [LOSS_SCORE]
    target_box: str = "proposal"  # [TARGET_BOX]
    detach_features: bool = False  # [DETACH_FEATURES]

    def __post_init__(self):
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin (MODEL.RANK_NMS.MARGIN, α) must be >= 0, got {self.margin!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight (MODEL.RANK_NMS.LOSS_WEIGHT) must be >= 0, got {self.weight}")
        num_iou_levels(self.iou_origin, self.level_width)  # validates both
        if isinstance(self.top_h, bool) or int(self.top_h) != self.top_h or self.top_h < 1:
            raise ValueError(f"top_h (MODEL.RANK_NMS.TOP_H, h) must be >= 1, got {self.top_h!r}")
        _check_choice(
            "pair_sampling (MODEL.RANK_NMS.PAIR_SAMPLING)", self.pair_sampling, PAIR_SAMPLINGS
        )
        _check_choice("short_levels (MODEL.RANK_NMS.SHORT_LEVELS)", self.short_levels, SHORT_LEVELS)
        _check_choice("train_on (MODEL.RANK_NMS.TRAIN_ON)", self.train_on, TRAIN_ON)
        _check_choice(
            "pair_grouping (MODEL.RANK_NMS.PAIR_GROUPING)", self.pair_grouping, PAIR_GROUPINGS
        )
        _check_choice(
            "normalization (MODEL.RANK_NMS.LOSS_NORM)", self.normalization, LOSS_NORMALIZATIONS
        )
        _check_choice("loss_score (MODEL.RANK_NMS.LOSS_SCORE)", self.loss_score, RANK_ACTIVATIONS)
        _check_choice("target_box (MODEL.RANK_NMS.TARGET_BOX)", self.target_box, TARGET_BOXES)


class RankNMSPredictorMixin(Component):
    """The ranking subnetwork, its loss and fused-score inference, on any box predictor.

    As a component of a composed box predictor (``MODEL.COMPOSE.ROI_HEADS.SCORING =
    "rank_nms"``) it owns ``forward`` (predictions gain the rank scores) and ``inference``
    (which applies the configured suppression to the fused score), and extends ``losses`` (adds
    ``loss_rank``) and the prediction helpers (which it hands the first two predictions).
    """

    claims = ("forward", "inference")
    extends = ("losses", "predict_boxes", "predict_probs", "predict_boxes_for_gt_classes")
    applies_suppression = True

    @configurable
    def __init__(
        self,
        *args,
        rank_head: nn.Module,
        rank_loss: RankLossParams | None = None,
        rank_inference: RankNMSInferenceParams | None = None,
        **kwargs,
    ):
        """
        Args:
            args: the box head's output shape (``input_shape`` of ``FastRCNNOutputLayers``).
            rank_head: R(·), pooled features (R, C, H, W) → (R,) (:class:`RankHead`).
            rank_loss: training of the ranking (None: the paper's defaults).
            rank_inference: scoring and suppression at test time (None: defaults); its
                thresholds are replaced by this layer's ``test_score_thresh``,
                ``test_nms_thresh`` and ``test_topk_per_image`` at each call.
            kwargs: the arguments of ``FastRCNNOutputLayers`` (and of the predictor it is mixed
                into, e.g. ``detection_suppression``: None keeps ``rank_inference``'s).
        """
        super().__init__(*args, **kwargs)
        self.rank_head = rank_head
        self.rank_loss = rank_loss or RankLossParams()
        self.rank_inference = rank_inference or RankNMSInferenceParams()
        # Cascade averages the stages' class scores before thresholding, so its last stage
        # cannot tell from its own scores which RoIs are needed (CascadeRankNMSROIHeads: False).
        self.rank_only_where_needed = True

    @classmethod
    def from_config(cls, cfg, input_shape, pooled_shape: ShapeSpec, **context):
        ret = super().from_config(cfg, input_shape, **context)
        rc = cfg.MODEL.RANK_NMS
        ret.update(
            rank_head=RankHead(
                pooled_shape,
                num_fc=rc.HEAD.NUM_FC,
                fc_dim=rc.HEAD.FC_DIM,
                output_init_std=rc.HEAD.OUTPUT_INIT_STD,
            ),
            rank_loss=RankLossParams(
                margin=rc.MARGIN,
                weight=rc.LOSS_WEIGHT,
                iou_origin=rc.IOU_ORIGIN,
                level_width=rc.LEVEL_WIDTH,
                top_h=rc.TOP_H,
                pair_sampling=rc.PAIR_SAMPLING,
                short_levels=rc.SHORT_LEVELS,
                train_on=rc.TRAIN_ON,
                pair_grouping=rc.PAIR_GROUPING,
                normalization=rc.LOSS_NORM,
                loss_score=rc.LOSS_SCORE,
                target_box=rc.TARGET_BOX,
                detach_features=rc.DETACH_FEATURES,
            ),
            rank_inference=RankNMSInferenceParams(
                beta=rc.BETA,
                nms_score=rc.NMS_SCORE,
                fusion_score=rc.FUSION_SCORE,
                score_thresh_on=rc.SCORE_THRESH_ON,
                output_score=rc.OUTPUT_SCORE,
                suppression=rc.SUPPRESSION,
                soft_nms_method=rc.SOFT_NMS.METHOD,
                soft_nms_sigma=rc.SOFT_NMS.SIGMA,
                soft_nms_score_thresh=rc.SOFT_NMS.SCORE_THRESH,
            ),
        )
        return ret

    def forward(self, x):
        """
        Args:
            x: ``(box_features, pooled_features)``: (R, D) box head output and the (R, C, H, W)
                RoIAlign output it was computed from.

        Returns:
            ``(scores (R, K+1), proposal_deltas (R, K*4 or 4), rank_scores (R,))``; rank scores
            are raw (unsquashed). At test time, when ``SCORE_THRESH_ON`` is "cls" and
            ``rank_only_where_needed`` is set, R(·) runs only on the RoIs with a class score
            above ``test_score_thresh`` (no other RoI can be output) and the others get 0: the
            same detections at a fraction of the head's cost.
        """
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError(
                "RankNMSOutputLayers expects (box_features, pooled_features); register "
                "rank_nms.predictor.also_return_pooled_features as a forward hook on the box head "
                "(RankNMSROIHeads does)."
            )
        box_features, pooled = x
        scores, proposal_deltas = super().forward(box_features)
        if self.rank_loss.detach_features:
            pooled = pooled.detach()
        if self.training or not self._rank_only_where_needed():
            return scores, proposal_deltas, self.rank_head(pooled)
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        needed = (probs[:, :-1] > self.test_score_thresh).any(dim=1)
        rank = torch.zeros_like(scores[:, 0])
        rank[needed] = self.rank_head(pooled[needed]).to(rank.dtype)  # R(·) takes 0 RoIs too
        return scores, proposal_deltas, rank

    def _rank_only_where_needed(self) -> bool:
        return self.rank_only_where_needed and self.rank_inference.score_thresh_on == "cls"

    # The parent's prediction helpers unpack (scores, deltas): hand them the first two.
    def predict_boxes(self, predictions, proposals):
        return super().predict_boxes(predictions[:2], proposals)

    def predict_probs(self, predictions, proposals):
        return super().predict_probs(predictions[:2], proposals)

    def predict_boxes_for_gt_classes(self, predictions, proposals):
        return super().predict_boxes_for_gt_classes(predictions[:2], proposals)

    def losses(self, predictions, proposals):
        """The parent's ``loss_cls`` and ``loss_box_reg``, plus ``loss_rank`` (Eq. (2) × weight).

        Proposals need ``gt_classes`` and, for images with ground truth, ``gt_boxes`` (the
        matched ground truth of every sampled RoI, background included), as Detectron2's
        ``label_and_sample_proposals`` and Cascade's relabelling provide.
        """
        scores, proposal_deltas, rank = predictions
        losses = super().losses((scores, proposal_deltas), proposals)
        losses["loss_rank"] = self.rank_loss.weight * self._ranking_loss(
            scores, proposal_deltas, rank, proposals
        )
        return losses

    def inference(self, predictions, proposals):
        """Detections by fused-score NMS (Eq. (4)); returns (instances, kept RoI indices)."""
        boxes = self.predict_boxes(predictions, proposals)
        probs = self.predict_probs(predictions, proposals)
        rank = predictions[2].split([p.shape[0] for p in probs])  # sizes: traceable values
        image_shapes = [p.image_size for p in proposals]
        return rank_nms_inference(
            boxes,
            probs,
            rank,
            image_shapes,
            self.inference_params(),
            suppression=getattr(self, "detection_suppression", None),
        )

    def inference_params(self) -> RankNMSInferenceParams:
        """``rank_inference`` with this layer's current test thresholds."""
        return dataclasses.replace(
            self.rank_inference,
            score_thresh=self.test_score_thresh,
            nms_thresh=self.test_nms_thresh,
            topk_per_image=self.test_topk_per_image,
        )

    # ----------------------------------------------------------------------------------------
    # Training targets and the loss
    # ----------------------------------------------------------------------------------------
    def _target_boxes(self, scores, proposal_deltas, proposals) -> list[Boxes]:
        """The boxes whose IoU the ranking learns: the RoIs, or their regressed boxes."""
        if self.rank_loss.target_box == "proposal":
            return [p.proposal_boxes for p in proposals]
        # Regressed: the detached box of the ground-truth class (foreground) or of the most
        # likely foreground class (background), as NMS would see it.
        num = [len(p) for p in proposals]
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        deltas = proposal_deltas.detach()
        regressed = self.box2box_transform.apply_deltas(deltas, proposal_boxes)
        if regressed.shape[1] > 4:
            gt_classes = cat([p.gt_classes for p in proposals])
            best_fg = scores.detach()[:, :-1].argmax(dim=1)
            is_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
            cls = torch.where(is_fg, gt_classes, best_fg)
            regressed = regressed.view(len(cls), -1, 4)[torch.arange(len(cls)), cls]
        return [Boxes(b) for b in regressed.split(num)]

    def _ranking_loss(self, scores, proposal_deltas, rank, proposals) -> torch.Tensor:
        p = self.rank_loss
        target_boxes = self._target_boxes(scores, proposal_deltas, proposals)
        ious, groups, images, fg = [], [], [], []
        for i, (props, boxes) in enumerate(zip(proposals, target_boxes)):
            n = len(props)
            if props.has("gt_boxes") and n:
                ious.append(matched_pairwise_iou(boxes, props.gt_boxes))
                # Boxes of one ground truth share its coordinates.
                gt_group = torch.unique(props.gt_boxes.tensor, dim=0, return_inverse=True)[1]
            else:
                ious.append(rank.new_zeros(n))
                gt_group = torch.zeros(n, dtype=torch.int64, device=rank.device)
            groups.append(gt_group)
            images.append(torch.full((n,), i, dtype=torch.int64, device=rank.device))
            gt_classes = props.gt_classes
            fg.append((gt_classes >= 0) & (gt_classes < self.num_classes))
        iou = cat(ious).to(rank.dtype).detach()
        image = cat(images)
        if p.pair_grouping == "gt":
            group = image * (max([int(g.max()) + 1 for g in groups if g.numel()] or [1])) + cat(
                groups
            )
        else:
            group = image
        selected = torch.nonzero(cat(fg)).flatten() if p.train_on == "foreground" else None
        score = rank.sigmoid() if p.loss_score == "sigmoid" else rank
        sel = selected if selected is not None else torch.arange(len(rank), device=rank.device)
        levels = quantize_iou(iou, p.iou_origin, p.level_width)
        if p.pair_sampling == "full":
            pos, neg = full_pairs(iou[sel], group[sel])
        else:
            pos, neg = sample_pairs(
                levels[sel],
                score[sel].detach(),
                None if p.pair_sampling == "all_levels" else p.top_h,
                groups=group[sel],
                skip_short_levels=p.short_levels == "skip",
            )
        pos, neg = sel[pos], sel[neg]
        loss = ranking_loss(score, pos, neg, p.margin, p.normalization, pair_groups=image[pos])
        self._log(score.detach(), levels, sel, pos, neg, len(proposals))
        return loss

    def _log(self, score, levels, sel, pos, neg, num_images) -> None:
        storage = get_event_storage()
        prefix = "rank_nms/"
        storage.put_scalar(prefix + "pairs_per_image", pos.numel() / max(num_images, 1))
        if pos.numel():
            hinge = (score[neg] - score[pos] + self.rank_loss.margin).clamp(min=0)
            storage.put_scalar(prefix + "hinge_mean", hinge.mean().item())
            storage.put_scalar(prefix + "violated_frac", (hinge > 0).float().mean().item())
        lv, sc = levels[sel], score[sel]
        for q in torch.unique(lv).tolist():
            storage.put_scalar(prefix + f"score_level{q}", sc[lv == q].mean().item())


class RankNMSOutputLayers(RankNMSPredictorMixin, ComposedOutputLayers):
    """``FastRCNNOutputLayers`` with the ranking subnetwork, its loss and fused-score NMS (the
    suppression of ``MODEL.RANK_NMS.SUPPRESSION``, unless ``detection_suppression`` is given)."""
