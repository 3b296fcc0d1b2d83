"""The suppression step every composed head runs, chosen by name in ``MODEL.SUPPRESSION``.

A :class:`Suppression` is an optional pre-filter followed by one suppression method, applied per
group (class, or feature level in the RPN). The heads that suppress call it in one place each:

- ``ComposedRPN.predict_proposals`` (per level, ``MODEL.SUPPRESSION.RPN.*``),
- ``ComposedROIHeads``' box predictor ``inference`` (per class, ``MODEL.SUPPRESSION.*``),
- ``ComposedRetinaNet.inference_single_image`` (per class, ``MODEL.SUPPRESSION.*``).

Methods and pre-filters are small registries of builders ``builder(cfg, head) -> object``, keyed
by the name the config uses. This module registers ``"nms"`` (Detectron2's ``batched_nms``) and
the pre-filter ``"none"``; the package that provides an algorithm registers its names when it is
imported (``hnms`` registers ``"soft_nms"``, ``"hnms"`` and the ``"hnms"`` pre-filter).

The plain functions here are the proposal selection and the per-image detections of Detectron2's
RPN and Fast R-CNN head, written once with the suppression as an argument, so that any head can
use any suppression without a class per pair.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

__all__ = [
    "HEADS",
    "NMS",
    "PREFILTERS",
    "SUPPRESSION_METHODS",
    "Prefilter",
    "Suppression",
    "SuppressionMethod",
    "build_suppression",
    "fast_rcnn_detections",
    "find_top_proposals",
    "register_prefilter",
    "register_suppression",
    "suppression_keys",
    "topk_per_group",
]

#: What a suppression is built for: the detections (per class) or the RPN's proposals (per level).
HEADS = ("detections", "rpn")


class SuppressionMethod(ABC):
    """One suppression algorithm, run separately within each group of boxes.

    Subclasses set ``name`` and implement ``__call__``. ``decays_scores``: the method rescores
    the boxes it keeps (Soft-NMS), and multiplies scores, so inputs must be >= 0; the heads then
    drop candidates scoring <= 0 or below ``score_threshold`` before calling it and report the
    new scores. ``post_topk_per_level``: (train, test) cap on the proposals kept per feature
    level after it, in the RPN (0: none).
    """

    name = ""
    decays_scores = False
    score_threshold = 0.0
    post_topk_per_level = (0, 0)

    @abstractmethod
    def __call__(self, boxes, scores, idxs, iou_threshold: float):
        """
        Args:
            boxes: float [N, 4] (x1, y1, x2, y2); scores: float [N]; idxs: int64 [N] group ids.
            iou_threshold: the head's NMS threshold (also N_t of a linear Soft-NMS decay);
                methods with their own criterion (HNMS's α) ignore it.
        Returns:
            (keep, new_scores): int64 [K] indices into ``boxes`` by decreasing (new) score, and
            float [K] new scores, or None when the method keeps the input scores.
        """

    def __repr__(self) -> str:
        return self.name


class NMS(SuppressionMethod):
    """Detectron2's per-group NMS (``detectron2.layers.batched_nms``)."""

    name = "nms"

    def __call__(self, boxes, scores, idxs, iou_threshold: float):
        return batched_nms(boxes, scores, idxs, iou_threshold), None


class Prefilter(ABC):
    """Removes boxes before the suppression method (e.g. HNMS's O(N) hashing, §4.3).

    ``__call__(boxes, scores, idxs)`` returns int64 indices of the boxes that go on to the method.
    """

    name = ""

    @abstractmethod
    def __call__(self, boxes, scores, idxs) -> torch.Tensor:
        """int64 indices of the boxes that go on to the suppression method."""

    def __repr__(self) -> str:
        return self.name


class Suppression:
    """An optional pre-filter, then a suppression method; what a composed head suppresses with.

    ``Suppression()`` is Detectron2's NMS: the heads run their own Detectron2 code path for it,
    so a model whose suppression is the default is Detectron2's model.
    """

    def __init__(self, method: SuppressionMethod | None = None, prefilter: Prefilter | None = None):
        self.method = method if method is not None else NMS()
        self.prefilter = prefilter
        if not isinstance(self.method, SuppressionMethod):
            raise TypeError(
                f"method must be a d2kit.suppression.SuppressionMethod, got {type(method)}"
            )
        if prefilter is not None and not isinstance(prefilter, Prefilter):
            raise TypeError(
                f"prefilter must be a d2kit.suppression.Prefilter, got {type(prefilter)}"
            )

    @property
    def is_default(self) -> bool:
        """True for Detectron2's NMS without a pre-filter."""
        return type(self.method) is NMS and self.prefilter is None

    @property
    def decays_scores(self) -> bool:
        return self.method.decays_scores

    @property
    def score_threshold(self) -> float:
        return self.method.score_threshold

    @property
    def post_topk_per_level(self) -> tuple[int, int]:
        return tuple(self.method.post_topk_per_level)

    def __call__(self, boxes, scores, idxs, iou_threshold: float):
        """The pre-filter, then the method on its survivors; arguments and result as
        :meth:`SuppressionMethod.__call__` (indices refer to the input ``boxes``)."""
        if self.prefilter is None:
            return self.method(boxes, scores, idxs, iou_threshold)
        pre = self.prefilter(boxes, scores, idxs)
        keep, new_scores = self.method(boxes[pre], scores[pre], idxs[pre], iou_threshold)
        return pre[keep], new_scores

    def __repr__(self) -> str:
        if self.prefilter is None:
            return f"Suppression({self.method!r})"
        return f"Suppression({self.prefilter!r} pre-filter, then {self.method!r})"


#: name -> builder(cfg, head) -> SuppressionMethod; see :func:`register_suppression`.
SUPPRESSION_METHODS: dict[str, Callable] = {"nms": lambda cfg, head: NMS()}
#: name -> builder(cfg, head) -> Prefilter or None; see :func:`register_prefilter`.
PREFILTERS: dict[str, Callable] = {"none": lambda cfg, head: None}


def _register(table: dict, kind: str, name: str, builder: Callable) -> None:
    if not callable(builder):
        raise TypeError(f"the builder of {kind} {name!r} must be callable, got {builder!r}")
    if name in table and table[name] is not builder:
        raise ValueError(f"a {kind} named {name!r} is already registered ({table[name]!r})")
    table[name] = builder


def register_suppression(name: str, builder: Callable) -> None:
    """Make ``name`` a valid value of ``MODEL.SUPPRESSION.METHOD`` / ``.RPN.METHOD``.

    ``builder(cfg, head)`` returns a :class:`SuppressionMethod` for ``head`` ("detections" or
    "rpn"), reading its parameters from ``cfg``; for a head it cannot serve it raises a
    ValueError saying why and what to use instead.
    """
    _register(SUPPRESSION_METHODS, "suppression method", name, builder)


def register_prefilter(name: str, builder: Callable) -> None:
    """Make ``name`` a valid value of ``MODEL.SUPPRESSION.PREFILTER`` / ``.RPN.PREFILTER``;
    ``builder(cfg, head)`` returns a :class:`Prefilter`."""
    _register(PREFILTERS, "pre-filter", name, builder)


def suppression_keys(head: str) -> tuple[str, str]:
    """The config keys (method, pre-filter) of ``head``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    node = "MODEL.SUPPRESSION.RPN." if head == "rpn" else "MODEL.SUPPRESSION."
    return node + "METHOD", node + "PREFILTER"


def _lookup(table: dict, key: str, value, kind: str) -> Callable:
    if value not in table:
        raise ValueError(
            f"{key} must be one of {', '.join(sorted(table))} (the registered {kind}s), got "
            f"{value!r}; a name is registered by the package that provides it, when it is "
            "imported (e.g. `import hnms` registers soft_nms and hnms)"
        )
    return table[value]


def build_suppression(cfg, head: str) -> Suppression:
    """The :class:`Suppression` that ``MODEL.SUPPRESSION`` (``head`` "detections") or
    ``MODEL.SUPPRESSION.RPN`` (``head`` "rpn") selects.

    Raises:
        ValueError naming the key, for an unknown name, a method the head cannot run, or a
        pre-filter that is the method itself.
    """
    method_key, prefilter_key = suppression_keys(head)
    if "SUPPRESSION" not in cfg.MODEL:
        raise ValueError(
            "MODEL.SUPPRESSION is missing from the config: add the shared keys with "
            "d2kit.config.add_d2kit_config(cfg) before merging the YAML"
        )
    node = cfg.MODEL.SUPPRESSION.RPN if head == "rpn" else cfg.MODEL.SUPPRESSION
    method_name, prefilter_name = node.METHOD, node.PREFILTER
    build_method = _lookup(SUPPRESSION_METHODS, method_key, method_name, "suppression method")
    build_prefilter = _lookup(PREFILTERS, prefilter_key, prefilter_name, "pre-filter")
    if method_name == prefilter_name:
        raise ValueError(
            f"{prefilter_key} = {prefilter_name!r} before {method_key} = {method_name!r} runs the "
            f"same suppression twice; set {prefilter_key} to 'none'"
        )
    return Suppression(build_method(cfg, head), build_prefilter(cfg, head))


def topk_per_group(keep: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` entries of every group, keeping the order of ``keep``.

    Args:
        keep: int64 [M] indices, in order of preference (e.g. by decreasing score).
        groups: int64 [M] non-negative group id of every entry of ``keep``.
        k: at most this many per group; ``k <= 0`` keeps everything.
    """
    if k <= 0:
        return keep
    # The rank of each entry within its group: its position after a stable sort by group, less
    # the position where its group starts (no count of groups, so also for M = 0).
    order = torch.sort(groups, stable=True).indices
    sorted_groups = groups[order]
    position = torch.ones_like(sorted_groups).cumsum(0) - 1
    rank_sorted = position - torch.searchsorted(sorted_groups, sorted_groups)
    rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
    return keep[rank < k]


def _at_most(size, k: int):
    """``min(size, k)`` for a tensor size: an int, or while a model is traced a traced value,
    which stays symbolic (the trace then also fits inputs of other sizes)."""
    if isinstance(size, torch.Tensor):
        return torch.clamp(size, max=k)
    return min(size, k)


def find_top_proposals(
    proposals,
    pred_objectness_logits,
    image_sizes,
    suppress: Callable,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
    post_topk_per_level: int = 0,
):
    """The RPN's proposal selection with ``suppress`` in place of its per-level NMS.

    Per image: the ``pre_nms_topk`` best anchors of every level; drop non-finite boxes (an error
    while training) and boxes smaller than ``min_box_size`` after clipping; ``suppress`` per
    level; at most ``post_topk_per_level`` per level; the ``post_nms_topk`` best overall.

    Args:
        proposals: list of L tensors [N, Hi*Wi*A, 4], decoded xyxy boxes per level.
        pred_objectness_logits: list of L tensors [N, Hi*Wi*A].
        image_sizes: list of N (h, w).
        suppress: ``suppress(boxes [M, 4], logits [M], levels int64 [M]) -> keep``, int64
            indices by decreasing score.
    Returns:
        list of N Instances with ``proposal_boxes`` and ``objectness_logits``, by decreasing score.
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)[:, None]
    top_scores, top_boxes, levels = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, pred_objectness_logits)):
        k = _at_most(logits_l.shape[1], pre_nms_topk)
        scores_l, idx = logits_l.topk(k, dim=1)
        top_scores.append(scores_l)
        top_boxes.append(boxes_l[batch_idx, idx])
        levels.append(torch.full((k,), level, dtype=torch.int64, device=device))
    top_scores = torch.cat(top_scores, dim=1)
    top_boxes = torch.cat(top_boxes, dim=1)
    levels = torch.cat(levels, dim=0)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes = Boxes(top_boxes[n])
        scores = top_scores[n]
        lvl = levels
        valid = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if training and not bool(valid.all()):
            raise FloatingPointError(
                "Predicted boxes or scores contain Inf/NaN. Training has diverged."
            )
        # masks applied whatever they hold (no branch on the data: the same code for any input)
        boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
        boxes.clip(image_size)
        big = boxes.nonempty(threshold=min_box_size)
        boxes, scores, lvl = boxes[big], scores[big], lvl[big]
        keep = suppress(boxes.tensor, scores, lvl)
        keep = topk_per_group(keep, lvl[keep], post_topk_per_level)
        keep = keep[:post_nms_topk]
        res = Instances(image_size)
        res.proposal_boxes = boxes[keep]
        res.objectness_logits = scores[keep]
        results.append(res)
    return results


def fast_rcnn_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    suppression: Suppression,
):
    """Per-image detections of a Fast R-CNN box predictor with ``suppression`` per class.

    Detectron2's ``fast_rcnn_inference_single_image`` with the suppression as an argument. With
    a method that decays scores (Soft-NMS), candidates scoring <= 0 or below its
    ``score_threshold`` are dropped first (it would output each class's best box whatever its
    score), and the detections carry the decayed scores.

    Args:
        boxes: [R, 4 * C] or [R, 4] predicted boxes; scores: [R, C + 1] class probabilities
            (last column background); image_shape: (h, w) for clipping.
        score_thresh, nms_thresh, topk_per_image: as Detectron2's (``topk_per_image`` < 0: all).
    Returns:
        (Instances with pred_boxes, scores, pred_classes, by decreasing score; int64 [D] index of
        the RoI of every detection)
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid]
    roi_ids = torch.nonzero(valid).view(-1)
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    # [R, C, 4]: the box of every (RoI, class); class-agnostic boxes are broadcast (no copy)
    boxes = clipped.tensor.view(-1, num_reg_classes, 4).expand(-1, scores.shape[1], -1)
    candidates = scores > score_thresh  # [R, C]
    if suppression.decays_scores:
        candidates &= (scores > 0) & (scores >= suppression.score_threshold)
    ids = torch.nonzero(candidates)  # (RoI, class)
    boxes = boxes[candidates]
    scores = scores[candidates]
    keep, new_scores = suppression(boxes, scores, ids[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
        new_scores = None if new_scores is None else new_scores[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep] if new_scores is None else new_scores
    result.pred_classes = ids[keep, 1]
    return result, roi_ids[ids[keep, 0]]


def dense_detections(detector, anchors, box_cls, box_delta, image_size, suppress: Callable):
    """One-stage detections of one image (RetinaNet's ``inference_single_image``) with
    ``suppress(boxes, scores, classes) -> (keep, new_scores or None)`` in place of its NMS.

    ``detector`` is a Detectron2 ``DenseDetector`` (its ``_decode_multi_level_predictions``
    decodes the top candidates of every level above ``test_score_thresh``).

    Returns:
        Instances with pred_boxes, scores (the new scores when the suppression rescored),
        pred_classes; at most ``detector.max_detections_per_image``.
    """
    pred = detector._decode_multi_level_predictions(
        anchors,
        box_cls,
        box_delta,
        detector.test_score_thresh,
        detector.test_topk_candidates,
        image_size,
    )
    keep, new_scores = suppress(pred.pred_boxes.tensor, pred.scores, pred.pred_classes)
    top = detector.max_detections_per_image
    keep = keep[:top]
    result = pred[keep]
    if new_scores is not None:
        result.scores = new_scores[:top]
    return result
