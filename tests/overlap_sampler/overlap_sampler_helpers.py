"""Small ROI-heads configs shared by the Overlap Sampler tests."""

from detectron2.config import get_cfg

import overlap_sampler


def tiny_roi_heads_cfg(*opts, batch_size_per_image: int = 12, positive_fraction: float = 0.25):
    """``OverlapSamplerROIHeads`` on one 8-channel level "p2" with a 16-d one-FC box head."""
    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "OverlapSamplerROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch_size_per_image
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = positive_fraction
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.merge_from_list(list(opts))
    return cfg
