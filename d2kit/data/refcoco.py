"""RefCOCO / RefCOCO+ / RefCOCOg (and the synthetic stand-in) in the ``refer`` toolkit's layout.

Files under ``root`` (lichengunc/refer's ``data/`` folder)::

    <root>/<dataset>/refs(<split_by>).p      pickle (Python 2 or 3) of a list of ref dicts
    <root>/<dataset>/instances.json          COCO json: images, annotations, categories
    <root>/images/mscoco/images/train2014/   the images named in instances.json

==============  ==========  ============================  ==========================================
dataset         split_by    splits in the refs             registered names
==============  ==========  ============================  ==========================================
``refcoco``     ``unc``     train, val, testA, testB       ``refcoco_unc_{train,val,testA,testB}``
``refcoco+``    ``unc``     train, val, testA, testB       ``refcoco+_unc_{train,val,testA,testB}``
``refcocog``    ``umd``     train, val, test               ``refcocog_umd_{train,val,test}``
``refcocog``    ``google``  train, val                     ``refcocog_google_{train,val}``
==============  ==========  ============================  ==========================================

A ref (one referred object, several expressions for it) looks like::

    {"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "split": "train", "category_id": 1,
     "sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg",
     "sentences": [{"sent_id": 0, "sent": "the lady with the blue shirt", "raw": "...",
                    "tokens": ["the", "lady", "with", "the", "blue", "shirt"]}, ...]}

It has no box: ``ann_id`` is joined with instances.json. Split selection follows
``REFER.getRefIds``: ``train``/``val`` (and any unknown name) match exactly, ``testA``/``testB``/
``testC`` select refs whose split string contains the last letter (so a ref of split ``"testAB"``
is in both testA and testB), ``test`` selects refs whose split string contains ``"test"``.

Missing or malformed files raise ``FileNotFoundError``/``ValueError`` naming the file, the field
and the ref.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = [
    "load_refcoco",
    "register_refcoco",
    "refcoco_metadata",
    "refcoco_splits",
    "ref_in_split",
    "REFER_IMAGE_DIR",
]

#: Where the ``refer`` layout keeps the COCO train2014 images, relative to the root.
REFER_IMAGE_DIR = os.path.join("images", "mscoco", "images", "train2014")

REF_FIELDS = ("ref_id", "ann_id", "image_id", "split", "sentences", "category_id")
SENTENCE_FIELDS = ("sent_id", "sent", "tokens")
ANNOTATION_FIELDS = ("id", "image_id", "bbox", "category_id")
IMAGE_FIELDS = ("id", "file_name", "height", "width")
REF_FORMAT = (
    "a list of dicts with fields " + ", ".join(REF_FIELDS) + "; each sentence a dict with "
    + ", ".join(SENTENCE_FIELDS)
)  # fmt: skip
_SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")


def _paths(root: str, dataset: str, split_by: str) -> tuple[str, str, str]:
    """(refs_file, instances_file, image_root) of the refer layout."""
    data_dir = os.path.join(root, dataset)
    return (
        os.path.join(data_dir, f"refs({split_by}).p"),
        os.path.join(data_dir, "instances.json"),
        os.path.join(root, REFER_IMAGE_DIR),
    )


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _as_str(obj):
    """Decode ``bytes`` left by a pickle written with Python 3 bytes (recursively)."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_as_str(k): _as_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_str(v) for v in obj)
    return obj


def _load_pickle(path: str):
    """Load a Python 2 or 3 pickle; Python 2 ``str`` becomes ``str``.

    UTF-8 first (ASCII data, the usual case, loads identically either way); Latin-1 as the
    released Ref-NMS code does when the bytes are not UTF-8.
    """
    last_error: Exception | None = None
    for encoding in ("utf-8", "latin1"):
        try:
            with open(path, "rb") as f:
                return _as_str(pickle.load(f, encoding=encoding))
        except UnicodeDecodeError as e:
            last_error = e
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                KeyError, TypeError, ValueError) as e:  # fmt: skip
            raise ValueError(f"{path}: malformed refs pickle ({e!r}); expected {REF_FORMAT}") from e
    raise ValueError(f"{path}: cannot decode the pickle's strings ({last_error!r})")


def _ref_label(ref: dict, index: int) -> str:
    return f"ref #{index}" + (f" (ref_id={ref['ref_id']!r})" if "ref_id" in ref else "")


def _read_refs(refs_file: str) -> list[dict]:
    """The refs of ``refs_file``, every field checked.

    Returns:
        the pickled list (dicts with at least ``REF_FIELDS``; ``split`` a str, ``sentences`` a
        non-empty list of dicts with ``SENTENCE_FIELDS``, ``tokens`` a list of str).
    """
    _require_file(refs_file, "RefCOCO refs pickle")
    refs = _load_pickle(refs_file)
    if not isinstance(refs, list):
        raise ValueError(
            f"{refs_file}: the pickle holds a {type(refs).__name__}; expected {REF_FORMAT}"
        )
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ValueError(f"{refs_file}: ref #{index} is a {type(ref).__name__}, not a dict")
        label = _ref_label(ref, index)
        for field in REF_FIELDS:
            if field not in ref:
                raise ValueError(
                    f"{refs_file}: {label} has no field {field!r}; expected {REF_FORMAT}"
                )
        if not isinstance(ref["split"], str):
            raise ValueError(f"{refs_file}: {label} field 'split' is {ref['split']!r}, not a str")
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(
                f"{refs_file}: {label} field 'sentences' must be a non-empty list, got "
                f"{sentences!r}"
            )
        for s_index, sent in enumerate(sentences):
            where = f"{refs_file}: {label} sentence #{s_index}"
            if not isinstance(sent, dict):
                raise ValueError(f"{where} is a {type(sent).__name__}, not a dict")
            for field in SENTENCE_FIELDS:
                if field not in sent:
                    raise ValueError(f"{where} has no field {field!r}; expected {REF_FORMAT}")
            if not isinstance(sent["sent"], str):
                raise ValueError(f"{where} field 'sent' is {sent['sent']!r}, not a str")
            tokens = sent["tokens"]
            if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
                raise ValueError(f"{where} field 'tokens' is {tokens!r}, not a list of str")
        if "context_ann_ids" in ref and not isinstance(ref["context_ann_ids"], (list, tuple)):
            raise ValueError(f"{refs_file}: {label} field 'context_ann_ids' must be a list")
    return refs


def _read_instances(instances_file: str) -> dict:
    """instances.json, checked: ``images``, ``annotations``, ``categories`` and their fields."""
    _require_file(instances_file, "RefCOCO instances.json")
    try:
        with open(instances_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{instances_file}: not valid JSON ({e})") from e
    if not isinstance(coco, dict):
        raise ValueError(
            f"{instances_file}: expected a COCO json object, got {type(coco).__name__}"
        )
    for key, fields in (("images", IMAGE_FIELDS), ("annotations", ANNOTATION_FIELDS),
                        ("categories", ("id", "name"))):  # fmt: skip
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{instances_file}: no list field {key!r} (COCO format expected)")
        for index, record in enumerate(coco[key]):
            for field in fields:
                if not isinstance(record, dict) or field not in record:
                    raise ValueError(
                        f"{instances_file}: {key}[{index}] has no field {field!r}; "
                        f"expected fields {', '.join(fields)}"
                    )
    return coco


def ref_in_split(ref_split: str, split: str) -> bool:
    """Whether a ref whose split string is ``ref_split`` belongs to ``split`` (REFER's rule)."""
    if split in ("train", "val"):
        return ref_split == split
    if split == "test":
        return "test" in ref_split
    if len(split) == 5 and split.startswith("test") and split[-1].isupper():
        return split[-1] in ref_split
    return ref_split == split


def refcoco_splits(split_strings: Iterable[str]) -> list[str]:
    """The split names to register for these ref split strings.

    ``"testAB"`` gives testA and testB; ``"test"`` is registered only when a ref's split is exactly
    ``"test"`` (RefCOCOg umd), as RefCOCO's unc eval splits are testA/testB, not their union.
    Order: train, val, test, testA, testB, testC, then any other name alphabetically.
    """
    names: set[str] = set()
    for value in split_strings:
        letters = value[4:]
        if value.startswith("test") and letters and letters.isalpha() and letters.isupper():
            names.update(f"test{c}" for c in letters)
        else:
            names.add(value)
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + sorted(names - set(known))


def _convert_segmentation(segm, where: str):
    """COCO polygons/RLE -> what Detectron2 reads; None when nothing usable is left."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE -> compressed
            from pycocotools import mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])
        return segm
    if isinstance(segm, list):
        # Detectron2 needs >= 3 points per polygon; drop degenerate ones as its COCO loader does
        polys = [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
        return polys or None
    raise ValueError(f"{where}: field 'segmentation' is neither polygons nor RLE")


def load_refcoco(root: str, dataset: str = "refcoco", split_by: str = "unc",
                 split: str = "train") -> list[dict]:  # fmt: skip
    """Dataset dicts of one split: one per image that has refs in ``split``.

    Args:
        root: the refer ``data/`` folder (see the module docstring for the layout).
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or a folder in the same layout.
        split_by: ``unc``, ``umd``, ``google``: the ``refs(<split_by>).p`` file.
        split: as in ``REFER.getRefIds`` (see :func:`ref_in_split`).

    Returns:
        dicts with ``file_name`` (str), ``image_id`` (int), ``height``, ``width`` (int),
        ``annotations`` (every COCO annotation of the image: ``id`` (the COCO ann id),
        ``bbox`` [x0, y0, x1, y1] float, ``bbox_mode`` XYXY_ABS, ``category_id`` contiguous int in
        [0, K), ``iscrowd`` 0/1, ``segmentation`` when present) and ``refs``: per ref of this image
        in ``split`` a dict ``ref_id``, ``ann_id`` (int, an ``annotations[i]["id"]``),
        ``category_id`` (contiguous), ``sentences`` (list of ``sent_id``, ``sent``, ``tokens``,
        plus ``raw`` / ``context_ann_ids`` when the file has them), and ``context_ann_ids``
        (list of int) when the file has it. Images keep the order of their first ref.
    """
    refs_file, instances_file, image_root = _paths(root, dataset, split_by)
    refs = _read_refs(refs_file)
    coco = _read_instances(instances_file)
    cat_ids = sorted(c["id"] for c in coco["categories"])
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    images = {img["id"]: img for img in coco["images"]}
    anns = {ann["id"]: ann for ann in coco["annotations"]}
    anns_per_image: dict = {}
    for ann in coco["annotations"]:
        anns_per_image.setdefault(ann["image_id"], []).append(ann)

    records: dict = {}
    for index, ref in enumerate(refs):
        if not ref_in_split(ref["split"], split):
            continue
        label = f"{refs_file}: {_ref_label(ref, index)}"
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise ValueError(
                f"{label} field 'ann_id': {ref['ann_id']!r} is not in {instances_file}"
            )
        if ann["image_id"] != ref["image_id"]:
            raise ValueError(
                f"{label} field 'image_id' is {ref['image_id']!r} but annotation {ann['id']} in "
                f"{instances_file} belongs to image {ann['image_id']!r}"
            )
        if ref["category_id"] not in contiguous:
            raise ValueError(
                f"{label} field 'category_id': {ref['category_id']!r} is not a category of "
                f"{instances_file}"
            )
        for ctx_id in ref.get("context_ann_ids", ()):
            if ctx_id not in anns or anns[ctx_id]["image_id"] != ref["image_id"]:
                raise ValueError(
                    f"{label} field 'context_ann_ids': {ctx_id!r} is not an annotation of image "
                    f"{ref['image_id']!r} in {instances_file}"
                )
        record = records.get(ref["image_id"])
        if record is None:
            record = records[ref["image_id"]] = _image_record(
                ref["image_id"], images, anns_per_image, contiguous, image_root, instances_file
            )
        sentences = []
        for sent in ref["sentences"]:
            out = {"sent_id": sent["sent_id"], "sent": sent["sent"], "tokens": list(sent["tokens"])}
            for extra in ("raw", "context_ann_ids"):
                if extra in sent:
                    out[extra] = sent[extra]
            sentences.append(out)
        out_ref = {
            "ref_id": ref["ref_id"],
            "ann_id": ref["ann_id"],
            "category_id": contiguous[ref["category_id"]],
            "sentences": sentences,
        }
        if "context_ann_ids" in ref:
            out_ref["context_ann_ids"] = list(ref["context_ann_ids"])
        record["refs"].append(out_ref)
    return list(records.values())


def _image_record(image_id, images, anns_per_image, contiguous, image_root, instances_file):
    image = images.get(image_id)
    if image is None:
        raise ValueError(f"{instances_file}: no image with id {image_id!r} (named by a ref)")
    annotations = []
    for ann in anns_per_image.get(image_id, []):
        where = f"{instances_file}: annotation {ann['id']!r}"
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{where}: field 'bbox' must be [x, y, w, h], got {ann['bbox']!r}"
            ) from e
        if ann["category_id"] not in contiguous:
            raise ValueError(f"{where}: field 'category_id' {ann['category_id']!r} is unknown")
        obj = {
            "id": ann["id"],
            "bbox": [x, y, x + w, y + h],  # XYWH -> XYXY, no -1 (as ref-nms's xywh_to_xyxy)
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": contiguous[ann["category_id"]],
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        if ann.get("segmentation"):
            segm = _convert_segmentation(ann["segmentation"], where)
            if segm is not None:
                obj["segmentation"] = segm
        annotations.append(obj)
    return {
        "file_name": os.path.join(image_root, image["file_name"]),
        "image_id": image_id,
        "height": int(image["height"]),
        "width": int(image["width"]),
        "annotations": annotations,
        "refs": [],
    }


def register_refcoco(root: str, dataset: str = "refcoco", split_by: str = "unc",
                     name_prefix: str | None = None) -> list[str]:  # fmt: skip
    """Register every split present in ``<root>/<dataset>/refs(<split_by>).p``.

    Names are ``<dataset>_<split_by>_<split>`` (e.g. ``refcoco_unc_testA``, ``refcocog_umd_test``),
    or ``<name_prefix>_<split>``. Metadata: ``thing_classes`` (instances.json categories sorted
    by id), ``thing_dataset_id_to_contiguous_id``, ``evaluator_type="refcoco"``, ``refs_file``,
    ``instances_file``, ``image_root``, ``refer_root``/``refer_dataset``/``refer_split_by``/
    ``refer_split``. The files are read now (to know the splits and classes) and again on load.

    Re-registering a name from the same files is a no-op; from other files it is an error.

    Returns:
        the registered names, in the order train, val, test, testA, testB, testC, others.
    """
    refs_file, instances_file, _ = _paths(root, dataset, split_by)
    refs = _read_refs(refs_file)
    coco = _read_instances(instances_file)
    prefix = name_prefix if name_prefix is not None else f"{dataset}_{split_by}"
    source_keys = ("refer_root", "refer_dataset", "refer_split_by", "refer_split")
    names = []
    for split in refcoco_splits(ref["split"] for ref in refs):
        name = f"{prefix}_{split}"
        names.append(name)
        meta = refcoco_metadata(root, dataset, split_by, split, coco["categories"])
        source = {k: meta[k] for k in source_keys}
        if name in DatasetCatalog.list():
            registered = {k: MetadataCatalog.get(name).get(k) for k in source_keys}
            if registered == source:
                continue
            raise ValueError(
                f"dataset {name!r} is already registered from {registered} and cannot be "
                f"registered again from {source}; call DatasetCatalog.remove({name!r}) and "
                f"MetadataCatalog.remove({name!r}) first, or pass another name_prefix"
            )
        DatasetCatalog.register(name, lambda s=split: load_refcoco(root, dataset, split_by, s))
        MetadataCatalog.get(name).set(**meta)
    return names


def refcoco_metadata(root: str, dataset: str, split_by: str, split: str,
                     categories: list[dict]) -> dict:  # fmt: skip
    """The MetadataCatalog fields of a registered refer split (``categories``: COCO records)."""
    refs_file, instances_file, image_root = _paths(root, dataset, split_by)
    categories = sorted(categories, key=lambda c: c["id"])
    return dict(
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        evaluator_type="refcoco",
        refs_file=os.path.abspath(refs_file),
        instances_file=os.path.abspath(instances_file),
        image_root=os.path.abspath(image_root),
        refer_root=os.path.abspath(root),
        refer_dataset=dataset,
        refer_split_by=split_by,
        refer_split=split,
    )
