"""Training and evaluation of Ref-NMS's relatedness module on top of a frozen, cached first stage.

:class:`RefNMSTrainer` is d2kit's Trainer (Detectron2's DefaultTrainer: SimpleTrainer loop,
EventStorage, DetectionCheckpointer, periodic checkpoints, EvalHook, metric writers) with the
Ref-NMS parts:

- ``build_model``: the ``RefNMS`` meta-architecture (e_q + relatedness module, and a trainable
  region encoder if ``REGION_ENCODER.NAME`` asks for one) with its fixed word embeddings
  (vocabulary of ``VOCAB_DATASETS``, word vectors of ``WORD_VECTORS``);
- ``build_optimizer``: Adam (paper: "learning rate is initialized to 4e-4 and 5e-3 for the
  head network and the rest") with two parameter groups: the region encoder e_v at
  ``REGION_ENCODER.BASE_LR`` and the rest at ``SOLVER.BASE_LR``, weight decay
  ``SOLVER.WEIGHT_DECAY`` (released: 5e-4 and 1e-3), with Detectron2's gradient clipping keys;
- ``build_lr_scheduler`` / ``build_hooks``: ``LR_SCHEDULE "iteration"`` is Detectron2's
  schedule (``SOLVER.STEPS``, warm-up); ``"plateau"`` is the release's ReduceLROnPlateau on the
  validation loss with the best-validation weights kept (:class:`PlateauSchedule`,
  :class:`PlateauHook`);
- ``build_train_loader``: every sentence of ``DATASETS.TRAIN`` (the first ``MAX_TRAIN_IMAGES``
  images of each) with its pseudo ground truth, ``SOLVER.IMS_PER_BATCH`` expressions per
  batch, the images' first-stage candidates cached on first use;
- ``build_test_loader`` + ``build_evaluator``: one image and all its sentences per step,
  :class:`ref_nms.evaluation.RefNMSEvaluator` (Table 1).
"""

from __future__ import annotations

import logging
import math
import os

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data import build_detection_train_loader as _d2_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.modeling import build_model as _d2_build_model
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

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

__all__ = [
    "LR_SCHEDULES",
    "KeepLR",
    "PlateauHook",
    "PlateauSchedule",
    "RefNMSTrainer",
    "build_expression_dataset",
    "build_image_items",
    "build_test_items",
    "validation_loss_fn",
]

#: MODEL.REF_NMS.LR_SCHEDULE values.
LR_SCHEDULES = ("iteration", "plateau")

logger = logging.getLogger(__name__)


def build_image_items(
    cfg, names, max_images: int = 0, min_candidates: int | None = None
) -> list[dict]:
    """One item per image of the datasets ``names`` (the first ``max_images`` of each; 0: all):
    ``{"image_id", "file_name", "height", "width", "candidates_file", "dataset",
    "expressions"}``, the expressions with their pseudo ground truth
    (:func:`ref_nms.expressions.build_expressions`) and ``candidates_file``: the image's
    first-stage cache file for ``min_candidates`` (built now if missing), or None when
    ``min_candidates`` is None (no first stage run, e.g. ground-truth regions only)."""
    register_refer_datasets(cfg)
    c = cfg.MODEL.REF_NMS
    wv = word_vectors_from_cfg(cfg)
    out = []
    for name in names:
        dicts = [d for _, d in load_image_dicts([name], max_images)]
        if min_candidates is None:
            files = [None] * len(dicts)
        else:
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
                    "height": d.get("height"),
                    "width": d.get("width"),
                    "candidates_file": f,
                    "dataset": name,
                    "expressions": exprs,
                }  # fmt: skip
            )
    return out


def build_expression_dataset(cfg, names=None, max_images: int | None = None) -> list[dict]:
    """Every training expression (``DATASETS.TRAIN``, or the datasets ``names``), with pseudo
    ground truth and the cache file of its image's candidates (built now if missing), built as
    for training (``MIN_CANDIDATES_TRAIN``; the first ``MAX_TRAIN_IMAGES`` or ``max_images``
    images of each dataset)."""
    c = cfg.MODEL.REF_NMS
    images = build_image_items(
        cfg, cfg.DATASETS.TRAIN if names is None else names,
        c.MAX_TRAIN_IMAGES if max_images is None else max_images, c.MIN_CANDIDATES_TRAIN,
    )  # fmt: skip
    return [e for img in images for e in img["expressions"]]


class KeepLR(torch.optim.lr_scheduler.LRScheduler):
    """A per-iteration scheduler that keeps every group's current learning rate: Detectron2's
    LRScheduler hook steps it (and logs ``lr``) while :class:`PlateauSchedule` changes the
    rates."""

    def get_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]


class PlateauSchedule:
    """The release's schedule (ref_nms.md §2.3): ``ReduceLROnPlateau(mode="min",
    threshold_mode="rel")`` on the validation loss, each group's LR floored at its initial LR ×
    ``min_lr_ratio``, plus the weights of the best validation loss (kept in memory; the release
    saves them as ``_b.pth`` and evaluates them).

    Args:
        optimizer: the optimizer whose group LRs are reduced.
        factor: new LR = LR × factor, in (0, 1).
        patience: evaluations without improvement tolerated; the LR drops at the
            (patience + 1)-th one in a row (PyTorch's rule).
        threshold: relative improvement that counts (1e-4).
        min_lr_ratio: the floor, as a fraction of each group's initial LR, in [0, 1].
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: float = 0.5,
        patience: int = 1,
        threshold: float = 1e-4,
        min_lr_ratio: float = 0.01,
    ):
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=patience, threshold=threshold,
            threshold_mode="rel",
            min_lr=[g.get("initial_lr", g["lr"]) * min_lr_ratio for g in optimizer.param_groups],
        )  # fmt: skip
        self.optimizer = optimizer
        self.best_loss = math.inf
        self.best_iteration: int | None = None
        self.best_state: dict | None = None

    def step(self, val_loss: float, model: torch.nn.Module, iteration: int) -> bool:
        """Record one validation loss; returns True when it is the best so far (strictly lower;
        the model's weights are then copied)."""
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            raise ValueError(f"the validation loss is {val_loss} at iteration {iteration}")
        improved = val_loss < self.best_loss
        if improved:
            self.best_loss, self.best_iteration = val_loss, int(iteration)
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.scheduler.step(val_loss)
        return improved

    def restore_best(self, model: torch.nn.Module) -> bool:
        """Load the best weights into ``model``; False when none was recorded."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {
            "scheduler": self.scheduler.state_dict(),
            "best_loss": self.best_loss,
            "best_iteration": self.best_iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_loss = float(state["best_loss"])
        self.best_iteration = state["best_iteration"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class PlateauHook(HookBase):
    """Runs :class:`PlateauSchedule` in the training loop: every ``period`` iterations and after
    the last one, ``loss_fn(model)`` (the validation loss) steps the schedule; a new best is
    saved with ``save_fn("model_best")`` (main process). After the last iteration the best
    weights are loaded back, so that the final checkpoint (``model_final``) and the final
    evaluation use them, as the release evaluates its best-validation weights. Register it
    before the checkpointer and evaluation hooks.

    Args:
        schedule: the schedule (its optimizer is the trainer's).
        loss_fn: model -> float, the validation loss.
        period: iterations between evaluations (>= 1).
        save_fn: name -> None, saves the current weights (e.g. a DetectionCheckpointer's
            ``save``); None: keep them in memory only.
        best_file: a checkpoint with the best weights to load at the end when they are not in
            memory (training resumed after the best evaluation); None: skip.
    """

    def __init__(self, schedule: PlateauSchedule, loss_fn, period: int, save_fn=None,
                 best_file: str | None = None):  # fmt: skip
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(
                f"MODEL.REF_NMS.PLATEAU.EVAL_PERIOD must be an int >= 1, got {period!r}"
            )
        self.schedule = schedule
        self.loss_fn = loss_fn
        self.period = period
        self.save_fn = save_fn
        self.best_file = best_file
        self.history: list[tuple[int, float, list[float]]] = []

    def after_step(self):
        next_iter = self.trainer.iter + 1
        last = next_iter >= self.trainer.max_iter
        if next_iter % self.period and not last:
            return
        model = _unwrap(self.trainer.model)
        val_loss = float(self.loss_fn(model))
        improved = self.schedule.step(val_loss, model, next_iter)
        lrs = self.schedule.lrs()
        self.history.append((next_iter, val_loss, lrs))
        storage = getattr(self.trainer, "storage", None)
        if storage is not None:
            storage.put_scalar("ref_nms/val_loss", val_loss, smoothing_hint=False)
        logger.info(
            f"Ref-NMS plateau schedule: val loss {val_loss:.5f} at iteration {next_iter}"
            f"{' (best)' if improved else ''}; best {self.schedule.best_loss:.5f} at "
            f"{self.schedule.best_iteration}; LRs {lrs}"
        )
        if improved and self.save_fn is not None and comm.is_main_process():
            self.save_fn("model_best")
        if last:
            restored = self.schedule.restore_best(model)
            if not restored and self.best_file and os.path.isfile(self.best_file):
                state = torch.load(self.best_file, map_location="cpu")
                model.load_state_dict(state.get("model", state))
                restored = True
            if restored:
                logger.info(
                    f"Ref-NMS plateau schedule: best validation weights restored (iteration "
                    f"{self.schedule.best_iteration}, val loss {self.schedule.best_loss:.5f})"
                )

    def state_dict(self):
        return self.schedule.state_dict()

    def load_state_dict(self, state):
        self.schedule.load_state_dict(state)


def validation_loss_fn(cfg):
    """model -> the mean training loss (Eq. (3) or (4), as configured) over the expressions of
    ``PLATEAU.DATASET`` (default DATASETS.TEST[0]), built like the training set, in batches of
    ``SOLVER.IMS_PER_BATCH``, dropout off, the released sampling drawn from a fixed seed, so
    that the same weights always give the same value. Every process computes it on all
    expressions (no communication; the LR decisions agree)."""
    c = cfg.MODEL.REF_NMS
    name = c.PLATEAU.DATASET or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")
    if not name:
        raise ValueError(
            "MODEL.REF_NMS.LR_SCHEDULE 'plateau' needs a validation set: set "
            "MODEL.REF_NMS.PLATEAU.DATASET (or DATASETS.TEST)"
        )
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    state = {}

    def loss_fn(model) -> float:
        if "expressions" not in state:
            state["expressions"] = build_expression_dataset(cfg, [name], c.PLATEAU.MAX_IMAGES)
            if not state["expressions"]:
                raise ValueError(f"no expression in the validation set {name!r}")
            state["mapper"] = TrainExpressionMapper(CandidateStore())
        exprs, mapper = state["expressions"], state["mapper"]
        was_training = model.training
        model.eval()
        total = 0.0
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                for start in range(0, len(exprs), batch):
                    items = [mapper(e) for e in exprs[start : start + batch]]
                    losses = model.losses(items, log=False)
                    total += float(sum(losses.values())) * len(items)
        finally:
            model.train(was_training)
        return total / len(exprs)

    return loss_fn


def _check_plateau_cfg(cfg) -> None:
    c = cfg.MODEL.REF_NMS
    if c.LR_SCHEDULE not in LR_SCHEDULES:
        raise ValueError(
            f"MODEL.REF_NMS.LR_SCHEDULE must be one of {LR_SCHEDULES}, got {c.LR_SCHEDULE!r}"
        )
    if c.LR_SCHEDULE != "plateau":
        return
    p = c.PLATEAU
    checks = (
        ("FACTOR", p.FACTOR, lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
        ("PATIENCE", p.PATIENCE, lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
        ("THRESHOLD", p.THRESHOLD, lambda v: v >= 0.0, "a number >= 0"),
        ("MIN_LR_RATIO", p.MIN_LR_RATIO, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
        ("EVAL_PERIOD", p.EVAL_PERIOD, lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
        ("MAX_IMAGES", p.MAX_IMAGES, lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    )
    for key, value, ok, what in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"MODEL.REF_NMS.PLATEAU.{key} must be {what}, got {value!r}")
    if len(cfg.SOLVER.STEPS) or cfg.SOLVER.WARMUP_ITERS:
        raise ValueError(
            "MODEL.REF_NMS.LR_SCHEDULE 'plateau' replaces Detectron2's schedule: set "
            f"SOLVER.STEPS () and SOLVER.WARMUP_ITERS 0 (got {tuple(cfg.SOLVER.STEPS)} and "
            f"{cfg.SOLVER.WARMUP_ITERS})"
        )


def build_test_items(cfg, dataset_name: str) -> list[dict]:
    """One item per image of ``dataset_name`` (its first ``MAX_TEST_IMAGES``):
    ``{"image_id", "file_name", "candidates_file", "dataset", "expressions"}``."""
    return build_image_items(
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
        """Adam with the region encoder's parameters (if any) at ``REGION_ENCODER.BASE_LR`` and
        the rest at ``SOLVER.BASE_LR``."""
        head_lr = cfg.MODEL.REF_NMS.REGION_ENCODER.BASE_LR
        if isinstance(head_lr, bool) or not isinstance(head_lr, (int, float)) or head_lr <= 0:
            raise ValueError(
                f"MODEL.REF_NMS.REGION_ENCODER.BASE_LR must be a number > 0, got {head_lr!r}"
            )
        encoder = getattr(model, "region_encoder", None)
        head = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": rest, "lr": cfg.SOLVER.BASE_LR}]
        if head:
            groups.append(
                {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": head_lr}
            )
        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.Adam)
        return optimizer(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        _check_plateau_cfg(cfg)
        if cfg.MODEL.REF_NMS.LR_SCHEDULE == "plateau":
            return KeepLR(optimizer)
        return super().build_lr_scheduler(cfg, optimizer)

    def build_hooks(self):
        hooks = super().build_hooks()
        cfg = self.cfg
        if cfg.MODEL.REF_NMS.LR_SCHEDULE != "plateau":
            return hooks
        p = cfg.MODEL.REF_NMS.PLATEAU
        schedule = PlateauSchedule(
            self.optimizer, p.FACTOR, p.PATIENCE, p.THRESHOLD, p.MIN_LR_RATIO
        )
        hook = PlateauHook(
            schedule, validation_loss_fn(cfg), p.EVAL_PERIOD, save_fn=self.checkpointer.save,
            best_file=os.path.join(cfg.OUTPUT_DIR, "model_best.pth"),
        )  # fmt: skip
        # after the LR hook, before the checkpointer and the evaluation: model_final and the
        # final evaluation then hold the best validation weights
        where = next((i + 1 for i, h in enumerate(hooks) if isinstance(h, d2_hooks.LRScheduler)), 0)
        hooks.insert(where, hook)
        return hooks

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
