"""Optional HNMS pre-filter before the ROI heads' per-class NMS (§4.3's recipe on two stages)."""

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from d2kit.composed import ComposedOutputLayers
from d2kit.suppression import NMS, Suppression, fast_rcnn_detections

from .config import check_hnms_config
from .suppression import HashPrefilter

__all__ = [
    "HashPrefilterFastRCNNOutputLayers",
    "HashPrefilterROIHeads",
    "hash_prefiltered_detections",
]

_LOG_NAME = "hnms/roi_heads_kept_fraction"


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
    suppression = Suppression(NMS(), HashPrefilter(alpha, num_hashes, log_name=_LOG_NAME))
    return fast_rcnn_detections(
        boxes, scores, image_shape, score_thresh, nms_thresh, topk_per_image, suppression
    )


class HashPrefilterFastRCNNOutputLayers(ComposedOutputLayers):
    """FastRCNNOutputLayers whose ``inference`` runs HNMS (α, K) before the per-class NMS: the
    composed predictor with the suppression "hnms" pre-filter + "nms"."""

    @configurable
    def __init__(self, *, prefilter_alpha: float = 0.73, prefilter_num_hashes: int = 1, **kwargs):
        prefilter = HashPrefilter(prefilter_alpha, prefilter_num_hashes, log_name=_LOG_NAME)
        super().__init__(detection_suppression=Suppression(NMS(), prefilter), **kwargs)
        self.prefilter_alpha = prefilter.alpha
        self.prefilter_num_hashes = prefilter.num_hashes

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_hnms_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["prefilter_alpha"] = cfg.MODEL.HNMS.PREFILTER.ALPHA
        ret["prefilter_num_hashes"] = cfg.MODEL.HNMS.PREFILTER.NUM_HASHES
        return ret


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
