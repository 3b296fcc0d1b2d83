"""Noisy Anchors (Li et al., CVPR 2020): cleanliness-based soft labels and sample re-weighting.

Public API: :func:`cleanliness` (Eq. 3), :func:`reweighting` (Eq. 4), the top-N assignment
(:func:`topn_anchor_assignment`, :class:`TopNMatcher`), the losses, the registered
``NoisyAnchorsRetinaNet`` (META_ARCH) and ``NoisyAnchorsRPN`` (PROPOSAL_GENERATOR), and
:func:`add_noisy_anchors_config` (keys under ``MODEL.NOISY_ANCHORS``).
"""

from .assignment import TopNMatcher, topn_anchor_assignment
from .cleanliness import (
    VARIANTS,
    cleanliness,
    released_reweighting,
    released_soft_labels,
    reweighting,
    soft_labels_and_weights,
)
from .config import add_noisy_anchors_config, check_noisy_anchors_config
from .losses import (
    box_regression_loss_per_anchor,
    localization_accuracy,
    noisy_anchors_dense_losses,
    soft_sigmoid_focal_loss,
)
from .retinanet import NoisyAnchorsRetinaNet
from .rpn import NoisyAnchorsRPN

__all__ = [
    "VARIANTS",
    "NoisyAnchorsRPN",
    "NoisyAnchorsRetinaNet",
    "TopNMatcher",
    "add_noisy_anchors_config",
    "check_noisy_anchors_config",
    "box_regression_loss_per_anchor",
    "cleanliness",
    "localization_accuracy",
    "noisy_anchors_dense_losses",
    "released_reweighting",
    "released_soft_labels",
    "reweighting",
    "soft_labels_and_weights",
    "soft_sigmoid_focal_loss",
    "topn_anchor_assignment",
]
