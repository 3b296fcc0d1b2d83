"""Pseudo ground truth of Ref-NMS: the critical objects of an expression.

RefCOCO annotates only the referent; Ref-NMS also needs the objects the expression mentions
("Training Objectives for Ref-NMS": spaCy nouns, cosine of GloVe embeddings with the categories of
the image's COCO regions, threshold γ; the pseudo ground truths plus the referent are the
foreground boxes). The released rule (ref_nms.md §2.2, ``tools/build_ctxdb.py``), per sentence:

1. nouns = tokens tagged NOUN/PROPN/PRON/NUM (:func:`ref_nms.words.extract_nouns`);
2. an annotation of the image is *matched* if its category name's best word cosine with any noun
   is > γ (:func:`ref_nms.words.matching_categories`);
3. a matched annotation whose IoU with the referent's box is > 0.9 is the referent or a duplicate
   of it (``gt_hit``), not a context object; every other matched one is a context object;
4. foreground = [referent] + context objects: the referent is always in, matched or not.

On the synthetic referring data the mentioned objects are known, so the rule can be scored
(:func:`pseudo_gt_precision_recall`), which the paper cannot do on RefCOCO.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .words import (
    DEFAULT_NOUN_POS,
    WordVectors,
    _check_gamma,
    _check_words,
    extract_nouns,
    matching_categories,
)

__all__ = [
    "PseudoGroundTruth",
    "box_iou_xyxy",
    "critical_objects",
    "mean_precision_recall",
    "pseudo_ground_truth",
    "pseudo_gt_precision_recall",
]

# BoxMode values (detectron2.structures.BoxMode) accepted in annotations; COCO json is XYWH_ABS.
_XYXY_ABS, _XYWH_ABS = 0, 1


@dataclass(frozen=True)
class PseudoGroundTruth:
    """The critical objects of one expression in one image; indices are positions in the
    image's ``annotations`` list.

    Attributes:
        referent: position of the referent.
        context: positions of the context objects (matched, IoU with the referent <= 0.9), in
            annotation order.
        duplicates: positions of the matched annotations with IoU > 0.9 to the referent (the
            referent itself when its category matched a noun).
        nouns: the nouns used (lower case when extracted from a sentence).
        categories: the matched category names.
    """

    referent: int
    context: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    nouns: list[str] = field(default_factory=list)
    categories: set[str] = field(default_factory=set)

    @property
    def referent_matched(self) -> bool:
        """The release's ``gt_hit``: a noun matched the referent's box (ref_nms.md §2.2 step 6)."""
        return bool(self.duplicates)

    @property
    def foreground(self) -> list[int]:
        """[referent] + context: the foreground boxes of the losses (Eqs. (3)-(4))."""
        return [self.referent] + list(self.context)


def box_iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU in [0, 1] of two boxes (x1, y1, x2, y2), continuous coordinates, in float64; 0 when
    the union is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _box_xyxy(ann: Mapping, i: int) -> tuple[float, float, float, float]:
    where = f"annotations[{i}]"
    if "bbox" not in ann:
        raise ValueError(f"{where} has no 'bbox'")
    box = ann["bbox"]
    try:
        box = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"{where}['bbox'] must be 4 numbers, got {box!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"{where}['bbox'] must be 4 finite numbers, got {box!r}")
    mode = int(ann.get("bbox_mode", _XYWH_ABS))
    if mode == _XYWH_ABS:
        x, y, w, h = box
        return (x, y, x + w, y + h)
    if mode == _XYXY_ABS:
        return tuple(box)
    raise ValueError(
        f"{where}['bbox_mode'] must be BoxMode.XYWH_ABS (COCO, the default) or XYXY_ABS, got "
        f"{ann['bbox_mode']!r}"
    )


def _category_name(ann: Mapping, i: int, category_names) -> str:
    if "category_id" not in ann:
        raise ValueError(f"annotations[{i}] has no 'category_id'")
    cid = ann["category_id"]
    try:
        name = category_names[cid]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"annotations[{i}]['category_id'] = {cid!r} is not in category_names"
        ) from None
    if not isinstance(name, str):
        raise ValueError(f"category_names[{cid!r}] must be a str, got {name!r}")
    return name


def pseudo_ground_truth(
    sentence_or_nouns: str | Sequence[str],
    annotations: Sequence[Mapping],
    category_names: Mapping[int, str] | Sequence[str],
    wv: WordVectors,
    gamma: float = 0.4,
    pos: Sequence[str] = DEFAULT_NOUN_POS,
    *,
    referent: int,
    duplicate_iou: float = 0.9,
    strict: bool = False,
) -> PseudoGroundTruth:
    """The released pseudo-ground-truth rule (module docstring; ref_nms.md §2.2) for one sentence.

    Args:
        sentence_or_nouns: the expression (str; nouns extracted with spaCy by ``pos``) or its
            nouns (list of str, used as given).
        annotations: all annotations of the image (crowd ones included, as released), dicts with
            ``category_id`` and ``bbox`` (COCO ``[x, y, w, h]``, or ``[x1, y1, x2, y2]`` with
            ``bbox_mode = BoxMode.XYXY_ABS``).
        category_names: category_id -> name (a dict for COCO's ids 1..90, or a list for
            contiguous ids such as Detectron2's ``thing_classes``).
        wv: the word vectors.
        gamma: γ in [-1, 1] (paper: 0.4); a match needs cosine > γ.
        pos: POS tags kept as nouns (used only for a sentence).
        referent: position of the referent in ``annotations`` (keyword only).
        duplicate_iou: IoU in [0, 1] with the referent's box above which a matched annotation
            counts as the referent, not context (released: 0.9; the comparison is strict).
        strict: raise KeyError for a category word missing from ``wv`` (released behaviour)
            instead of skipping it.

    Returns:
        PseudoGroundTruth.
    """
    gamma = _check_gamma(gamma)
    if isinstance(sentence_or_nouns, str):
        nouns = extract_nouns(sentence_or_nouns, pos)
    elif isinstance(sentence_or_nouns, (list, tuple)):
        nouns = _check_words(sentence_or_nouns, "sentence_or_nouns")
    else:
        raise ValueError(
            "sentence_or_nouns must be a str or a list of str, got "
            f"{type(sentence_or_nouns).__name__}"
        )
    if isinstance(annotations, (str, bytes, Mapping)) or not isinstance(annotations, Sequence):
        raise ValueError(f"annotations must be a list of dicts, got {type(annotations).__name__}")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, Mapping):
            raise ValueError(f"annotations[{i}] must be a dict, got {type(ann).__name__}")
    if isinstance(referent, bool) or not isinstance(referent, int):
        raise ValueError(f"referent must be an int position in annotations, got {referent!r}")
    if not 0 <= referent < len(annotations):
        raise ValueError(
            f"referent = {referent} is not a position in annotations (length {len(annotations)})"
        )
    if isinstance(duplicate_iou, bool) or not isinstance(duplicate_iou, (int, float)):
        raise ValueError(f"duplicate_iou must be a number in [0, 1], got {duplicate_iou!r}")
    if not 0.0 <= duplicate_iou <= 1.0:
        raise ValueError(f"duplicate_iou must be in [0, 1], got {duplicate_iou}")

    names = [_category_name(ann, i, category_names) for i, ann in enumerate(annotations)]
    boxes = [_box_xyxy(ann, i) for i, ann in enumerate(annotations)]
    # Step 2: score each category present in the image (strict > γ).
    matched = matching_categories(nouns, sorted(set(names)), wv, gamma, strict=strict)
    context, duplicates = [], []
    for i, (name, box) in enumerate(zip(names, boxes)):
        if name not in matched:
            continue
        # Step 3: IoU > 0.9 with the referent -> the referent itself or a duplicate of it.
        if box_iou_xyxy(box, boxes[referent]) > duplicate_iou:
            duplicates.append(i)
        else:
            context.append(i)
    return PseudoGroundTruth(
        referent=referent,
        context=context,
        duplicates=duplicates,
        nouns=list(nouns),
        categories=set(matched),
    )


def critical_objects(
    sentence_or_nouns: str | Sequence[str],
    annotations: Sequence[Mapping],
    category_names: Mapping[int, str] | Sequence[str],
    wv: WordVectors,
    gamma: float = 0.4,
    pos: Sequence[str] = DEFAULT_NOUN_POS,
    *,
    referent: int,
    duplicate_iou: float = 0.9,
    strict: bool = False,
) -> list[int]:
    """The foreground of one expression: positions in ``annotations`` of the referent (first,
    always) and of its context objects, in annotation order. Arguments as for
    :func:`pseudo_ground_truth`; ``[annotations[i]["id"] for i in ...]`` gives COCO ann ids."""
    return pseudo_ground_truth(
        sentence_or_nouns,
        annotations,
        category_names,
        wv,
        gamma,
        pos,
        referent=referent,
        duplicate_iou=duplicate_iou,
        strict=strict,
    ).foreground


def _id_set(ids, name: str) -> set:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"{name} must be a collection of ids, got {type(ids).__name__}")
    ids = list(ids)
    for x in ids:
        if not isinstance(x, Hashable):
            raise ValueError(f"{name} must contain hashable ids, got {x!r}")
    return set(ids)


def pseudo_gt_precision_recall(pred_ids: Iterable, true_ids: Iterable) -> tuple[float, float]:
    """Precision and recall of the pseudo context objects of one expression against the true ones.

    Pass context objects only, without the referent (it is always in the foreground, and would
    count as a hit on both sides). Ids are compared as sets (repeats ignored).

    Returns:
        (precision, recall), each in [0, 1] or NaN when undefined: precision = |P ∩ T| / |P| is
        NaN when nothing was predicted (P empty); recall = |P ∩ T| / |T| is NaN when the
        expression mentions no context object (T empty). NaN means "skip this expression" when
        averaging, as the release's context recall skips expressions without context
        (ref_nms.md §6 #22): use :func:`mean_precision_recall`.
    """
    pred = _id_set(pred_ids, "pred_ids")
    true = _id_set(true_ids, "true_ids")
    hits = len(pred & true)
    precision = hits / len(pred) if pred else math.nan
    recall = hits / len(true) if true else math.nan
    return precision, recall


def mean_precision_recall(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Mean precision and mean recall over expressions, each skipping its NaNs (the undefined
    cases of :func:`pseudo_gt_precision_recall`); NaN when no value is defined."""
    precisions, recalls = [], []
    for p, r in pairs:
        if not math.isnan(p):
            precisions.append(p)
        if not math.isnan(r):
            recalls.append(r)
    mean_p = sum(precisions) / len(precisions) if precisions else math.nan
    mean_r = sum(recalls) / len(recalls) if recalls else math.nan
    return mean_p, mean_r
