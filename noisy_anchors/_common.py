"""Helpers shared by the registered adapters (settings, argument checks and event logging)."""

from __future__ import annotations

import logging
import math
import numbers

from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from .assignment import TopNMatcher
from .cleanliness import VARIANTS
from .config import check_noisy_anchors_config

__all__ = [
    "HEAVY_WEIGHT_RATIO",
    "NoisyAnchorsSettings",
    "noisy_kwargs_from_config",
    "check_noisy_args",
    "log_noisy_stats",
]


#: max r / mean r above which :func:`log_noisy_stats` warns (Eq. 4 concentrates the weight).
HEAVY_WEIGHT_RATIO = 100.0


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_noisy_args(alpha: float, gamma: float, variant: str, eps: float) -> None:
    """Raise ValueError for an α outside [0, 1], a negative or non-finite γ, an unknown variant
    or an ε outside (0, 1)."""
    if not (_is_number(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(
            f"cleanliness_alpha (MODEL.NOISY_ANCHORS.ALPHA) must be in [0, 1], got {alpha!r}"
        )
    if not (_is_number(gamma) and 0.0 <= gamma < math.inf):
        raise ValueError(
            f"reweight_gamma (MODEL.NOISY_ANCHORS.GAMMA) must be finite and >= 0, got {gamma!r}"
        )
    if variant not in VARIANTS:
        raise ValueError(
            "noisy_variant (MODEL.NOISY_ANCHORS.VARIANT) must be one of "
            f"{VARIANTS}, got {variant!r}"
        )
    if not (_is_number(eps) and 0.0 < eps < 1.0):
        raise ValueError(f"reweight_eps (MODEL.NOISY_ANCHORS.EPS) must be in (0, 1), got {eps!r}")


def noisy_kwargs_from_config(cfg) -> dict:
    """The adapters' keyword arguments read from ``cfg.MODEL.NOISY_ANCHORS`` (every key checked
    first, see :func:`~noisy_anchors.config.check_noisy_anchors_config`)."""
    check_noisy_anchors_config(cfg)
    na = cfg.MODEL.NOISY_ANCHORS
    # fmt: off
    ret = {
        "cleanliness_alpha": na.ALPHA,
        "reweight_gamma":    na.GAMMA,
        "noisy_variant":     na.VARIANT,
        "soft_labels":       na.SOFT_LABELS,
        "reweighting":       na.REWEIGHTING,
        "reweight_eps":      na.EPS,
    }
    # fmt: on
    if na.ASSIGNMENT == "topn":  # "iou" keeps the matcher detectron2 built from IOU_THRESHOLDS
        ret["anchor_matcher"] = TopNMatcher(na.TOPN)  # Alg. 1 lines 2-6
    return ret


class NoisyAnchorsSettings:
    """Mixin holding the method's settings for the RetinaNet and RPN adapters."""

    def _init_noisy(self, cleanliness_alpha, reweight_gamma, noisy_variant, soft_labels,
                    reweighting, reweight_eps) -> None:  # fmt: skip
        check_noisy_args(cleanliness_alpha, reweight_gamma, noisy_variant, reweight_eps)
        self.cleanliness_alpha = float(cleanliness_alpha)
        self.reweight_gamma = float(reweight_gamma)
        self.noisy_variant = noisy_variant
        self.soft_labels = bool(soft_labels)
        self.reweighting = bool(reweighting)
        self.reweight_eps = float(reweight_eps)

    def _noisy_loss_kwargs(self) -> dict:
        """The method's arguments of ``noisy_anchors_dense_losses``."""
        return dict(
            alpha=self.cleanliness_alpha,
            gamma=self.reweight_gamma,
            variant=self.noisy_variant,
            soft_labels=self.soft_labels,
            reweight=self.reweighting,
            eps=self.reweight_eps,
        )


def log_noisy_stats(prefix: str, stats: dict, alpha: float, num_images: int) -> None:
    """Put what the method decided into the event storage under ``noisy_anchors/<prefix>...``.

    Logged: positives per image, mean loc_a, mean cls_c, mean cleanliness c (Eq. 3), mean soft
    target, mean and max re-weighting factor r and max r / mean r (over the positives of the
    batch). Eq. (4) can give one anchor ~100x the mean weight (f(x) = 1/(1-x) saturates at 1/ε);
    above ``HEAVY_WEIGHT_RATIO`` a warning is logged (at most every 5 minutes).
    """
    storage = get_event_storage()
    num_pos = stats["num_pos"]
    storage.put_scalar(f"noisy_anchors/{prefix}num_pos_anchors", num_pos / max(num_images, 1))
    if num_pos == 0:
        return
    mean_c = alpha * stats["mean_loc_a"] + (1.0 - alpha) * stats["mean_cls_c"]  # Eq. (3)
    storage.put_scalar(f"noisy_anchors/{prefix}mean_loc_a", stats["mean_loc_a"])
    storage.put_scalar(f"noisy_anchors/{prefix}mean_cls_c", stats["mean_cls_c"])
    storage.put_scalar(f"noisy_anchors/{prefix}mean_cleanliness", mean_c)
    storage.put_scalar(f"noisy_anchors/{prefix}mean_target", stats["mean_target"])
    storage.put_scalar(f"noisy_anchors/{prefix}mean_weight", stats["mean_weight"])
    storage.put_scalar(f"noisy_anchors/{prefix}max_weight", stats["max_weight"])
    ratio = stats.get("max_weight_over_mean", 0.0)
    storage.put_scalar(f"noisy_anchors/{prefix}max_weight_over_mean", ratio)
    if ratio > HEAVY_WEIGHT_RATIO:
        log_every_n_seconds(
            logging.WARNING,
            f"Noisy Anchors ({prefix or 'retinanet/'}): one positive anchor has {ratio:.0f}x the "
            f"mean weight r of Eq. (4) among {num_pos} positives (f(x) = 1/(1-x) saturates at "
            "1/MODEL.NOISY_ANCHORS.EPS for a near-perfect box); raise EPS or lower GAMMA to "
            "cap it",
            n=300,
            name="noisy_anchors",
        )
