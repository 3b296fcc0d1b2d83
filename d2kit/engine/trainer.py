"""The Trainer every project shares: COCO evaluation on the test sets and DDP that works on CPU."""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..composed import check_composition_is_used
from ..data.overhead_aug import build_overhead_augmentation
from ..evaluation import DEFAULT_AP_IOUS, COCOEvaluatorAtIoUs

__all__ = ["Trainer", "ddp_device_ids"]


def ddp_device_ids(model: torch.nn.Module) -> list[int] | None:
    """``device_ids`` for DistributedDataParallel: the local GPU, or None for a CPU module.

    Detectron2's ``create_ddp_model`` defaults to ``[local_rank]``, which DDP rejects for a
    module on the CPU (gloo workers of ``launch(main, 2)`` on a machine without GPUs).
    """
    device = next(model.parameters()).device
    return [comm.get_local_rank()] if device.type == "cuda" else None


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation (plus AP at ``TEST.AP_AT_IOUS``) on every test set,
    CPU-safe DDP and the overhead-imagery augmentation (``INPUT.OVERHEAD_AUG``).

    Everything else (periodic checkpoints every ``SOLVER.CHECKPOINT_PERIOD``, ``resume_or_load``,
    evaluation every ``TEST.EVAL_PERIOD`` and after training, metric writers) is detectron2's.
    """

    def __init__(self, cfg):
        # Same construction as DefaultTrainer, except for the DDP wrapper's device_ids.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=ddp_device_ids(model))
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train, then return the last evaluation's results (``{}`` if none ran).

        Detectron2 returns them only when ``TEST.EXPECTED_RESULTS`` is set.
        """
        super().train()
        return getattr(self, "_last_eval_results", {})

    @classmethod
    def build_model(cls, cfg):
        # a MODEL.COMPOSE / MODEL.SUPPRESSION key that no built head reads is an error
        check_composition_is_used(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader; with ``INPUT.OVERHEAD_AUG.ENABLED`` its ``DatasetMapper``
        gets the overhead-imagery augmentations appended after the resize and flip."""
        extra = build_overhead_augmentation(cfg)
        if not extra:
            return super().build_train_loader(cfg)
        kwargs = DatasetMapper.from_config(cfg, is_train=True)
        kwargs["augmentations"] = [*kwargs["augmentations"], *extra]
        return build_detection_train_loader(cfg, mapper=DatasetMapper(**kwargs))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        ap_ious = cfg.TEST.get("AP_AT_IOUS", DEFAULT_AP_IOUS)
        box_pr_at = cfg.TEST.get("BOX_PR_AT", ())  # precision/recall at (iou, score), () off
        return COCOEvaluatorAtIoUs(
            dataset_name, output_dir=output_folder, ap_ious=ap_ious, box_pr_at=box_pr_at
        )
