"""HashRPN: an RPN whose per-level NMS is HNMS (paper §4.2)."""

import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN

from d2kit.suppression import find_top_proposals, topk_per_group

from ._events import put_kept_fraction
from .config import check_hnms_config
from .ops import _ALPHA_FIX, _check_float, _check_hash_params, _check_num_hashes, batched_hnms

__all__ = ["HashRPN", "find_top_hash_proposals", "topk_per_group"]


def find_top_hash_proposals(
    proposals,
    pred_objectness_logits,
    image_sizes,
    alpha: float,
    num_hashes: int,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
    post_topk_per_level: int = 0,
    hash_kwargs=None,
):
    """RPN proposal selection with HNMS in place of NMS (§4.2).

    Per image: the P1 = ``pre_nms_topk`` best anchors of every level; drop non-finite boxes
    (an error while training) and boxes smaller than ``min_box_size`` after clipping; HNMS per
    level (α, K); at most P2 = ``post_topk_per_level`` per level; the P3 = ``post_nms_topk``
    best overall.

    Args:
        proposals: list of L tensors [N, Hi*Wi*A, 4], decoded xyxy boxes per level.
        pred_objectness_logits: list of L tensors [N, Hi*Wi*A].
        image_sizes: list of N (h, w).
        alpha, num_hashes: α and K of HNMS.
        hash_kwargs: optional dict of w0, h0, bx, by for :func:`hnms.batched_hnms`.
    Returns:
        list of N Instances with ``proposal_boxes`` and ``objectness_logits``, by decreasing score.
    """
    hash_kwargs = hash_kwargs or {}

    def suppress(boxes, scores, levels):
        keep = batched_hnms(boxes, scores, levels, alpha, num_hashes, **hash_kwargs)
        put_kept_fraction("hnms/rpn_kept_fraction", boxes.shape[0], keep.shape[0])
        return keep

    return find_top_proposals(
        proposals,
        pred_objectness_logits,
        image_sizes,
        suppress,
        pre_nms_topk,
        post_nms_topk,
        min_box_size,
        training,
        post_topk_per_level=post_topk_per_level,
    )


@PROPOSAL_GENERATOR_REGISTRY.register()
class HashRPN(RPN):
    """RPN with HNMS instead of NMS in proposal selection (§4.2); everything else is the RPN's.

    The ROI heads' NMS is unchanged (see HashPrefilterROIHeads for the optional pre-filter).
    """

    @configurable
    def __init__(
        self,
        *,
        hnms_alpha: float = 0.7,
        hnms_num_hashes: int = 1,
        post_topk_per_level: tuple = (0, 0),
        hash_kwargs: dict | None = None,
        **kwargs,
    ):
        """
        Args:
            hnms_alpha: α of Eq. (1) (0.7 in §4.2).
            hnms_num_hashes: K of Eq. (16).
            post_topk_per_level: P2 (train, test): proposals kept per level after HNMS (0: all).
            hash_kwargs: w0, h0, bx, by of the first hash function.
            kwargs: the arguments of detectron2's RPN.
        """
        super().__init__(**kwargs)
        self.hnms_alpha = _check_float(hnms_alpha, "hnms_alpha", 0.0, 1.0, _ALPHA_FIX)
        self.hnms_num_hashes = _check_num_hashes(hnms_num_hashes)
        self.post_topk_per_level = {True: post_topk_per_level[0], False: post_topk_per_level[1]}
        self.hash_kwargs = dict(hash_kwargs or {})
        hash_args = {"w0": 1.0, "h0": 1.0, "bx": 0.0, "by": 0.0, **self.hash_kwargs}
        _check_hash_params(self.hnms_alpha, num_hashes=self.hnms_num_hashes, **hash_args)

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_hnms_config(cfg)  # every MODEL.HNMS key, with its valid range, at model build
        ret = super().from_config(cfg, input_shape)
        h = cfg.MODEL.HNMS
        ret["hnms_alpha"] = h.RPN.ALPHA
        ret["hnms_num_hashes"] = h.RPN.NUM_HASHES
        ret["post_topk_per_level"] = (
            h.RPN.POST_HNMS_TOPK_PER_LEVEL_TRAIN,
            h.RPN.POST_HNMS_TOPK_PER_LEVEL_TEST,
        )
        ret["hash_kwargs"] = {"w0": h.W0, "h0": h.H0, "bx": h.BX, "by": h.BY}
        return ret

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        """As RPN.predict_proposals, with HNMS (find_top_hash_proposals) for the NMS step."""
        with torch.no_grad():
            pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            return find_top_hash_proposals(
                pred_proposals,
                pred_objectness_logits,
                image_sizes,
                self.hnms_alpha,
                self.hnms_num_hashes,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
                post_topk_per_level=self.post_topk_per_level[self.training],
                hash_kwargs=self.hash_kwargs,
            )
