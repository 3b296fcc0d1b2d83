"""Rank-NMS inference: per-class suppression ordered by the fused score of Eq. (4).

This takes the place of Detectron2's ``fast_rcnn_inference`` in the R-CNN heads. With β = 0
(or ``nms_score="cls"``) and hard NMS it gives exactly Detectron2's detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.structures import Boxes, Instances

from d2kit.suppression import NMS, Suppression
from hnms.soft_nms import SOFT_NMS_METHODS
from hnms.suppression import SoftNMS

from .ranking import fuse_scores

__all__ = [
    "NMS_SCORES",
    "RANK_ACTIVATIONS",
    "SCORE_THRESH_ON",
    "OUTPUT_SCORES",
    "SUPPRESSIONS",
    "RankNMSInferenceParams",
    "params_suppression",
    "rank_nms_inference",
    "rank_nms_inference_single_image",
]

NMS_SCORES = ("fused", "cls", "rank")
RANK_ACTIVATIONS = ("raw", "sigmoid")
SCORE_THRESH_ON = ("cls", "fused")
OUTPUT_SCORES = ("fused", "cls")
SUPPRESSIONS = ("nms", "soft_nms")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class RankNMSInferenceParams:
    """How detections are scored, thresholded and suppressed (``MODEL.RANK_NMS`` keys in
    brackets; thresholds from ``MODEL.ROI_HEADS``)."""

    beta: float = 0.15  # β of Eq. (4) [BETA]
    score_thresh: float = 0.05  # [ROI_HEADS.SCORE_THRESH_TEST]
    nms_thresh: float = 0.5  # [ROI_HEADS.NMS_THRESH_TEST]; N_t of linear Soft-NMS
    topk_per_image: int = 100  # [TEST.DETECTIONS_PER_IMAGE]; < 0: all
    nms_score: str = "fused"  # Table 7: fused / cls / rank [NMS_SCORE]
    fusion_score: str = "raw"  # s_r raw or sigmoid in Eq. (4) [FUSION_SCORE]
    score_thresh_on: str = "cls"  # [SCORE_THRESH_ON]
    output_score: str = "fused"  # [OUTPUT_SCORE]
    suppression: str = "nms"  # [SUPPRESSION]
    soft_nms_method: str = "linear"  # [SOFT_NMS.METHOD]
    soft_nms_sigma: float = 0.5  # [SOFT_NMS.SIGMA]
    soft_nms_score_thresh: float = 0.001  # [SOFT_NMS.SCORE_THRESH]

    def __post_init__(self):
        if isinstance(self.beta, bool) or not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta (MODEL.RANK_NMS.BETA, β) must be in [0, 1], got {self.beta!r}")
        _check_choice("nms_score (MODEL.RANK_NMS.NMS_SCORE)", self.nms_score, NMS_SCORES)
        _check_choice(
            "fusion_score (MODEL.RANK_NMS.FUSION_SCORE)", self.fusion_score, RANK_ACTIVATIONS
        )
        _check_choice(
            "score_thresh_on (MODEL.RANK_NMS.SCORE_THRESH_ON)",
            self.score_thresh_on,
            SCORE_THRESH_ON,
        )
        _check_choice(
            "output_score (MODEL.RANK_NMS.OUTPUT_SCORE)", self.output_score, OUTPUT_SCORES
        )
        _check_choice("suppression (MODEL.RANK_NMS.SUPPRESSION)", self.suppression, SUPPRESSIONS)
        if self.suppression == "soft_nms":
            _check_choice(
                "soft_nms_method (MODEL.RANK_NMS.SOFT_NMS.METHOD)",
                self.soft_nms_method,
                SOFT_NMS_METHODS,
            )
            if self.output_score != "fused":
                raise ValueError(
                    "output_score (MODEL.RANK_NMS.OUTPUT_SCORE) 'cls' is defined for hard NMS "
                    "only: Soft-NMS outputs its decayed scores. Use 'fused' or SUPPRESSION 'nms'."
                )
            if not self.soft_nms_sigma > 0:
                raise ValueError(f"soft_nms_sigma must be > 0, got {self.soft_nms_sigma!r}")
            if not self.soft_nms_score_thresh >= 0:
                raise ValueError(
                    f"soft_nms_score_thresh must be >= 0, got {self.soft_nms_score_thresh!r}"
                )

    @property
    def effective_beta(self) -> float:
        """β of the NMS score: BETA for "fused", 0 for "cls", 1 for "rank" (Table 7)."""
        return {"fused": self.beta, "cls": 0.0, "rank": 1.0}[self.nms_score]


def params_suppression(params: RankNMSInferenceParams) -> Suppression:
    """The suppression ``params`` selects (``MODEL.RANK_NMS.SUPPRESSION`` and ``SOFT_NMS``)."""
    if params.suppression == "nms":
        return Suppression(NMS())
    return Suppression(
        SoftNMS(params.soft_nms_method, params.soft_nms_sigma, params.soft_nms_score_thresh)
    )


def rank_nms_inference_single_image(
    boxes: torch.Tensor,
    probs: torch.Tensor,
    rank: torch.Tensor,
    image_shape: tuple[int, int],
    params: RankNMSInferenceParams,
    suppression: Suppression | None = None,
) -> tuple[Instances, torch.Tensor]:
    """Detections of one image.

    Args:
        boxes: float (R, K*4) per-class or (R, 4) class-agnostic regressed boxes (XYXY).
        probs: float (R, K+1) class probabilities, background last.
        rank: float (R,) raw ranking scores s_r.
        image_shape: (height, width) to clip the boxes to.
        params: scoring, thresholds and suppression.
        suppression: the per-class suppression on the NMS score (a composed model's
            ``MODEL.SUPPRESSION``: NMS, Soft-NMS, HNMS, with or without a pre-filter); None:
            ``params.suppression`` (NMS or Soft-NMS).

    Returns:
        (Instances with ``pred_boxes``, ``scores``, ``pred_classes`` and the per-detection
        ``cls_scores`` (s_c) and ``rank_scores`` (s_r as fused), the index of each detection's
        RoI). Detections are in suppression order (decreasing NMS score), at most
        ``topk_per_image``.
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
    valid = valid & torch.isfinite(rank)
    boxes, probs, rank = boxes[valid], probs[valid], rank[valid]
    roi_index = torch.nonzero(valid).flatten()

    cls = probs[:, :-1]
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    # (R, K, 4): the box of every (RoI, class); class-agnostic boxes are broadcast (no copy)
    boxes = clipped.tensor.view(-1, boxes.shape[1] // 4, 4).expand(-1, cls.shape[1], -1)

    s_r = rank.sigmoid() if params.fusion_score == "sigmoid" else rank
    fused = fuse_scores(s_r, cls, params.effective_beta)  # Eq. (4), (R, K)
    thresholded = cls if params.score_thresh_on == "cls" else fused
    mask = thresholded > params.score_thresh
    if suppression is None:
        suppression = params_suppression(params)
    if suppression.decays_scores:
        # Soft-NMS decays multiplicatively, which is only defined for scores >= 0, and outputs
        # each class's best box whatever its score: a fused score <= 0 (or below the Soft-NMS
        # score threshold) is dropped here.
        mask &= (fused > 0) & (fused >= suppression.score_threshold)
    inds = mask.nonzero()  # (N, 2): RoI, class
    boxes = boxes[mask]
    nms_scores, cls_scores, classes = fused[mask], cls[mask], inds[:, 1]

    keep, out_scores = suppression(boxes, nms_scores, classes, params.nms_thresh)
    if out_scores is None:  # hard suppression: the score is kept (fused or s_c)
        out_scores = nms_scores if params.output_score == "fused" else cls_scores
        out_scores = out_scores[keep]
    if params.topk_per_image >= 0:
        keep, out_scores = keep[: params.topk_per_image], out_scores[: params.topk_per_image]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = out_scores
    result.pred_classes = classes[keep]
    result.cls_scores = cls_scores[keep]
    result.rank_scores = s_r[inds[keep, 0]]
    return result, roi_index[inds[keep, 0]]


def rank_nms_inference(
    boxes: list[torch.Tensor],
    probs: list[torch.Tensor],
    rank: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
    params: RankNMSInferenceParams,
    suppression: Suppression | None = None,
) -> tuple[list[Instances], list[torch.Tensor]]:
    """:func:`rank_nms_inference_single_image` for each image (lists of equal length)."""
    if not len(boxes) == len(probs) == len(rank) == len(image_shapes):
        raise ValueError("boxes, probs, rank and image_shapes must have one entry per image")
    if suppression is None:
        suppression = params_suppression(params)
    results = [
        rank_nms_inference_single_image(b, p, r, shape, params, suppression)
        for b, p, r, shape in zip(boxes, probs, rank, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]
