"""Registry of per-image RoI samplers, one for each side (negatives, positives).

A sampler is chosen by name in ``MODEL.OVERLAP_SAMPLER.{NEGATIVE,POSITIVE}.NAME`` and called by
:class:`~overlap_sampler.roi_heads.OverlapSamplerROIHeads` once per image and side. It sees the
image's labelled examples (:class:`ImageExamples`) and returns which candidates to keep. Register
new samplers with ``@OVERLAP_SAMPLER_REGISTRY.register()``; their ``from_config(cls, cfg, side)``
gets ``side`` in ("negative", "positive").
"""

from dataclasses import dataclass

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry

from .config import check_overlap_sampler_config
from .sampling import _check_args, sample_iou_balanced, sample_negatives, sample_positives

__all__ = [
    "OVERLAP_SAMPLER_REGISTRY",
    "ImageExamples",
    "OverlapSampler",
    "OverlapSamplerRandom",
    "OverlapSamplerIoUBalanced",
    "build_overlap_sampler",
]

OVERLAP_SAMPLER_REGISTRY = Registry("OVERLAP_SAMPLER")
OVERLAP_SAMPLER_REGISTRY.__doc__ = """
Per-image samplers of RoI-head training examples, one per side. A sampler is called as
``sampler(examples: ImageExamples, side: str, num: int, generator=None) -> Tensor`` and returns
``min(num, #candidates)`` distinct int64 positions into the side's candidates
(``examples.pos`` or ``examples.neg``).
"""

SIDES = ("negative", "positive")


@dataclass
class ImageExamples:
    """The labelled examples of one image (its proposals, with the appended ground truth).

    Attributes:
        pos: int64 (P,), indices of the positives among the image's E examples.
        neg: int64 (M,), indices of the negatives.
        iou_pn: float (M,), each negative's IoU^{p,n} in [0, 1] (largest IoU with a positive).
        iou_pe: float (P,), each positive's IoU^{p,e} in [0, 1].
        iou_gt: float (E,), each example's largest IoU with the image's ground truth (0 without
            ground truth).
    """

    pos: torch.Tensor
    neg: torch.Tensor
    iou_pn: torch.Tensor
    iou_pe: torch.Tensor
    iou_gt: torch.Tensor


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")


def _side_node(cfg, side: str):
    _check_side(side)
    return (
        cfg.MODEL.OVERLAP_SAMPLER.NEGATIVE
        if side == "negative"
        else cfg.MODEL.OVERLAP_SAMPLER.POSITIVE
    )


@OVERLAP_SAMPLER_REGISTRY.register()
class OverlapSampler:
    """The negative and positive overlap samplers of §3.2 (Eqs. 1-3) on IoU^{p,n} / IoU^{p,e}."""

    @configurable
    def __init__(
        self,
        *,
        strategy: str = "soft",
        num_bins: int = 2,
        threshold: float = 0.55,
        interval_max: float | None = None,
    ):
        """
        Args:
            strategy: one of "uniform", "hard" (Eq. 1), "soft" (Eq. 2), "linear" (Eq. 3).
            num_bins: K of Eq. (2).
            threshold: θ of Eq. (1).
            interval_max: IoU_max of Eq. (2); None: the image's largest IoU (footnote 3).
        """
        _check_args(0, strategy, num_bins, threshold, interval_max)
        self.strategy = strategy
        self.num_bins = int(num_bins)
        self.threshold = float(threshold)
        self.interval_max = interval_max

    @classmethod
    def from_config(cls, cfg, side: str):
        node = _side_node(cfg, side)
        return {
            "strategy": node.STRATEGY,
            "num_bins": node.NUM_BINS,
            "threshold": cfg.MODEL.OVERLAP_SAMPLER.THRESHOLD,
            "interval_max": node.INTERVAL_MAX if node.INTERVAL_MAX > 0 else None,
        }

    def __call__(
        self,
        examples: ImageExamples,
        side: str,
        num: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        _check_side(side)
        fn, iou = (
            (sample_negatives, examples.iou_pn)
            if side == "negative"
            else (sample_positives, examples.iou_pe)
        )
        return fn(
            iou,
            num,
            self.strategy,
            num_bins=self.num_bins,
            threshold=self.threshold,
            generator=generator,
            interval_max=self.interval_max,
        )


@OVERLAP_SAMPLER_REGISTRY.register()
class OverlapSamplerRandom(OverlapSampler):
    """Random sampling (Detectron2's default, the paper's "uniform" baseline), either side."""

    @configurable
    def __init__(self):
        super().__init__(strategy="uniform")

    @classmethod
    def from_config(cls, cfg, side: str):
        _check_side(side)
        return {}


@OVERLAP_SAMPLER_REGISTRY.register()
class OverlapSamplerIoUBalanced:
    """IoU-balanced negative sampling of Libra R-CNN: K bins on the IoU with the ground truth.

    The baseline of the paper's §3.1 (Figure 2(a), Figure 4); negatives only.
    """

    @configurable
    def __init__(self, *, num_bins: int = 3):
        """
        Args:
            num_bins: K, the number of equal bins over [0, the image's largest IoU_gn].
        """
        _check_args(0, "soft", num_bins, 0.5, None)
        self.num_bins = int(num_bins)

    @classmethod
    def from_config(cls, cfg, side: str):
        _check_side(side)
        if side != "negative":
            raise ValueError(
                "OverlapSamplerIoUBalanced samples negatives only; set "
                "MODEL.OVERLAP_SAMPLER.POSITIVE.NAME to OverlapSampler or OverlapSamplerRandom"
            )
        return {"num_bins": cfg.MODEL.OVERLAP_SAMPLER.NEGATIVE.LIBRA_NUM_BINS}

    def __call__(
        self,
        examples: ImageExamples,
        side: str,
        num: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if side != "negative":
            raise ValueError(f"OverlapSamplerIoUBalanced samples negatives only; got side {side!r}")
        return sample_iou_balanced(
            examples.iou_gt[examples.neg], num, num_bins=self.num_bins, generator=generator
        )


def build_overlap_sampler(cfg, side: str):
    """The sampler named by ``MODEL.OVERLAP_SAMPLER.<SIDE>.NAME`` for ``side`` ("negative" or
    "positive"); raises a ValueError naming the key for any bad ``MODEL.OVERLAP_SAMPLER`` value
    (:func:`~overlap_sampler.config.check_overlap_sampler_config`)."""
    check_overlap_sampler_config(cfg)
    name = _side_node(cfg, side).NAME
    return OVERLAP_SAMPLER_REGISTRY.get(name)(cfg, side)
