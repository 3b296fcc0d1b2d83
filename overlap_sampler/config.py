"""Config keys of the Overlap Sampler, under ``cfg.MODEL.OVERLAP_SAMPLER``."""

from detectron2.config import CfgNode as CN

from d2kit.checks import is_integer as _is_integer
from d2kit.checks import is_real_number as _is_number
from d2kit.checks import require_key

__all__ = ["add_overlap_sampler_config", "check_overlap_sampler_config"]


def add_overlap_sampler_config(cfg: CN) -> None:
    """Add the Overlap Sampler keys to ``cfg`` in place (defaults: Table 2(f) of the paper).

    Select the sampler with ``MODEL.ROI_HEADS.NAME: "OverlapSamplerROIHeads"``. Each side
    (negatives, positives) names a sampler in ``OVERLAP_SAMPLER_REGISTRY``. The paper's θ is also
    the NMS threshold at inference (Table 2(c)); Detectron2 reads that one from
    ``MODEL.ROI_HEADS.NMS_THRESH_TEST``, which the configs under ``configs/OverlapSampler/`` set to
    the same 0.55.
    """
    _C = cfg
    _C.MODEL.OVERLAP_SAMPLER = CN()
    # θ: threshold on the overlap among examples of hard probability sampling (Eq. (1)); the paper
    # takes the NMS threshold, 0.55 at inference (Table 2(c)).
    _C.MODEL.OVERLAP_SAMPLER.THRESHOLD = 0.55
    # ε: loss weight of each ground truth's best-matched positive in the box head (§3.2,
    # Table 2(e)); 1.0 turns the re-weighting off.
    _C.MODEL.OVERLAP_SAMPLER.EPSILON = 2.0
    # Which positive ε goes to. "best_including_gt": the best-matched sampled positive of each
    # ground truth, which is its appended ground-truth box (IoU 1, zero regression target)
    # whenever that is sampled; "best_proposal": the best-matched sampled real proposal (appended
    # ground truths excluded). The paper does not say which; the default keeps the behaviour the
    # committed results were measured with.
    _C.MODEL.OVERLAP_SAMPLER.EPSILON_TARGET = "best_including_gt"

    # Negative overlap sampler (§3.2), on IoU^{p,n}: a negative's largest IoU with the positives.
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE = CN()
    # Sampler in OVERLAP_SAMPLER_REGISTRY: "OverlapSampler" (the paper), or the baselines
    # "OverlapSamplerRandom" (Detectron2's random sampling) and "OverlapSamplerIoUBalanced" (Libra
    # R-CNN's IoU-balanced sampling on the IoU with the ground truth, K = LIBRA_NUM_BINS).
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE.NAME = "OverlapSampler"
    # Probability sampling strategy: "uniform", "hard" (Eq. (1)), "soft" (Eq. (2)) or "linear"
    # (Eq. (3)).
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE.STRATEGY = "soft"
    # K: number of equal IoU bins of soft sampling (Eq. (2), Table 2(b)).
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE.NUM_BINS = 2
    # IoU^{p,n}_max: upper end of the binned interval [0, IoU_max) of Eq. (2) (footnote 3). 0.0: the
    # largest IoU^{p,n} among the image's negatives, as Eq. (2) is written; e.g. 0.7: the fixed
    # interval [0, 0.7) implied by an RPN NMS threshold of 0.7 (larger overlaps join the last bin).
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE.INTERVAL_MAX = 0.0
    # K of the IoU-balanced baseline (Libra R-CNN uses 3 bins on the IoU with the ground truth).
    _C.MODEL.OVERLAP_SAMPLER.NEGATIVE.LIBRA_NUM_BINS = 3

    # Positive overlap sampler (§3.2), on IoU^{p,e}: a positive's largest IoU with other examples.
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE = CN()
    # Sampler in OVERLAP_SAMPLER_REGISTRY: "OverlapSampler" or "OverlapSamplerRandom".
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE.NAME = "OverlapSampler"
    # Probability sampling strategy, as for negatives (Table 2(d)).
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE.STRATEGY = "soft"
    # K for the positives' soft sampling (Eq. (2)).
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE.NUM_BINS = 2
    # IoU^{p,e}_max of Eq. (2) for the positives; 0.0: the image's largest IoU^{p,e}.
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE.INTERVAL_MAX = 0.0
    # Examples that IoU^{p,e} is taken against: "negatives" (Figure 3: the overlap between
    # positives and negatives) or "examples" (all other examples, positives included).
    _C.MODEL.OVERLAP_SAMPLER.POSITIVE.IOU_WITH = "negatives"


def _require(ok: bool, key: str, expected: str, value) -> None:
    require_key(ok, f"MODEL.OVERLAP_SAMPLER.{key}", expected, value)


def check_overlap_sampler_config(cfg: CN) -> None:
    """Raise a ValueError naming the key and its valid range for any bad value under
    ``cfg.MODEL.OVERLAP_SAMPLER``. Called when the ROI heads or a sampler are built, so that a bad
    value fails there and not at the first training iteration."""
    from .samplers import OVERLAP_SAMPLER_REGISTRY  # not at import: samplers needs no config
    from .sampling import EPSILON_TARGETS, STRATEGIES

    oc = cfg.MODEL.OVERLAP_SAMPLER
    _require(
        _is_number(oc.THRESHOLD) and 0.0 <= oc.THRESHOLD <= 1.0,
        "THRESHOLD",
        "a number in [0, 1] (θ of Eq. 1)",
        oc.THRESHOLD,
    )
    _require(
        _is_number(oc.EPSILON) and oc.EPSILON > 0.0,
        "EPSILON",
        "a finite number > 0 (ε of §3.2; 1.0 turns the re-weighting off)",
        oc.EPSILON,
    )
    _require(
        oc.EPSILON_TARGET in EPSILON_TARGETS,
        "EPSILON_TARGET",
        f"one of {', '.join(EPSILON_TARGETS)} (which positive ε goes to)",
        oc.EPSILON_TARGET,
    )
    names = sorted(name for name, _ in OVERLAP_SAMPLER_REGISTRY)
    for side in ("NEGATIVE", "POSITIVE"):
        node = oc[side]
        _require(node.NAME in names, f"{side}.NAME", f"one of {', '.join(names)}", node.NAME)
        _require(
            node.STRATEGY in STRATEGIES,
            f"{side}.STRATEGY",
            f"one of {', '.join(STRATEGIES)}",
            node.STRATEGY,
        )
        _require(
            _is_integer(node.NUM_BINS) and node.NUM_BINS >= 1,
            f"{side}.NUM_BINS",
            "an integer >= 1 (K of Eq. 2)",
            node.NUM_BINS,
        )
        _require(
            _is_number(node.INTERVAL_MAX) and 0.0 <= node.INTERVAL_MAX <= 1.0,
            f"{side}.INTERVAL_MAX",
            "0 (the image's largest IoU, as Eq. 2 is written) or in (0, 1] (a fixed IoU_max, "
            "footnote 3)",
            node.INTERVAL_MAX,
        )
    _require(
        _is_integer(oc.NEGATIVE.LIBRA_NUM_BINS) and oc.NEGATIVE.LIBRA_NUM_BINS >= 1,
        "NEGATIVE.LIBRA_NUM_BINS",
        "an integer >= 1 (K of the IoU-balanced baseline)",
        oc.NEGATIVE.LIBRA_NUM_BINS,
    )
    _require(
        oc.POSITIVE.IOU_WITH in ("negatives", "examples"),
        "POSITIVE.IOU_WITH",
        "one of negatives, examples",
        oc.POSITIVE.IOU_WITH,
    )
