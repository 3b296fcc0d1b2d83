"""The trainable part of Ref-NMS as a Detectron2 meta-architecture: the expression encoder e_q
and the relatedness module (Eqs. (1)-(2)) on top of the cached first-stage candidates.

``MODEL.META_ARCHITECTURE: "RefNMS"``. The frozen detector is not part of this model (it runs
once per image, :mod:`ref_nms.first_stage`), so ``build_model`` needs neither the detector nor
the data, and checkpoints hold only the relatedness parameters. The fixed word embeddings
(:class:`~ref_nms.relatedness.WordLookup`) are attached with :meth:`RefNMS.set_word_lookup`
(non-persistent: rebuilt from the word vectors and the vocabulary's datasets when loading).

Inputs (lists, as Detectron2's data loaders give them):

- training: one dict per expression, ``{"expression": expr, "candidates": cand}``
  (:class:`ref_nms.expressions.TrainExpressionMapper`); returns the loss dict;
- inference: one dict per image, ``{"candidates": cand, "expressions": [expr, ...]}``
  (:class:`ref_nms.expressions.TestImageMapper`); returns one dict per image,
  ``{"relatedness": float32 (E, P)}``, r = sigmoid(r̂) of every candidate for every expression.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from .losses import (
    bce_loss,
    rank_loss,
    relatedness_targets,
    sample_bce_proposals,
    sample_rank_proposals,
)
from .relatedness import ExpressionEncoder, RelatednessModule, WordLookup

__all__ = ["LOSSES", "RefNMS"]

LOSSES = ("bce", "rank")


def _storage():
    try:
        return get_event_storage()
    except AssertionError:  # outside a trainer
        return None


@META_ARCH_REGISTRY.register()
class RefNMS(nn.Module):
    """e_q + relatedness module, trained with Eq. (3) (``loss="bce"``) or Eq. (4) (``"rank"``).

    Args:
        encoder: the expression encoder e_q (its ``lookup`` may be attached later).
        relatedness: the relatedness module (v = the first stage's feature width).
        loss: ``"bce"`` or ``"rank"``.
        positive_iou, positive_inclusive: r* = 1 when IoU with a foreground box is > (>=) this.
        bce_sampling, bce_reduction, bce_num_samples, bce_max_positive: see
            :func:`ref_nms.losses.bce_loss` (``"release"`` sampling is drawn before the module
            runs, so only the sampled candidates are scored).
        rank_margin, rank_origin, rank_width, rank_top_h, rank_normalization, rank_sampling,
            rank_num_negative, rank_per_level: see :func:`ref_nms.losses.rank_loss` and
            :func:`ref_nms.losses.sample_rank_proposals`.
        max_length_train, max_length_test: words kept per expression (None: all).
        inference_chunk: at most this many (candidate, expression) rows per module call.
    """

    @configurable
    def __init__(
        self,
        *,
        encoder: ExpressionEncoder,
        relatedness: RelatednessModule,
        loss: str = "bce",
        positive_iou: float = 0.5,
        positive_inclusive: bool = False,
        bce_sampling: str = "all",
        bce_reduction: str = "expression",
        bce_num_samples: int = 32,
        bce_max_positive: int = 16,
        rank_margin: float = 0.1,
        rank_origin: float = 0.5,
        rank_width: float = 0.1,
        rank_top_h: int | None = 100,
        rank_normalization: str = "pairs",
        rank_sampling: str = "all",
        rank_num_negative: int = 150,
        rank_per_level: int = 10,
        max_length_train: int | None = 10,
        max_length_test: int | None = None,
        inference_chunk: int = 16384,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"MODEL.REF_NMS.LOSS must be one of {LOSSES}, got {loss!r}")
        if rank_sampling not in ("all", "release"):
            raise ValueError(
                f"MODEL.REF_NMS.RANK_SAMPLING must be 'all' or 'release', got {rank_sampling!r}"
            )
        if encoder.output_dim != relatedness.word_dim:
            raise ValueError(
                f"the encoder's word features are {encoder.output_dim}-d, the relatedness module "
                f"expects {relatedness.word_dim}"
            )
        self.encoder = encoder
        self.relatedness = relatedness
        self.loss = loss
        self.positive_iou = positive_iou
        self.positive_inclusive = positive_inclusive
        self.bce = dict(sampling=bce_sampling, reduction=bce_reduction,
                        num_samples=bce_num_samples, max_positive=bce_max_positive)  # fmt: skip
        self.rank = dict(margin=rank_margin, origin=rank_origin, width=rank_width,
                         top_h=rank_top_h, normalization=rank_normalization)  # fmt: skip
        self.rank_sampling = rank_sampling
        self.rank_num_negative = rank_num_negative
        self.rank_per_level = rank_per_level
        self.max_length_train = max_length_train
        self.max_length_test = max_length_test
        self.inference_chunk = int(inference_chunk)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.REF_NMS
        return {
            "encoder": ExpressionEncoder(cfg),
            "relatedness": RelatednessModule(cfg, visual_dim=c.VISUAL_DIM),
            "loss": c.LOSS,
            "positive_iou": c.POSITIVE_IOU,
            "positive_inclusive": c.POSITIVE_IOU_INCLUSIVE,
            "bce_sampling": c.BCE_SAMPLING,
            "bce_reduction": c.BCE_REDUCTION,
            "bce_num_samples": c.BCE_NUM_SAMPLES,
            "bce_max_positive": c.BCE_MAX_POSITIVE,
            "rank_margin": c.RANK_MARGIN,
            "rank_origin": c.RANK_IOU_ORIGIN,
            "rank_width": c.RANK_LEVEL_WIDTH,
            "rank_top_h": c.RANK_TOP_H if c.RANK_TOP_H > 0 else None,
            "rank_normalization": c.RANK_NORMALIZATION,
            "rank_sampling": c.RANK_SAMPLING,
            "rank_num_negative": c.RANK_NUM_NEGATIVE,
            "rank_per_level": c.RANK_PER_LEVEL,
            "max_length_train": c.MAX_EXPR_LENGTH_TRAIN or None,
            "max_length_test": c.MAX_EXPR_LENGTH_TEST or None,
        }

    @property
    def device(self) -> torch.device:
        return self.relatedness.fc_r.weight.device

    def set_word_lookup(self, lookup: WordLookup) -> None:
        """Attach the fixed word embeddings (moved to the model's device)."""
        if lookup.embed_dim != self.encoder.embed_dim:
            raise ValueError(
                f"the word lookup is {lookup.embed_dim}-d, the encoder expects "
                f"{self.encoder.embed_dim} (MODEL.REF_NMS.WORD_EMBED_DIM)"
            )
        self.encoder.lookup = lookup.to(self.device)

    def _region_features(self, cand: dict) -> torch.Tensor:
        feats = cand["features"][cand["feature_index"]]
        return feats.to(device=self.device, dtype=self.relatedness.fc_r.weight.dtype)

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Eq. (3) or Eq. (4) over a batch of expressions (module docstring).

        Labels: r*_i and ρ_i of each candidate against the expression's foreground boxes (the
        referent and its pseudo ground truth; :func:`ref_nms.losses.relatedness_targets`).
        """
        feats, targets, rhos, groups = [], [], [], []
        for e, item in enumerate(batched_inputs):
            cand, expr = item["candidates"], item["expression"]
            fg = torch.tensor(expr["foreground_boxes"], dtype=torch.float32).reshape(-1, 4)
            t, rho = relatedness_targets(
                cand["boxes"], fg, self.positive_iou, self.positive_inclusive
            )
            feats.append(self._region_features(cand))
            targets.append(t)
            rhos.append(rho)
            groups.append(torch.full((t.numel(),), e, dtype=torch.int64))
        feats = torch.cat(feats)
        targets, rhos, groups = torch.cat(targets), torch.cat(rhos), torch.cat(groups)
        num_candidates = targets.numel()
        # the release's sampling, drawn before the module runs
        if self.loss == "bce" and self.bce["sampling"] == "release":
            keep = sample_bce_proposals(
                targets, groups, self.bce["num_samples"], self.bce["max_positive"]
            )
        elif self.loss == "rank" and self.rank_sampling == "release":
            keep = sample_rank_proposals(
                rhos, groups, self.rank_num_negative, self.rank_per_level,
                self.rank["origin"], self.rank["width"],
            )  # fmt: skip
        else:
            keep = None
        if keep is not None:
            feats, targets, rhos, groups = (
                feats[keep.to(feats.device)],
                targets[keep],
                rhos[keep],
                groups[keep],
            )
        device = self.device
        targets, rhos, groups = targets.to(device), rhos.to(device), groups.to(device)
        words, mask = self.encoder(
            [item["expression"]["tokens"] for item in batched_inputs],
            max_length=self.max_length_train,
        )
        logits = self.relatedness(feats, words, mask, expr_index=groups)
        if self.loss == "bce":
            bce = dict(self.bce, sampling="all")
            loss = bce_loss(logits, targets, groups, **bce)
        else:
            loss = rank_loss(logits, rhos, groups, **self.rank)
        storage = _storage()
        if storage is not None:
            n = max(1, len(batched_inputs))
            storage.put_scalar("ref_nms/candidates_per_expression", num_candidates / n)
            storage.put_scalar("ref_nms/scored_per_expression", targets.numel() / n)
            if targets.numel():
                r = torch.sigmoid(logits.detach())
                pos = targets > 0.5
                storage.put_scalar("ref_nms/positive_fraction", float(pos.float().mean()))
                if bool(pos.any()):
                    storage.put_scalar("ref_nms/relatedness_pos", float(r[pos].mean()))
                if bool((~pos).any()):
                    storage.put_scalar("ref_nms/relatedness_neg", float(r[~pos].mean()))
        return {f"loss_ref_nms_{self.loss}": loss}

    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """r = sigmoid(r̂) of every candidate of each image for each of its expressions."""
        outputs = []
        for item in batched_inputs:
            cand, exprs = item["candidates"], item["expressions"]
            feats = self._region_features(cand)
            p, n = feats.shape[0], len(exprs)
            rel = torch.zeros(n, p, dtype=torch.float32)
            if p and n:
                words, mask = self.encoder(
                    [e["tokens"] for e in exprs], max_length=self.max_length_test
                )
                per_chunk = max(1, self.inference_chunk // p)
                for start in range(0, n, per_chunk):
                    idx = torch.arange(start, min(n, start + per_chunk), device=self.device)
                    logits = self.relatedness(
                        feats.repeat(idx.numel(), 1),
                        words[idx],
                        mask[idx],
                        expr_index=torch.arange(idx.numel(), device=self.device).repeat_interleave(
                            p
                        ),
                    )
                    rel[start : start + idx.numel()] = (
                        torch.sigmoid(logits).reshape(idx.numel(), p).float().cpu()
                    )
            outputs.append({"relatedness": rel})
        return outputs
