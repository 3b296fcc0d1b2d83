"""Data of Ref-NMS training and evaluation: expressions with their pseudo ground truth, the
vocabulary and word lookup, and the mappers that attach each image's cached first-stage
candidates.

One *expression* is one sentence of one ref (the release trains and evaluates per sentence):

- ``image_id``, ``file_name``, ``ref_id``, ``sent_id``, ``ann_id`` (the referent's COCO id),
  ``category_id`` (contiguous), ``sent``, ``tokens``;
- ``referent_box``: [x1, y1, x2, y2];
- ``pseudo_context_ids`` / ``pseudo_context_boxes``: the critical objects other than the referent
  (:func:`ref_nms.pseudo_gt.pseudo_ground_truth`: spaCy nouns, word-vector cosine > γ with the
  categories of the image's annotations, IoU <= 0.9 with the referent), ``nouns``;
- ``foreground_boxes``: [referent] + pseudo context, the boxes of the losses' labels;
- ``true_context_ids`` / ``true_context_boxes``: the objects the sentence really mentions, when
  the data says so (the synthetic referring data: ``context_ann_ids`` per sentence); else None.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import OrderedDict

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from d2kit.data import register_refcoco
from d2kit.paths import datasets_root

from .first_stage import load_candidates
from .pseudo_gt import pseudo_ground_truth
from .relatedness import WordLookup, build_vocabulary
from .words import WordVectors, extract_nouns_batch, load_word_vectors

__all__ = [
    "CandidateStore",
    "TestImageMapper",
    "TrainExpressionMapper",
    "annotation_xyxy",
    "build_expressions",
    "load_image_dicts",
    "register_refer_datasets",
    "vocabulary_from_cfg",
    "word_lookup_from_cfg",
    "word_vectors_from_cfg",
]

logger = logging.getLogger(__name__)

#: Dataset names register_refer_datasets knows: <dataset>_<split_by>_<split>.
_REFER_NAME = re.compile(r"^(refcoco|refcoco\+|refcocog)_(unc|umd|google)_([A-Za-z]+)$")


def _dataset_names(cfg: CfgNode) -> list[str]:
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    names += list(cfg.MODEL.REF_NMS.VOCAB_DATASETS)
    return list(OrderedDict.fromkeys(names))


def register_refer_datasets(cfg: CfgNode) -> None:
    """Register the RefCOCO/RefCOCO+/RefCOCOg splits that ``cfg``'s datasets name and that are
    not registered yet, with :func:`d2kit.data.register_refcoco` from
    ``MODEL.REF_NMS.REFER_ROOT`` (``""``: d2kit's datasets root, ``$D2KIT_DATASETS`` or
    ``<repo>/datasets``)."""
    root = cfg.MODEL.REF_NMS.REFER_ROOT or datasets_root()
    done = set()
    for name in _dataset_names(cfg):
        if name in DatasetCatalog.list():
            continue
        m = _REFER_NAME.match(name)
        if m is None:
            continue  # build_*_loader raises detectron2's "not registered" error
        dataset, split_by = m.group(1), m.group(2)
        if (dataset, split_by) in done:
            continue
        registered = register_refcoco(root, dataset, split_by)
        done.add((dataset, split_by))
        logger.info(f"Registered {registered} from {root}")


def load_image_dicts(names, max_images: int = 0) -> list[tuple[str, dict]]:
    """(dataset name, image dict) of each dataset, the first ``max_images`` of each (0: all)."""
    out = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if max_images:
            dicts = dicts[:max_images]
        if dicts and "refs" not in dicts[0]:
            raise ValueError(
                f"dataset {name!r} has no 'refs' in its dicts: Ref-NMS needs a referring dataset "
                "(d2kit.data.register_refcoco or synth_referring_*)"
            )
        out += [(name, d) for d in dicts]
    return out


@functools.lru_cache(maxsize=4)
def _glove(path: str, words: frozenset) -> WordVectors:
    return load_word_vectors(path, vocab=words)


def word_vectors_from_cfg(cfg: CfgNode) -> WordVectors:
    """The word vectors of ``MODEL.REF_NMS.WORD_VECTORS``: ``""`` = the table shipped for the
    synthetic referring vocabulary; a GloVe text file is read once per process, keeping only the
    words of the configured datasets' sentences and category names."""
    path = cfg.MODEL.REF_NMS.WORD_VECTORS
    if not path:
        return load_word_vectors("")
    words = set()
    for name in _dataset_names(cfg):
        for c in MetadataCatalog.get(name).get("thing_classes", []):
            words.update(c.split())
        for d in DatasetCatalog.get(name):
            for ref in d.get("refs", []):
                for s in ref["sentences"]:
                    words.update(s["tokens"])
                    words.update(s["sent"].split())
    return _glove(path, frozenset(words))


def vocabulary_from_cfg(cfg: CfgNode, wv: WordVectors) -> list[str]:
    """The released vocabulary (:func:`ref_nms.relatedness.build_vocabulary`): the tokens of
    ``VOCAB_DATASETS`` (default DATASETS.TRAIN, all images) seen >= VOCAB_MIN_COUNT times and
    present in ``wv``; ``<unk>`` first."""
    names = list(cfg.MODEL.REF_NMS.VOCAB_DATASETS) or list(cfg.DATASETS.TRAIN)
    tokens = [
        s["tokens"]
        for _, d in load_image_dicts(names)
        for ref in d["refs"]
        for s in ref["sentences"]
    ]
    return build_vocabulary(tokens, wv, cfg.MODEL.REF_NMS.VOCAB_MIN_COUNT)


def word_lookup_from_cfg(cfg: CfgNode) -> WordLookup:
    """The fixed word embeddings of the expression encoder (:class:`WordLookup`); its dimension
    must be ``MODEL.REF_NMS.WORD_EMBED_DIM``."""
    wv = word_vectors_from_cfg(cfg)
    if wv.dim != cfg.MODEL.REF_NMS.WORD_EMBED_DIM:
        raise ValueError(
            f"the word vectors ({cfg.MODEL.REF_NMS.WORD_VECTORS or 'shipped synthetic table'}) "
            f"are {wv.dim}-d but MODEL.REF_NMS.WORD_EMBED_DIM is "
            f"{cfg.MODEL.REF_NMS.WORD_EMBED_DIM}"
        )
    return WordLookup(wv, vocabulary_from_cfg(cfg, wv))


def annotation_xyxy(ann: dict) -> list[float]:
    """A Detectron2 annotation's box as [x1, y1, x2, y2] (absolute pixels)."""
    mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
    return [float(v) for v in BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYXY_ABS)]


def build_expressions(
    dataset_dicts: list[dict],
    category_names,
    wv: WordVectors,
    gamma: float = 0.4,
    pos=("NOUN", "PROPN", "PRON", "NUM"),
    duplicate_iou: float = 0.9,
) -> list[list[dict]]:
    """The expressions of each image (module docstring), with their pseudo ground truth.

    Args:
        dataset_dicts: referring dataset dicts (``annotations`` with ``id``, ``refs``).
        category_names: contiguous id -> name (``thing_classes``).
        wv: the word vectors of the pseudo ground truth.
        gamma, pos, duplicate_iou: the rule's γ, POS tags and referent-duplicate IoU.

    Returns:
        one list of expression dicts per image dict, in order.
    """
    sentences = [s["sent"] for d in dataset_dicts for ref in d["refs"] for s in ref["sentences"]]
    nouns = iter(extract_nouns_batch(sentences, pos) if sentences else [])
    out = []
    for d in dataset_dicts:
        anns = d["annotations"]
        index = {a["id"]: i for i, a in enumerate(anns)}
        boxes = [annotation_xyxy(a) for a in anns]
        exprs = []
        for ref in d["refs"]:
            if ref["ann_id"] not in index:
                raise ValueError(
                    f"image {d['image_id']}: ref {ref.get('ref_id')} names annotation "
                    f"{ref['ann_id']}, which is not among the image's annotations"
                )
            referent = index[ref["ann_id"]]
            for s in ref["sentences"]:
                pgt = pseudo_ground_truth(
                    next(nouns), anns, category_names, wv, gamma, pos,
                    referent=referent, duplicate_iou=duplicate_iou,
                )  # fmt: skip
                true_ids = s.get("context_ann_ids", ref.get("context_ann_ids"))
                pseudo_ids = [anns[i]["id"] for i in pgt.context]
                exprs.append(
                    {
                        "image_id": d["image_id"],
                        "file_name": d["file_name"],
                        "ref_id": ref.get("ref_id"),
                        "sent_id": s["sent_id"],
                        "ann_id": ref["ann_id"],
                        "category_id": ref["category_id"],
                        "sent": s["sent"],
                        "tokens": list(s["tokens"]),
                        "nouns": list(pgt.nouns),
                        "referent_box": boxes[referent],
                        "pseudo_context_ids": pseudo_ids,
                        "pseudo_context_boxes": [boxes[i] for i in pgt.context],
                        "foreground_boxes": [boxes[i] for i in pgt.foreground],
                        "true_context_ids": None if true_ids is None else list(true_ids),
                        "true_context_boxes": (
                            None if true_ids is None else [boxes[index[i]] for i in true_ids]
                        ),
                    }
                )
        out.append(exprs)
    return out


class CandidateStore:
    """Reads cached first-stage files (:func:`ref_nms.first_stage.load_candidates`), keeping the
    most recently used ones in memory while their features (and pooled maps, if cached) take at
    most ``max_bytes`` (0: keep none)."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(item: dict) -> int:
        tensors = [item["features"]] + ([item["pooled"]] if "pooled" in item else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def __call__(self, path: str) -> dict:
        item = self._items.get(path)
        if item is not None:
            self._items.move_to_end(path)
            return item
        item = load_candidates(path)
        size = self._size(item)
        if size <= self.max_bytes:
            self._items[path] = item
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)
        return item


class TrainExpressionMapper:
    """Training: one expression -> ``{"expression": expr, "candidates": its image's cached
    candidates}`` (``expr["candidates_file"]``)."""

    def __init__(self, store: CandidateStore | None = None):
        self.store = store or CandidateStore()

    def __call__(self, expr: dict) -> dict:
        return {"expression": expr, "candidates": self.store(expr["candidates_file"])}


class TestImageMapper:
    """Evaluation: one image ``{"image_id", "candidates_file", "expressions"}`` -> the same with
    ``"candidates"``."""

    def __init__(self, store: CandidateStore | None = None):
        self.store = store or CandidateStore(max_bytes=0)

    def __call__(self, item: dict) -> dict:
        return dict(item, candidates=self.store(item["candidates_file"]))
