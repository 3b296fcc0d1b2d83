"""Config keys of Noisy Anchors, under ``MODEL.NOISY_ANCHORS``."""

import numbers

from detectron2.config import CfgNode as CN

__all__ = ["ASSIGNMENTS", "add_noisy_anchors_config", "check_noisy_anchors_config"]

#: Values of MODEL.NOISY_ANCHORS.ASSIGNMENT.
ASSIGNMENTS = ("topn", "iou")


def add_noisy_anchors_config(cfg: CN) -> None:
    """Add the Noisy Anchors keys to ``cfg`` in place (read by ``NoisyAnchorsRetinaNet`` and
    ``NoisyAnchorsRPN``; plain RetinaNet / RPN ignore them)."""
    _C = cfg
    _C.MODEL.NOISY_ANCHORS = CN()
    # N: candidate positives A_pos per ground truth, the top-N anchors by IoU before refinement
    # (Alg. 1 lines 2-6). Table 4(b): N = 30 and N = 40 tie at 37.7 AP; 30 is also what the
    # authors' released configs use. No IoU thresholds: every other anchor is negative.
    _C.MODEL.NOISY_ANCHORS.TOPN = 30
    # Which anchors are the candidate positives. "topn": the top-N anchors of each ground truth
    # (Alg. 1, TOPN above). "iou": the detector's own IoU-threshold matcher
    # (MODEL.RETINANET.IOU_THRESHOLDS / MODEL.RPN.IOU_THRESHOLDS with their IOU_LABELS), with the
    # method's soft labels and re-weighting on its positives; with MODEL.RPN.IOU_THRESHOLDS [0.5]
    # and IOU_LABELS [0, 1] this is Table 5's "RPN-0.5" assignment ("RPN-0.5 + SR": also
    # SOFT_LABELS False).
    _C.MODEL.NOISY_ANCHORS.ASSIGNMENT = "topn"
    # alpha: weight of loc_a against cls_c in the cleanliness c (Eq. 3) and in r (Eq. 4).
    # Table 4(c): 0.75 is best.
    _C.MODEL.NOISY_ANCHORS.ALPHA = 0.75
    # gamma: exponent of the re-weighting factor r (Eq. 4); Table 4(a) and the paper use 1.
    # gamma = 0 makes every r equal to 1. Any finite gamma >= 0 (r is computed in log space).
    _C.MODEL.NOISY_ANCHORS.GAMMA = 1.0
    # epsilon (not in the paper): f(x) = 1/(1-x) of Eq. 4 is evaluated at min(x, 1 - epsilon),
    # so r stays finite when loc_a or cls_c reaches 1 (then f <= 1/epsilon).
    _C.MODEL.NOISY_ANCHORS.EPS = 1e-3
    # "paper": c of Eq. 3 as the soft label and r of Eq. 4 normalised to mean 1 over the
    # positives of the batch. "released": the authors' released code (per-image mean-normalised
    # terms, soft labels rescaled to [mean(loc_a), 1], loss-sum-preserving re-weighting); see
    # projects/NoisyAnchors/README.md. Use it with MODEL.RETINANET.FOCAL_LOSS_ALPHA 0.5 as shipped.
    _C.MODEL.NOISY_ANCHORS.VARIANT = "paper"
    # SL of Table 3: use the cleanliness c as the classification target of the positives (Eq. 5);
    # False: hard target 1.
    _C.MODEL.NOISY_ANCHORS.SOFT_LABELS = True
    # SR of Table 3: weight the positives' classification and regression losses by r
    # (Eqs. 5-6); False: weight 1.
    _C.MODEL.NOISY_ANCHORS.REWEIGHTING = True


def check_noisy_anchors_config(cfg: CN) -> None:
    """Raise a ValueError naming the key and its valid range for any bad value under
    ``cfg.MODEL.NOISY_ANCHORS``; called when ``NoisyAnchorsRetinaNet`` / ``NoisyAnchorsRPN`` are
    built from a config, so that a bad value fails there and not at the first iteration."""
    from ._common import check_noisy_args  # not at import: _common imports the method

    na = cfg.MODEL.NOISY_ANCHORS
    if isinstance(na.TOPN, bool) or not isinstance(na.TOPN, numbers.Integral) or na.TOPN < 1:
        raise ValueError(
            "top_n (MODEL.NOISY_ANCHORS.TOPN) must be an integer >= 1 (N of Alg. 1, the "
            f"candidate positives per ground truth), got {na.TOPN!r}"
        )
    if na.ASSIGNMENT not in ASSIGNMENTS:
        raise ValueError(
            f"MODEL.NOISY_ANCHORS.ASSIGNMENT must be one of {', '.join(ASSIGNMENTS)} (topn: Alg. "
            "1's top-N anchors per ground truth; iou: the detector's IoU-threshold matcher, e.g. "
            f"Table 5's RPN-0.5), got {na.ASSIGNMENT!r}"
        )
    for key, arg in (("SOFT_LABELS", "soft_labels"), ("REWEIGHTING", "reweighting")):
        if not isinstance(na[key], bool):
            raise ValueError(
                f"{arg} (MODEL.NOISY_ANCHORS.{key}) must be True or False, got {na[key]!r}"
            )
    check_noisy_args(na.ALPHA, na.GAMMA, na.VARIANT, na.EPS)
