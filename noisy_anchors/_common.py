"""Helpers shared by the registered adapters (settings, argument checks and event logging)."""

from __future__ import annotations

from detectron2.utils.events import get_event_storage

from .assignment import TopNMatcher
from .cleanliness import VARIANTS

__all__ = [
    "NoisyAnchorsSettings",
    "noisy_kwargs_from_config",
    "check_noisy_args",
    "log_noisy_stats",
]


def check_noisy_args(alpha: float, gamma: float, variant: str, eps: float) -> None:
    """Raise ValueError for an α outside [0, 1], a negative γ, an unknown variant or bad ε."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"cleanliness_alpha (MODEL.NOISY_ANCHORS.ALPHA) must be in [0, 1], got {alpha!r}"
        )
    if not gamma >= 0.0:
        raise ValueError(f"reweight_gamma (MODEL.NOISY_ANCHORS.GAMMA) must be >= 0, got {gamma!r}")
    if variant not in VARIANTS:
        raise ValueError(
            "noisy_variant (MODEL.NOISY_ANCHORS.VARIANT) must be one of "
            f"{VARIANTS}, got {variant!r}"
        )
    if not 0.0 < eps < 1.0:
        raise ValueError(f"reweight_eps (MODEL.NOISY_ANCHORS.EPS) must be in (0, 1), got {eps!r}")


def noisy_kwargs_from_config(cfg) -> dict:
    """The adapters' keyword arguments read from ``cfg.MODEL.NOISY_ANCHORS``."""
    na = cfg.MODEL.NOISY_ANCHORS
    # fmt: off
    return {
        "anchor_matcher":    TopNMatcher(na.TOPN),  # Alg. 1 lines 2-6
        "cleanliness_alpha": na.ALPHA,
        "reweight_gamma":    na.GAMMA,
        "noisy_variant":     na.VARIANT,
        "soft_labels":       na.SOFT_LABELS,
        "reweighting":       na.REWEIGHTING,
        "reweight_eps":      na.EPS,
    }
    # fmt: on


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
    target, mean and max re-weighting factor r (over the positives of the batch).
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
