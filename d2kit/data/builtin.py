"""Register the synthetic datasets with Detectron2's catalogs (done on ``import d2kit``).

Registered names (all COCO-style, ``evaluator_type="coco"``):

=========================  ===================================================================
``synth_shapes_train``      400 images, 1-4 shapes each, 3 classes, instance masks
``synth_shapes_val``        100 held-out images of the same generator (another seed)
``synth_shapes_val_mini``   the first 8 images of ``synth_shapes_val`` (fast tests)
``synth_crowd_train``       200 dense scenes, 50-300 overlapping objects each, 2 classes
``synth_crowd_val``         50 held-out dense scenes
``synth_crowd_val_mini``    the first 8 images of ``synth_crowd_val``
=========================  ===================================================================

Referring-expression datasets (RefCOCO layout, read by :func:`d2kit.data.load_refcoco`,
``evaluator_type="refcoco"``; dicts carry a ``refs`` list):

=========================  ===================================================================
``synth_referring_train``   400 scenes of 3-6 shapes, 1-3 refs each, 2-3 sentences per ref
``synth_referring_val``     60 held-out scenes, refs to any class
``synth_referring_testA``   60 scenes whose refs all refer to circles
``synth_referring_testB``   60 scenes whose refs all refer to squares or triangles
=========================  ===================================================================

Files are generated on first use (see :mod:`d2kit.data.synthetic` and
:mod:`d2kit.data.referring`). The real NEON tree-crown splits ``neon_trees_{train,val,test}`` are
registered here too; they are fetched and tiled on first load (see :mod:`d2kit.data.neon`).
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..paths import datasets_root
from .neon import register_neon_trees
from .refcoco import load_refcoco, refcoco_metadata
from .referring import (
    REFERRING_CLASSES,
    REFERRING_SPLITS,
    SYNTH_REFERRING_DATASET,
    SYNTH_REFERRING_SPEC,
    ensure_synth_referring,
)
from .synthetic import SYNTH_SPECS, ensure_synthetic, split_dir

__all__ = ["register_synthetic_datasets", "register_referring_datasets", "MINI_SUBSET_SIZE"]

MINI_SUBSET_SIZE = 8


def _register(name: str, base: str, subset: int | None) -> None:
    spec = SYNTH_SPECS[base]

    def load():
        json_file, image_root = ensure_synthetic(base, subset=subset)
        return load_coco_json(json_file, image_root, name)

    json_name = "annotations.json" if subset is None else f"annotations_first{subset}.json"
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(spec.classes),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(spec.classes))},
        json_file=os.path.join(split_dir(base), json_name),
        image_root=os.path.join(split_dir(base), "images"),
        evaluator_type="coco",
        synthetic_spec=spec,
    )


def _load_synth_referring(split: str) -> list[dict]:
    root = ensure_synth_referring()
    return load_refcoco(root, SYNTH_REFERRING_DATASET, "unc", split)


def register_referring_datasets() -> None:
    """Register ``synth_referring_{train,val,testA,testB}`` (idempotent; generated on load)."""
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(REFERRING_CLASSES)]
    for split in REFERRING_SPLITS:
        name = f"{SYNTH_REFERRING_DATASET}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda s=split: _load_synth_referring(s))
        # the same metadata register_refcoco would set for these files
        meta = refcoco_metadata(datasets_root(), SYNTH_REFERRING_DATASET, "unc", split, categories)
        MetadataCatalog.get(name).set(synthetic_spec=SYNTH_REFERRING_SPEC, **meta)


def register_synthetic_datasets() -> None:
    """Register every synthetic split, the referring ones included, and the NEON tree crowns
    (idempotent)."""
    for base in SYNTH_SPECS:
        names = {base: None}
        if base.endswith("_val"):
            names[f"{base}_mini"] = MINI_SUBSET_SIZE
        for name, subset in names.items():
            if name not in DatasetCatalog.list():
                _register(name, base, subset)
    register_referring_datasets()
    if "neon_trees_train" not in DatasetCatalog.list():
        register_neon_trees()  # real NEON tree crowns, fetched on first load (see d2kit.data.neon)
