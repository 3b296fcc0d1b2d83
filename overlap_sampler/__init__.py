"""Overlap Sampler (Chen et al.): RoI-head sampling by the overlaps among examples.

Importing the package registers ``OverlapSamplerROIHeads`` in ``ROI_HEADS_REGISTRY`` and the
samplers ``OverlapSampler``, ``OverlapSamplerRandom``, ``OverlapSamplerIoUBalanced`` in
``OVERLAP_SAMPLER_REGISTRY``.
"""

from .config import add_overlap_sampler_config, check_overlap_sampler_config
from .losses import WEIGHT_FIELD, LossWeightMixin, OverlapSamplerOutputLayers
from .roi_heads import OverlapSamplerMixin, OverlapSamplerROIHeads
from .samplers import (
    OVERLAP_SAMPLER_REGISTRY,
    ImageExamples,
    OverlapSampler,
    OverlapSamplerIoUBalanced,
    OverlapSamplerRandom,
    build_overlap_sampler,
)
from .sampling import (
    STRATEGIES,
    best_positive_weights,
    bin_indices,
    overlaps_among_examples,
    sample_iou_balanced,
    sample_negatives,
    sample_positives,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
