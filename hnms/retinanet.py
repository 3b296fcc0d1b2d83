"""HashPrefilterRetinaNet: RetinaNet whose inference runs HNMS before NMS (paper §4.3)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from ._events import put_kept_fraction
from .prefilter import nms_with_hash_prefilter

__all__ = ["HashPrefilterRetinaNet"]


@META_ARCH_REGISTRY.register()
class HashPrefilterRetinaNet(RetinaNet):
    """RetinaNet with a per-class HNMS pre-filter (α = 0.73, K) before its per-class NMS.

    Training is RetinaNet's; only ``inference_single_image`` changes. Other one-stage models can
    call :func:`hnms.nms_with_hash_prefilter` in the same place.
    """

    @configurable
    def __init__(self, *, prefilter_alpha: float = 0.73, prefilter_num_hashes: int = 1, **kwargs):
        """
        Args:
            prefilter_alpha: α of the pre-filter (§4.3: 0.73).
            prefilter_num_hashes: K of Eq. (16) for the pre-filter.
            kwargs: the arguments of detectron2's RetinaNet.
        """
        super().__init__(**kwargs)
        self.prefilter_alpha = float(prefilter_alpha)
        self.prefilter_num_hashes = int(prefilter_num_hashes)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["prefilter_alpha"] = cfg.MODEL.HNMS.PREFILTER.ALPHA
        ret["prefilter_num_hashes"] = cfg.MODEL.HNMS.PREFILTER.NUM_HASHES
        return ret

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """Decode the top candidates of every level, then HNMS + NMS per class.

        Returns Instances with pred_boxes, scores, pred_classes (at most
        ``max_detections_per_image``), as RetinaNet's.
        """
        pred = self._decode_multi_level_predictions(
            anchors,
            box_cls,
            box_delta,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        keep = nms_with_hash_prefilter(
            pred.pred_boxes.tensor,
            pred.scores,
            pred.pred_classes,
            self.test_nms_thresh,
            self.prefilter_alpha,
            self.prefilter_num_hashes,
        )
        put_kept_fraction("hnms/retinanet_kept_fraction", len(pred), len(keep))
        return pred[keep[: self.max_detections_per_image]]
