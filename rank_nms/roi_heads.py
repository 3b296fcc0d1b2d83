"""``RankNMSROIHeads`` (Faster / Mask R-CNN) and ``CascadeRankNMSROIHeads`` (Cascade R-CNN).

Both are thin adapters: the ranking subnetwork, its loss and the fused-score inference live in
:class:`~rank_nms.predictor.RankNMSOutputLayers`; the heads only swap the box predictor (of the
last stage, for Cascade) and make the box head also hand over the RoIAlign features it read.
"""

from __future__ import annotations

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    StandardROIHeads,
)

from d2kit.compose import Component, register_component, register_config_check

from .inference import rank_nms_inference
from .predictor import RankNMSOutputLayers, RankNMSPredictorMixin, also_return_pooled_features

__all__ = ["CascadeRankNMSMixin", "CascadeRankNMSROIHeads", "RankNMSMixin", "RankNMSROIHeads"]


def _pooled_shape(cfg, input_shape) -> ShapeSpec:
    """The RoIAlign output shape of the box branch (what the box head and R(·) read)."""
    channels = {input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES}
    if len(channels) != 1:
        raise ValueError(f"ROI_HEADS.IN_FEATURES must have equal channel counts, got {channels}")
    res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    return ShapeSpec(channels=channels.pop(), height=res, width=res)


class _RankNMSComponent(Component):
    """What the Standard and Cascade components share: the predictor's pooled-feature shape and
    the check of the keys a composed model cannot honour."""

    @classmethod
    def predictor_context(cls, cfg, input_shape) -> dict:
        return {"pooled_shape": _pooled_shape(cfg, input_shape)}

    @classmethod
    def check_composed_config(cls, cfg) -> None:
        _check_output_score(cfg)


@register_component("ROI_HEADS", "SCORING", "rank_nms", base=StandardROIHeads)
class RankNMSMixin(_RankNMSComponent):
    """The Rank-NMS subnetwork (Tan et al., ICCV 2019) on ``StandardROIHeads``.

    Training adds ``loss_rank`` (Eq. (2) over Algorithm 1's pairs) to the box losses, computed on
    the sampled RoIs of ``label_and_sample_proposals`` (``MODEL.RANK_NMS.TRAIN_ON``). At test
    time the box predictor suppresses per class by the fused score s = β·s_r + (1 − β)·s_c
    (Eq. (4)); with ``MASK_ON`` the masks are predicted on the survivors, as in Detectron2.
    Everything else (proposal sampling, box/mask heads) is Detectron2's.

    The component of ``MODEL.COMPOSE.ROI_HEADS.SCORING = "rank_nms"``: the box predictor gets
    :class:`~rank_nms.predictor.RankNMSPredictorMixin`, and the box head hands it the RoIAlign
    features it read (a forward hook, hence the claim on ``box_head``: no other component may
    change what the box head returns).
    """

    claims = ("box_head",)
    predictor_components = (RankNMSPredictorMixin,)

    @configurable
    def __init__(self, **kwargs):
        """Arguments of ``StandardROIHeads``; ``box_predictor`` must have the
        :class:`~rank_nms.predictor.RankNMSPredictorMixin` (e.g. ``RankNMSOutputLayers``)."""
        super().__init__(**kwargs)
        _check_predictor(self.box_predictor, "box_predictor")
        self.box_head.register_forward_hook(also_return_pooled_features)


@ROI_HEADS_REGISTRY.register()
class RankNMSROIHeads(RankNMSMixin, StandardROIHeads):
    """``StandardROIHeads`` with the Rank-NMS subnetwork (see :class:`RankNMSMixin`) and
    :class:`~rank_nms.predictor.RankNMSOutputLayers` as box predictor, which suppresses as
    ``MODEL.RANK_NMS.SUPPRESSION`` says."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = RankNMSOutputLayers(
            cfg, ret["box_head"].output_shape, pooled_shape=_pooled_shape(cfg, input_shape)
        )
        return ret


@register_component("ROI_HEADS", "SCORING", "rank_nms", base=CascadeROIHeads)
class CascadeRankNMSMixin(_RankNMSComponent):
    """The Rank-NMS subnetwork on the last stage of ``CascadeROIHeads``.

    The paper does not say where the ranking head sits in Cascade R-CNN; it is on the last stage
    here, trained on that stage's relabelled RoIs (IoU with the ground truth of the boxes
    regressed by stage 2), and at test time it scores the RoIs whose class probabilities are
    averaged over the stages and whose boxes the last stage regresses, as in Detectron2. The
    paper's footnote sets the positive fraction of each stage to 0.5
    (``ROI_HEADS.POSITIVE_FRACTION: 0.5`` in ``configs/RankNMS/``).

    The component of ``MODEL.COMPOSE.ROI_HEADS.SCORING = "rank_nms"`` in
    ``ComposedCascadeROIHeads``: it owns Cascade's inference (``_forward_box``, where Cascade
    suppresses) and applies the last predictor's suppression to the fused score.
    """

    claims = ("_forward_box", "box_heads")
    applies_suppression = True
    predictor_components = (RankNMSPredictorMixin,)

    @configurable
    def __init__(self, **kwargs):
        """Arguments of ``CascadeROIHeads``; the last of ``box_predictors`` must have the
        :class:`~rank_nms.predictor.RankNMSPredictorMixin`."""
        super().__init__(**kwargs)
        _check_predictor(self.box_predictor[-1], "box_predictors[-1]")
        self.box_predictor[-1].rank_only_where_needed = False  # thresholds see averaged scores
        self.box_head[-1].register_forward_hook(also_return_pooled_features)

    def _forward_box(self, features, proposals, targets=None):
        if self.training:  # losses: per stage, as in CascadeROIHeads (loss_rank_stage2)
            return super()._forward_box(features, proposals, targets)
        # Test: the stages run as in CascadeROIHeads; only the final suppression differs (the
        # parent calls fast_rcnn_inference directly, so this path has no narrower hook).
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        probs_per_stage, boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            probs_per_stage.append(self.box_predictor[k].predict_probs(predictions, proposals))
        # The same averaging arithmetic as CascadeROIHeads, so that β = 0 matches it exactly.
        probs = [
            sum(list(per_image)) * (1.0 / self.num_cascade_stages)
            for per_image in zip(*probs_per_stage)
        ]
        rank = predictions[2].split([p.shape[0] for p in probs])  # sizes: traceable values
        last = self.box_predictor[-1]
        pred_instances, _ = rank_nms_inference(
            boxes,
            probs,
            rank,
            image_sizes,
            last.inference_params(),
            suppression=getattr(last, "detection_suppression", None),
        )
        return pred_instances


@ROI_HEADS_REGISTRY.register()
class CascadeRankNMSROIHeads(CascadeRankNMSMixin, CascadeROIHeads):
    """``CascadeROIHeads`` with the Rank-NMS subnetwork on the last stage (see
    :class:`CascadeRankNMSMixin`), suppressing as ``MODEL.RANK_NMS.SUPPRESSION`` says."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        last = ret["box_predictors"][-1]
        ret["box_predictors"][-1] = RankNMSOutputLayers(
            cfg,
            ret["box_heads"][-1].output_shape,
            pooled_shape=_pooled_shape(cfg, input_shape),
            box2box_transform=last.box2box_transform,
        )
        return ret


def _check_predictor(predictor, name: str) -> None:
    if not isinstance(predictor, RankNMSPredictorMixin):
        raise TypeError(
            f"{name} must be a rank_nms.RankNMSOutputLayers (the Rank-NMS heads need its "
            f"ranking subnetwork), got {type(predictor).__name__}"
        )


def _check_output_score(cfg) -> None:
    """In a composed model the suppression is MODEL.SUPPRESSION's: OUTPUT_SCORE "cls" (the
    class score of each kept box) is defined for a hard suppression only."""
    method = cfg.MODEL.SUPPRESSION.METHOD
    if cfg.MODEL.RANK_NMS.OUTPUT_SCORE == "cls" and method == "soft_nms":
        raise ValueError(
            "MODEL.RANK_NMS.OUTPUT_SCORE = 'cls' is defined for a hard suppression only, but "
            "MODEL.SUPPRESSION.METHOD = 'soft_nms' outputs its decayed scores; set OUTPUT_SCORE "
            "'fused' or METHOD 'nms' / 'hnms'"
        )


def check_single_method_keys(cfg) -> None:
    """Raise a ValueError for MODEL.RANK_NMS.SUPPRESSION / SOFT_NMS.* set where no single-method
    Rank-NMS head reads them (a composed model reads MODEL.SUPPRESSION instead)."""
    if "RANK_NMS" not in cfg.MODEL or cfg.MODEL.ROI_HEADS.NAME in _SINGLE_METHOD_HEADS:
        return
    rc = cfg.MODEL.RANK_NMS
    for key, value, default in (
        ("SUPPRESSION", rc.SUPPRESSION, "nms"),
        ("SOFT_NMS.METHOD", rc.SOFT_NMS.METHOD, "linear"),
        ("SOFT_NMS.SIGMA", rc.SOFT_NMS.SIGMA, 0.5),
        ("SOFT_NMS.SCORE_THRESH", rc.SOFT_NMS.SCORE_THRESH, 0.001),
    ):
        if value != default:
            raise ValueError(
                f"MODEL.RANK_NMS.{key} = {value!r} is read only by "
                f"{' / '.join(_SINGLE_METHOD_HEADS)}, not by MODEL.ROI_HEADS.NAME = "
                f"{cfg.MODEL.ROI_HEADS.NAME!r}: a composed model suppresses as "
                "MODEL.SUPPRESSION.METHOD / PREFILTER say (Soft-NMS parameters in "
                f"MODEL.HNMS.SOFT_NMS); leave MODEL.RANK_NMS.{key} at {default!r}"
            )


_SINGLE_METHOD_HEADS = ("RankNMSROIHeads", "CascadeRankNMSROIHeads")
register_config_check(check_single_method_keys)
