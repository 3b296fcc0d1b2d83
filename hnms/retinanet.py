"""HashPrefilterRetinaNet: RetinaNet whose inference runs HNMS before NMS (paper §4.3) or before
Soft-NMS (Appendix C.3)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from torchvision.ops import batched_nms

from d2kit.suppression import dense_detections

from ._events import put_kept_fraction
from .config import check_hnms_config
from .ops import _check_float, _check_num_hashes
from .prefilter import nms_with_hash_prefilter, soft_nms_with_hash_prefilter
from .soft_nms import SOFT_NMS_METHODS, batched_soft_nms

__all__ = ["HashPrefilterRetinaNet"]

SUPPRESSIONS = ("nms", "soft_nms")


@META_ARCH_REGISTRY.register()
class HashPrefilterRetinaNet(RetinaNet):
    """RetinaNet with a per-class HNMS pre-filter (α = 0.73, K) before its per-class NMS or
    Soft-NMS.

    Training is RetinaNet's; only ``inference_single_image`` changes. Other one-stage models can
    call :func:`hnms.nms_with_hash_prefilter` or :func:`hnms.soft_nms_with_hash_prefilter` in the
    same place. With ``prefilter=False`` the suppression runs alone, which gives the baselines of
    the paper's Tables 2 and 4 with the same code.
    """

    @configurable
    def __init__(
        self,
        *,
        prefilter_alpha: float = 0.73,
        prefilter_num_hashes: int = 1,
        prefilter: bool = True,
        suppression: str = "nms",
        soft_nms_method: str = "gaussian",
        soft_nms_sigma: float = 0.5,
        soft_nms_score_thresh: float = 0.001,
        **kwargs,
    ):
        """
        Args:
            prefilter_alpha: α of the pre-filter (§4.3: 0.73).
            prefilter_num_hashes: K of Eq. (16) for the pre-filter.
            prefilter: run the pre-filter (False: the suppression alone).
            suppression: "nms" (NMS at ``test_nms_thresh``) or "soft_nms" (Soft-NMS, whose
                decayed scores become the detection scores).
            soft_nms_method, soft_nms_sigma, soft_nms_score_thresh: Soft-NMS's decay ("gaussian"
                or "linear" with N_t = ``test_nms_thresh``), σ and score threshold.
            kwargs: the arguments of detectron2's RetinaNet.
        """
        super().__init__(**kwargs)
        if suppression not in SUPPRESSIONS:
            raise ValueError(
                f"suppression (MODEL.HNMS.PREFILTER.SUPPRESSION) must be one of {SUPPRESSIONS}, "
                f"got {suppression!r}"
            )
        if soft_nms_method not in SOFT_NMS_METHODS:
            raise ValueError(
                f"soft_nms_method (MODEL.HNMS.SOFT_NMS.METHOD) must be one of {SOFT_NMS_METHODS}, "
                f"got {soft_nms_method!r}"
            )
        self.prefilter_alpha = _check_float(prefilter_alpha, "prefilter_alpha", 0.0, 1.0)
        self.prefilter_num_hashes = _check_num_hashes(prefilter_num_hashes)
        _check_float(soft_nms_sigma, "soft_nms_sigma", 0.0)
        if not _check_float(soft_nms_score_thresh, "soft_nms_score_thresh") >= 0:
            raise ValueError(f"soft_nms_score_thresh must be >= 0, got {soft_nms_score_thresh}")
        self.prefilter = bool(prefilter)
        self.suppression = suppression
        self.soft_nms_args = dict(
            method=soft_nms_method,
            sigma=float(soft_nms_sigma),
            iou_threshold=float(self.test_nms_thresh),
            score_threshold=float(soft_nms_score_thresh),
        )

    @classmethod
    def from_config(cls, cfg):
        check_hnms_config(cfg)  # every MODEL.HNMS key, with its valid range, at model build
        ret = super().from_config(cfg)
        ret["prefilter_alpha"] = cfg.MODEL.HNMS.PREFILTER.ALPHA
        ret["prefilter_num_hashes"] = cfg.MODEL.HNMS.PREFILTER.NUM_HASHES
        ret["prefilter"] = cfg.MODEL.HNMS.PREFILTER.ENABLED
        ret["suppression"] = cfg.MODEL.HNMS.PREFILTER.SUPPRESSION
        ret["soft_nms_method"] = cfg.MODEL.HNMS.SOFT_NMS.METHOD
        ret["soft_nms_sigma"] = cfg.MODEL.HNMS.SOFT_NMS.SIGMA
        ret["soft_nms_score_thresh"] = cfg.MODEL.HNMS.SOFT_NMS.SCORE_THRESH
        return ret

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """Decode the top candidates of every level, then (HNMS +) NMS or Soft-NMS per class.

        Returns Instances with pred_boxes, scores, pred_classes (at most
        ``max_detections_per_image``), as RetinaNet's; with Soft-NMS the scores are the decayed
        ones.
        """
        return dense_detections(self, anchors, box_cls, box_delta, image_size, self._suppress)

    def _suppress(self, boxes, scores, classes):
        """(keep, decayed scores or None) of this model's suppression, from its attributes."""
        new_scores = None
        if self.suppression == "soft_nms":
            if self.prefilter:
                keep, new_scores = soft_nms_with_hash_prefilter(
                    boxes,
                    scores,
                    classes,
                    self.prefilter_alpha,
                    self.prefilter_num_hashes,
                    **self.soft_nms_args,
                )
            else:
                keep, new_scores = batched_soft_nms(boxes, scores, classes, **self.soft_nms_args)
        elif self.prefilter:
            keep = nms_with_hash_prefilter(
                boxes,
                scores,
                classes,
                self.test_nms_thresh,
                self.prefilter_alpha,
                self.prefilter_num_hashes,
            )
        else:
            keep = batched_nms(boxes, scores, classes, self.test_nms_thresh)
        if self.prefilter:
            put_kept_fraction("hnms/retinanet_kept_fraction", boxes.shape[0], keep.shape[0])
        return keep, new_scores
