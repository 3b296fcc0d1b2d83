"""Rank-NMS (Tan et al., *Learning to Rank Proposals for Object Detection*, ICCV 2019).

A ranking subnetwork R(·) beside the box head learns to order the RoIs by their IoU with the
ground truth (pairwise hinge, Eq. (2), on pairs sampled after splitting the RoIs into IoU levels,
Eq. (3) and Algorithm 1); NMS then sorts by s = β·s_r + (1 − β)·s_c (Eq. (4)).

Importing the package registers ``RankNMSROIHeads`` and ``CascadeRankNMSROIHeads`` in
``ROI_HEADS_REGISTRY``. The algorithms are plain functions (:mod:`rank_nms.ranking`) that
``ref_nms`` reuses for its ranking loss.
"""

from .config import add_rank_nms_config
from .inference import RankNMSInferenceParams, rank_nms_inference, rank_nms_inference_single_image
from .predictor import (
    RankHead,
    RankLossParams,
    RankNMSOutputLayers,
    RankNMSPredictorMixin,
    also_return_pooled_features,
)
from .ranking import (
    LOSS_NORMALIZATIONS,
    full_pairs,
    fuse_scores,
    num_iou_levels,
    quantize_iou,
    ranking_loss,
    sample_pairs,
)
from .roi_heads import CascadeRankNMSMixin, CascadeRankNMSROIHeads, RankNMSMixin, RankNMSROIHeads

__all__ = [k for k in globals().keys() if not k.startswith("_")]
