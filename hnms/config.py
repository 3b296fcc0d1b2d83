"""Config keys of HNMS (cfg.MODEL.HNMS), each named after the paper's symbol."""

from detectron2.config import CfgNode as CN

from d2kit.checks import is_integer as _is_integer
from d2kit.checks import is_real_number as _is_number
from d2kit.checks import require_key

__all__ = ["add_hnms_config", "check_hnms_config"]


def add_hnms_config(cfg):
    """Add cfg.MODEL.HNMS (in place). Used by HashRPN, HashPrefilterRetinaNet and
    HashPrefilterROIHeads. α is NOT an IoU threshold: two boxes in one cell have IoU >=
    hnms.iou_lower_bound(α) (α = 0.7 -> 0.452, α = 0.73 -> 0.5015)."""
    cfg.MODEL.HNMS = CN()
    # W0, H0 of Eqs. (1), (9): centre of the 0-th width / height cell (paper: 1, 1)
    cfg.MODEL.HNMS.W0 = 1.0
    cfg.MODEL.HNMS.H0 = 1.0
    # b_x, b_y of Eqs. (5)-(7): shift of the offset cells, in cell units (paper: 0, 0);
    # the k-th of K hash functions adds k/K to them and scales W0, H0 by α^(-k/K), Eq. (16).
    # Only b mod 1 changes which boxes share a cell; |b| >= 2^52 is rejected.
    cfg.MODEL.HNMS.BX = 0.0
    cfg.MODEL.HNMS.BY = 0.0

    # HashRPN: HNMS replaces the RPN's per-level NMS (§4.2). P1 is MODEL.RPN.PRE_NMS_TOPK_*
    # (boxes per feature map entering HNMS), P3 is MODEL.RPN.POST_NMS_TOPK_* (per image).
    cfg.MODEL.HNMS.RPN = CN()
    # α of Eq. (1) for the RPN (§4.2: α = 0.7, the same value as the NMS threshold it replaces)
    cfg.MODEL.HNMS.RPN.ALPHA = 0.7
    # K of Eq. (16) / Alg. 3: number of cascaded hash functions (Table 1: K = 1 is fastest)
    cfg.MODEL.HNMS.RPN.NUM_HASHES = 1
    # P2 of §4.2: at most this many proposals kept per feature map after HNMS (0: no cap)
    cfg.MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TRAIN = 0
    cfg.MODEL.HNMS.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST = 0

    # Pre-filter before NMS (§4.3): per-class HNMS, then the usual NMS on the survivors. Used by
    # the one-stage HashPrefilterRetinaNet and, when ROI_HEADS_PREFILTER, HashPrefilterROIHeads.
    cfg.MODEL.HNMS.PREFILTER = CN()
    # α of the pre-filter (§4.3: 0.73, whose cell IoU bound 0.5015 is just above NMS@0.5)
    cfg.MODEL.HNMS.PREFILTER.ALPHA = 0.73
    # K of Eq. (16) for the pre-filter (Table 2: K = 1..4)
    cfg.MODEL.HNMS.PREFILTER.NUM_HASHES = 1
    # HashPrefilterRetinaNet runs HNMS before its suppression; False runs the suppression alone
    # (the baseline of Tables 2 and 4 with the same post-processing code)
    cfg.MODEL.HNMS.PREFILTER.ENABLED = True
    # The suppression after the pre-filter in HashPrefilterRetinaNet: "nms" (NMS at
    # MODEL.RETINANET.NMS_THRESH_TEST, §4.3) or "soft_nms" (Appendix C.3, Table 4)
    cfg.MODEL.HNMS.PREFILTER.SUPPRESSION = "nms"
    # Soft-NMS (Bodla et al.): s_i <- s_i f(IoU(M, b_i)), used when SUPPRESSION = "soft_nms".
    # The linear decay's N_t is MODEL.RETINANET.NMS_THRESH_TEST.
    cfg.MODEL.HNMS.SOFT_NMS = CN()
    # "gaussian": f = exp(-IoU^2 / σ); "linear": f = 1 - IoU if IoU >= N_t
    cfg.MODEL.HNMS.SOFT_NMS.METHOD = "gaussian"
    # σ of the Gaussian decay (Bodla et al.: 0.5)
    cfg.MODEL.HNMS.SOFT_NMS.SIGMA = 0.5
    # after each output box, the boxes whose decayed score is below this are dropped (Bodla et
    # al.: 0.001); the best box of a class is output before this pruning, whatever its score
    cfg.MODEL.HNMS.SOFT_NMS.SCORE_THRESH = 0.001
    # HashPrefilterROIHeads: pre-filter before the ROI heads' per-class NMS as well (the paper
    # leaves the ROI heads' NMS alone, §4.2, so off by default)
    cfg.MODEL.HNMS.ROI_HEADS_PREFILTER = False


def _require(ok: bool, key: str, expected: str, value) -> None:
    require_key(ok, f"MODEL.HNMS.{key}", expected, value)


def check_hnms_config(cfg) -> None:
    """Raise a ValueError naming the key and its valid range for any bad value under
    ``cfg.MODEL.HNMS``. Called when HashRPN, HashPrefilterRetinaNet and HashPrefilterROIHeads are
    built, so that a bad value fails there, not at the first image (or, for an offset that makes
    every box unhashable, not silently)."""
    from .ops import _check_hash_params
    from .reference import MAX_CODE
    from .retinanet import SUPPRESSIONS
    from .soft_nms import SOFT_NMS_METHODS

    h = cfg.MODEL.HNMS
    for key in ("W0", "H0"):
        _require(_is_number(h[key]) and h[key] > 0, key, "a finite number > 0", h[key])
    for key in ("BX", "BY"):
        _require(
            _is_number(h[key]) and abs(h[key]) < MAX_CODE,
            key,
            "a finite number with |b| < 2^52 (an offset in cell units; only b mod 1 matters)",
            h[key],
        )
    for stage in ("RPN", "PREFILTER"):
        alpha, num_hashes = h[stage].ALPHA, h[stage].NUM_HASHES
        _require(
            _is_number(alpha) and 0.0 < alpha < 1.0,
            f"{stage}.ALPHA",
            "a number in (0, 1) (α of Eq. 1, the cell-size ratio; not an IoU threshold: see "
            "hnms.alpha_for_iou)",
            alpha,
        )
        _require(
            _is_integer(num_hashes) and num_hashes >= 1,
            f"{stage}.NUM_HASHES",
            "an integer >= 1 (K of Eq. 16)",
            num_hashes,
        )
        try:  # W0, H0 scaled by α^(-k/K) for the K hash functions of Eq. (16)
            _check_hash_params(alpha, h.W0, h.H0, h.BX, h.BY, num_hashes)
        except ValueError as e:
            raise ValueError(
                f"MODEL.HNMS.W0 / H0 / BX / BY with MODEL.HNMS.{stage}.ALPHA and NUM_HASHES: {e}"
            ) from e
    for key in ("POST_HNMS_TOPK_PER_LEVEL_TRAIN", "POST_HNMS_TOPK_PER_LEVEL_TEST"):
        value = h.RPN[key]
        _require(
            _is_integer(value) and value >= 0, f"RPN.{key}", "an integer >= 0 (0: no cap)", value
        )
    for key, node in (("PREFILTER.ENABLED", h.PREFILTER), ("ROI_HEADS_PREFILTER", h)):
        value = node[key.split(".")[-1]]
        _require(isinstance(value, bool), key, "True or False", value)
    _require(
        h.PREFILTER.SUPPRESSION in SUPPRESSIONS,
        "PREFILTER.SUPPRESSION",
        f"one of {', '.join(SUPPRESSIONS)}",
        h.PREFILTER.SUPPRESSION,
    )
    soft = h.SOFT_NMS
    _require(
        soft.METHOD in SOFT_NMS_METHODS,
        "SOFT_NMS.METHOD",
        f"one of {', '.join(SOFT_NMS_METHODS)}",
        soft.METHOD,
    )
    _require(
        _is_number(soft.SIGMA) and soft.SIGMA > 0,
        "SOFT_NMS.SIGMA",
        "a finite number > 0 (σ of the Gaussian decay)",
        soft.SIGMA,
    )
    _require(
        _is_number(soft.SCORE_THRESH) and soft.SCORE_THRESH >= 0,
        "SOFT_NMS.SCORE_THRESH",
        "a finite number >= 0",
        soft.SCORE_THRESH,
    )
