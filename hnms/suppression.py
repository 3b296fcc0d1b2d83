"""HNMS and Soft-NMS as suppressions any composed head can choose (``MODEL.SUPPRESSION``).

Importing this module registers, in :mod:`d2kit.suppression`:

- method ``"hnms"``: HNMS alone. In the RPN (per level) it is HashRPN's (§4.2): α, K and the
  per-level cap P2 of ``MODEL.HNMS.RPN``; on detections (per class) α and K of
  ``MODEL.HNMS.PREFILTER`` (α = 0.73: the cell IoU bound 0.5015 of NMS@0.5).
- method ``"soft_nms"``: Soft-NMS (Bodla et al.; Appendix C.3), method, σ and score threshold of
  ``MODEL.HNMS.SOFT_NMS``; detections only (it decays probabilities; the RPN sorts logits).
- pre-filter ``"hnms"``: per-group HNMS before the method (§4.3), α and K of
  ``MODEL.HNMS.PREFILTER``.

Every one reads ``MODEL.HNMS.W0 / H0 / BX / BY`` for the first hash function and checks the
HNMS keys when the model is built. It also registers the check that the single-method keys
(``MODEL.HNMS.PREFILTER.ENABLED / SUPPRESSION``, ``MODEL.HNMS.ROI_HEADS_PREFILTER``) are not set
where no single-method class reads them.
"""

from __future__ import annotations

from d2kit.compose import register_config_check
from d2kit.suppression import (
    Prefilter,
    SuppressionMethod,
    register_prefilter,
    register_suppression,
)

from ._events import put_kept_fraction
from .config import check_hnms_config
from .ops import _ALPHA_FIX, _check_float, _check_hash_params, _check_num_hashes, batched_hnms
from .soft_nms import SOFT_NMS_METHODS, batched_soft_nms

__all__ = ["HashNMS", "HashPrefilter", "SoftNMS"]


def _hash_kwargs(hash_kwargs) -> dict:
    return {"w0": 1.0, "h0": 1.0, "bx": 0.0, "by": 0.0, **dict(hash_kwargs or {})}


class HashNMS(SuppressionMethod):
    """HNMS per group: the best box of every IoUHash cell (α, K); ignores the IoU threshold."""

    name = "hnms"

    def __init__(
        self,
        alpha: float,
        num_hashes: int = 1,
        hash_kwargs: dict | None = None,
        post_topk_per_level=(0, 0),
        log_name: str | None = None,
    ):
        """
        Args:
            alpha, num_hashes: α of Eq. (1) and K of Eq. (16).
            hash_kwargs: w0, h0, bx, by of the first hash function.
            post_topk_per_level: (train, test) P2 of §4.2, in the RPN (0: no cap).
            log_name: event-storage name of the kept fraction (None: not logged).
        """
        self.alpha = _check_float(alpha, "alpha", 0.0, 1.0, _ALPHA_FIX)
        self.num_hashes = _check_num_hashes(num_hashes)
        self.hash_kwargs = _hash_kwargs(hash_kwargs)
        _check_hash_params(self.alpha, num_hashes=self.num_hashes, **self.hash_kwargs)
        self.post_topk_per_level = tuple(int(k) for k in post_topk_per_level)
        self.log_name = log_name

    def __call__(self, boxes, scores, idxs, iou_threshold: float):
        keep = batched_hnms(boxes, scores, idxs, self.alpha, self.num_hashes, **self.hash_kwargs)
        if self.log_name:
            put_kept_fraction(self.log_name, boxes.shape[0], keep.shape[0])
        return keep, None

    def __repr__(self) -> str:
        return f"hnms(α={self.alpha}, K={self.num_hashes})"


class HashPrefilter(Prefilter):
    """HNMS (α, K) per group before the suppression method (§4.3)."""

    name = "hnms"

    def __init__(
        self,
        alpha: float = 0.73,
        num_hashes: int = 1,
        hash_kwargs: dict | None = None,
        log_name: str | None = None,
    ):
        self.alpha = _check_float(alpha, "prefilter_alpha", 0.0, 1.0, _ALPHA_FIX)
        self.num_hashes = _check_num_hashes(num_hashes)
        self.hash_kwargs = _hash_kwargs(hash_kwargs)
        _check_hash_params(self.alpha, num_hashes=self.num_hashes, **self.hash_kwargs)
        self.log_name = log_name

    def __call__(self, boxes, scores, idxs):
        pre = batched_hnms(boxes, scores, idxs, self.alpha, self.num_hashes, **self.hash_kwargs)
        if self.log_name:
            put_kept_fraction(self.log_name, boxes.shape[0], pre.shape[0])
        return pre

    def __repr__(self) -> str:
        return f"hnms(α={self.alpha}, K={self.num_hashes})"


class SoftNMS(SuppressionMethod):
    """Soft-NMS per group (:func:`hnms.batched_soft_nms`); a linear decay's N_t is the head's
    NMS threshold."""

    name = "soft_nms"
    decays_scores = True

    def __init__(self, method: str = "gaussian", sigma: float = 0.5, score_threshold=0.001):
        if method not in SOFT_NMS_METHODS:
            raise ValueError(f"soft_nms_method must be one of {SOFT_NMS_METHODS}, got {method!r}")
        self.method = method
        self.sigma = _check_float(sigma, "soft_nms_sigma", 0.0)
        self.score_threshold = _check_float(score_threshold, "soft_nms_score_thresh")
        if self.score_threshold < 0:
            raise ValueError(f"soft_nms_score_thresh must be >= 0, got {score_threshold}")

    def __call__(self, boxes, scores, idxs, iou_threshold: float):
        return batched_soft_nms(
            boxes,
            scores,
            idxs,
            method=self.method,
            sigma=self.sigma,
            iou_threshold=float(iou_threshold),
            score_threshold=self.score_threshold,
        )

    def __repr__(self) -> str:
        return f"soft_nms({self.method}, σ={self.sigma}, threshold={self.score_threshold})"


def _hash_kwargs_of(cfg) -> dict:
    h = cfg.MODEL.HNMS
    return {"w0": h.W0, "h0": h.H0, "bx": h.BX, "by": h.BY}


def _checked(cfg):
    if "HNMS" not in cfg.MODEL:
        raise ValueError(
            "MODEL.SUPPRESSION selects an HNMS suppression, whose parameters are MODEL.HNMS.*: "
            "add them with hnms.add_hnms_config(cfg)"
        )
    check_hnms_config(cfg)  # every MODEL.HNMS key, with its valid range, at model build
    return cfg.MODEL.HNMS


def _build_hnms(cfg, head: str) -> HashNMS:
    h = _checked(cfg)
    if head == "rpn":
        return HashNMS(
            h.RPN.ALPHA,
            h.RPN.NUM_HASHES,
            _hash_kwargs_of(cfg),
            (h.RPN.POST_HNMS_TOPK_PER_LEVEL_TRAIN, h.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST),
            log_name="hnms/rpn_kept_fraction",
        )
    return HashNMS(
        h.PREFILTER.ALPHA,
        h.PREFILTER.NUM_HASHES,
        _hash_kwargs_of(cfg),
        log_name="hnms/detections_kept_fraction",
    )


def _build_soft_nms(cfg, head: str) -> SoftNMS:
    if head == "rpn":
        raise ValueError(
            "MODEL.SUPPRESSION.RPN.METHOD = 'soft_nms' is not supported: Soft-NMS decays "
            "scores multiplicatively and the RPN ranks objectness logits; use 'nms' or 'hnms'"
        )
    s = _checked(cfg).SOFT_NMS
    return SoftNMS(s.METHOD, s.SIGMA, s.SCORE_THRESH)


def _build_prefilter(cfg, head: str) -> HashPrefilter:
    h = _checked(cfg)
    return HashPrefilter(
        h.PREFILTER.ALPHA,
        h.PREFILTER.NUM_HASHES,
        _hash_kwargs_of(cfg),
        log_name=f"hnms/{head}_prefilter_kept_fraction",
    )


def check_single_method_keys(cfg) -> None:
    """Raise a ValueError for an HNMS selection key that only a single-method class reads
    when that class is not built (a composed model reads MODEL.SUPPRESSION instead)."""
    if "HNMS" not in cfg.MODEL:
        return
    h = cfg.MODEL.HNMS
    retina = cfg.MODEL.META_ARCHITECTURE == "HashPrefilterRetinaNet"
    roi = cfg.MODEL.ROI_HEADS.NAME == "HashPrefilterROIHeads"
    for key, value, default, read in (
        ("PREFILTER.ENABLED", h.PREFILTER.ENABLED, True, retina),
        ("PREFILTER.SUPPRESSION", h.PREFILTER.SUPPRESSION, "nms", retina),
        ("ROI_HEADS_PREFILTER", h.ROI_HEADS_PREFILTER, False, roi),
    ):
        if value != default and not read:
            reader = "HashPrefilterRetinaNet" if "PREFILTER." in key else "HashPrefilterROIHeads"
            raise ValueError(
                f"MODEL.HNMS.{key} = {value!r} is read only by {reader}, which this config does "
                "not build; a composed head takes its suppression from MODEL.SUPPRESSION.METHOD "
                f"and MODEL.SUPPRESSION.PREFILTER: set those and leave MODEL.HNMS.{key} at "
                f"{default!r}"
            )


register_suppression("hnms", _build_hnms)
register_suppression("soft_nms", _build_soft_nms)
register_prefilter("hnms", _build_prefilter)
register_config_check(check_single_method_keys)
