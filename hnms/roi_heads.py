"""Optional HNMS pre-filter before the ROI heads' per-class NMS (§4.3's recipe on two stages)."""

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from ._events import put_kept_fraction
from .config import check_hnms_config
from .ops import _check_float, _check_num_hashes
from .prefilter import nms_with_hash_prefilter

__all__ = [
    "HashPrefilterFastRCNNOutputLayers",
    "HashPrefilterROIHeads",
    "hash_prefiltered_detections",
]


def hash_prefiltered_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    alpha: float,
    num_hashes: int,
):
    """Per-image detections of a Fast R-CNN box predictor with HNMS before the per-class NMS.

    Args:
        boxes: [R, 4 * C] or [R, 4] predicted boxes; scores: [R, C + 1] class probabilities
            (last column background); image_shape: (h, w) for clipping.
        score_thresh, nms_thresh, topk_per_image: as detectron2's fast_rcnn_inference.
        alpha, num_hashes: α and K of the pre-filter.
    Returns:
        (Instances with pred_boxes, scores, pred_classes; int64 [D] index of the proposal of
        every detection)
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(valid.all()):
        boxes, scores = boxes[valid], scores[valid]
    proposal_ids = torch.nonzero(valid).view(-1)
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_reg_classes, 4)
    candidates = scores > score_thresh  # [R, C]
    ids = torch.nonzero(candidates)  # (proposal, class)
    boxes = boxes[ids[:, 0], 0] if num_reg_classes == 1 else boxes[candidates]
    scores = scores[candidates]
    keep = nms_with_hash_prefilter(boxes, scores, ids[:, 1], nms_thresh, alpha, num_hashes)
    put_kept_fraction("hnms/roi_heads_kept_fraction", len(scores), len(keep))
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = ids[keep, 1]
    return result, proposal_ids[ids[keep, 0]]


class HashPrefilterFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose ``inference`` runs HNMS (α, K) before the per-class NMS."""

    @configurable
    def __init__(self, *, prefilter_alpha: float = 0.73, prefilter_num_hashes: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.prefilter_alpha = _check_float(prefilter_alpha, "prefilter_alpha", 0.0, 1.0)
        self.prefilter_num_hashes = _check_num_hashes(prefilter_num_hashes)

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_hnms_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["prefilter_alpha"] = cfg.MODEL.HNMS.PREFILTER.ALPHA
        ret["prefilter_num_hashes"] = cfg.MODEL.HNMS.PREFILTER.NUM_HASHES
        return ret

    def inference(self, predictions, proposals):
        """Same inputs and outputs as FastRCNNOutputLayers.inference."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        out = [
            hash_prefiltered_detections(
                b,
                s,
                p.image_size,
                self.test_score_thresh,
                self.test_nms_thresh,
                self.test_topk_per_image,
                self.prefilter_alpha,
                self.prefilter_num_hashes,
            )
            for b, s, p in zip(boxes, scores, proposals)
        ]
        return [r for r, _ in out], [i for _, i in out]


@ROI_HEADS_REGISTRY.register()
class HashPrefilterROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor pre-filters with HNMS when
    ``MODEL.HNMS.ROI_HEADS_PREFILTER`` is set (otherwise identical to StandardROIHeads)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        check_hnms_config(cfg)  # every MODEL.HNMS key, with its valid range, at model build
        ret = super()._init_box_head(cfg, input_shape)
        if cfg.MODEL.HNMS.ROI_HEADS_PREFILTER:
            ret["box_predictor"] = HashPrefilterFastRCNNOutputLayers(
                cfg, ret["box_head"].output_shape
            )
        return ret
