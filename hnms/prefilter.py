"""HNMS as a pre-filter before NMS (paper §4.3), as a plain function any detector can call."""

import torch
from torchvision.ops import batched_nms

from .ops import batched_hnms

__all__ = ["nms_with_hash_prefilter"]


def nms_with_hash_prefilter(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    alpha: float = 0.73,
    num_hashes: int = 1,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-group HNMS (α, K) followed by per-group NMS at ``iou_threshold`` on the survivors.

    HNMS removes most duplicates in O(N), so NMS sees far fewer boxes. With α = 0.73 the cell
    lower bound (0.5015) is just above the usual NMS threshold 0.5 (§4.3), so few boxes that NMS
    would keep are removed.

    Args:
        boxes: [N, 4] float xyxy; scores: [N] float; idxs: [N] integer class ids; same device.
        iou_threshold: NMS IoU threshold.
        alpha, num_hashes: α and K of the pre-filter (see :func:`hnms.hnms`).
    Returns:
        int64 indices into ``boxes``, sorted by decreasing score, like ``batched_nms``.
    """
    pre = batched_hnms(boxes, scores, idxs, alpha, num_hashes, backend=backend)
    keep = batched_nms(boxes[pre].float(), scores[pre].float(), idxs[pre], iou_threshold)
    return pre[keep]
