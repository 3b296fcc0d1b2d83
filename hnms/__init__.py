"""Hashing-based NMS (HNMS, Wang et al., arXiv 2005.11426) for Detectron2.

The op (:func:`iou_hash`, :func:`hnms`, :func:`batched_hnms`, :func:`iou_lower_bound`) and the
Soft-NMS it pre-filters (:func:`soft_nms`, :func:`batched_soft_nms`, Appendix C.3) need only
torch; they use the compiled kernels ``hnms._C`` when built, the pure-torch reference otherwise.
With Detectron2 installed, importing this package also registers ``HashRPN`` (proposal
generator), ``HashPrefilterRetinaNet`` (meta-architecture) and ``HashPrefilterROIHeads``, and
makes "hnms" and "soft_nms" suppressions (and the "hnms" pre-filter) that any composed head can
choose with ``MODEL.SUPPRESSION`` (:mod:`hnms.suppression`).
"""

import importlib.util

from .bound import alpha_for_iou, iou_lower_bound
from .ops import INVALID_CODE, batched_hnms, hnms, iou_hash
from .prefilter import nms_with_hash_prefilter, soft_nms_with_hash_prefilter
from .soft_nms import batched_soft_nms, soft_nms

__all__ = [
    "INVALID_CODE",
    "alpha_for_iou",
    "batched_hnms",
    "hnms",
    "iou_hash",
    "iou_lower_bound",
    "nms_with_hash_prefilter",
    "soft_nms",
    "batched_soft_nms",
    "soft_nms_with_hash_prefilter",
]

if importlib.util.find_spec("detectron2") is not None:
    from .config import add_hnms_config, check_hnms_config
    from .retinanet import HashPrefilterRetinaNet
    from .roi_heads import HashPrefilterFastRCNNOutputLayers, HashPrefilterROIHeads
    from .rpn import HashRPN, find_top_hash_proposals
    from .suppression import HashNMS, HashPrefilter, SoftNMS

    __all__ += [
        "add_hnms_config",
        "check_hnms_config",
        "HashPrefilterRetinaNet",
        "HashPrefilterFastRCNNOutputLayers",
        "HashPrefilterROIHeads",
        "HashRPN",
        "find_top_hash_proposals",
        "HashNMS",
        "HashPrefilter",
        "SoftNMS",
    ]
