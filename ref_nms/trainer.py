"""Training and evaluation of Ref-NMS's relatedness module on top of a frozen, cached first stage.

:class:`RefNMSTrainer` is d2kit's Trainer (Detectron2's DefaultTrainer: SimpleTrainer loop,
EventStorage, DetectionCheckpointer, periodic checkpoints, EvalHook, metric writers) with the
Ref-NMS parts:

- ``build_model``: the ``RefNMS`` meta-architecture (e_q + relatedness module) with its fixed
  word embeddings (vocabulary of ``VOCAB_DATASETS``, word vectors of ``WORD_VECTORS``);
- ``build_optimizer``: Adam (paper: "Adam ... learning rate ... 5e-3" for everything but the
  head network, here the frozen detector's box head) at ``SOLVER.BASE_LR``, weight decay
  ``SOLVER.WEIGHT_DECAY`` (released: 5e-4 and 1e-3), with Detectron2's gradient clipping keys;
- ``build_train_loader``: every sentence of ``DATASETS.TRAIN`` (the first ``MAX_TRAIN_IMAGES``
  images of each) with its pseudo ground truth, ``SOLVER.IMS_PER_BATCH`` expressions per
  batch, the images' first-stage candidates cached on first use;
- ``build_test_loader`` + ``build_evaluator``: one image and all its sentences per step,
  :class:`ref_nms.evaluation.RefNMSEvaluator` (Table 1).

The learning-rate schedule is Detectron2's (``SOLVER.STEPS``, warm-up); the release's
ReduceLROnPlateau on the val loss is not reproduced.
"""

from __future__ import annotations

import logging

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data import build_detection_train_loader as _d2_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.modeling import build_model as _d2_build_model
from detectron2.solver.build import maybe_add_gradient_clipping

from d2kit.engine import Trainer

from .expressions import (
    CandidateStore,
    TestImageMapper,
    TrainExpressionMapper,
    build_expressions,
    load_image_dicts,
    register_refer_datasets,
    word_lookup_from_cfg,
    word_vectors_from_cfg,
)
from .first_stage import build_first_stage_cache

__all__ = ["RefNMSTrainer", "build_expression_dataset", "build_test_items"]

logger = logging.getLogger(__name__)


def _expressions_of(cfg, names, max_images: int, min_candidates: int) -> list[list[dict]]:
    """Expressions per image (with ``candidates_file``) of the datasets ``names``."""
    register_refer_datasets(cfg)
    c = cfg.MODEL.REF_NMS
    wv = word_vectors_from_cfg(cfg)
    out = []
    for name in names:
        dicts = [d for _, d in load_image_dicts([name], max_images)]
        files = build_first_stage_cache(cfg, dicts, min_candidates)
        classes = MetadataCatalog.get(name).thing_classes
        per_image = build_expressions(
            dicts, classes, wv, c.GAMMA, tuple(c.NOUN_POS), c.REFERENT_DUPLICATE_IOU
        )
        for d, f, exprs in zip(dicts, files, per_image):
            for e in exprs:
                e["candidates_file"] = f
            out.append(
                {
                    "image_id": d["image_id"],
                    "file_name": d["file_name"],
                    "candidates_file": f,
                    "dataset": name,
                    "expressions": exprs,
                }  # fmt: skip
            )
    return out


def build_expression_dataset(cfg) -> list[dict]:
    """Every training expression (``DATASETS.TRAIN``), with pseudo ground truth and the cache file
    of its image's candidates (built now if missing)."""
    images = _expressions_of(
        cfg, cfg.DATASETS.TRAIN, cfg.MODEL.REF_NMS.MAX_TRAIN_IMAGES,
        cfg.MODEL.REF_NMS.MIN_CANDIDATES_TRAIN,
    )  # fmt: skip
    return [e for img in images for e in img["expressions"]]


def build_test_items(cfg, dataset_name: str) -> list[dict]:
    """One item per image of ``dataset_name`` (its first ``MAX_TEST_IMAGES``):
    ``{"image_id", "file_name", "candidates_file", "dataset", "expressions"}``."""
    return _expressions_of(
        cfg, [dataset_name], cfg.MODEL.REF_NMS.MAX_TEST_IMAGES,
        cfg.MODEL.REF_NMS.MIN_CANDIDATES_TEST,
    )  # fmt: skip


class RefNMSTrainer(Trainer):
    """The Ref-NMS trainer (module docstring)."""

    @classmethod
    def build_model(cls, cfg):
        register_refer_datasets(cfg)
        model = _d2_build_model(cfg)
        model.set_word_lookup(word_lookup_from_cfg(cfg))
        logger.info(
            f"Ref-NMS: {sum(p.numel() for p in model.parameters())} trainable parameters, "
            f"vocabulary of {len(model.encoder.lookup)} words"
        )
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.Adam)
        return optimizer(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_train_loader(cls, cfg):
        expressions = build_expression_dataset(cfg)
        if not expressions:
            raise ValueError(f"no training expression in {cfg.DATASETS.TRAIN}")
        logger.info(f"Ref-NMS: {len(expressions)} training expressions")
        return _d2_train_loader(
            expressions,
            mapper=TrainExpressionMapper(CandidateStore()),
            sampler=TrainingSampler(len(expressions)),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            build_test_items(cfg, dataset_name),
            mapper=TestImageMapper(),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from .evaluation import RefNMSEvaluator

        return RefNMSEvaluator.from_cfg(cfg, dataset_name)
