"""The trainable part of Ref-NMS as a Detectron2 meta-architecture: the expression encoder e_q
and the relatedness module (Eqs. (1)-(2)) on top of the cached first-stage candidates.

``MODEL.META_ARCHITECTURE: "RefNMS"``. The frozen detector is not part of this model (it runs
once per image, :mod:`ref_nms.first_stage`), so ``build_model`` needs neither the detector nor
the data, and checkpoints hold only the relatedness parameters (plus the region encoder's when
``MODEL.REF_NMS.REGION_ENCODER.NAME`` trains one: "mlp" on the cached box-head features,
"box_head" a copy of the detector's box head on the cached RoI-pooled features; building that
one reads the detector's weights). The fixed word embeddings
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

from .first_stage import build_detector, check_visual_dim, region_head
from .losses import (
    bce_loss,
    rank_loss,
    relatedness_targets,
    sample_bce_proposals,
    sample_rank_proposals,
)
from .relatedness import ExpressionEncoder, RelatednessModule, WordLookup

__all__ = ["LOSSES", "REGION_ENCODERS", "RefNMS", "ResidualMLPEncoder", "build_region_encoder"]

LOSSES = ("bce", "rank")
#: MODEL.REF_NMS.REGION_ENCODER.NAME values (ref_nms/config.py).
REGION_ENCODERS = ("frozen", "mlp", "box_head")


class ResidualMLPEncoder(nn.Module):
    """A small trainable e_v on the cached (frozen) box-head feature: v' = v + FC_2(ReLU(FC_1(v))).

    FC_2 starts at zero, so the encoder starts as the identity, i.e. from the detector's
    pre-trained feature, as the paper's head starts from the detector's weights.

    Args:
        dim: v, the cached feature's width (the output has the same width).
        hidden_dim: FC_1's width.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        for name, v in (("dim", dim), ("hidden_dim", hidden_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, v)`` -> ``(N, v)``."""
        return x + self.fc2(torch.relu(self.fc1(x)))


def build_region_encoder(cfg) -> tuple[nn.Module | None, str]:
    """The trainable region encoder of ``MODEL.REF_NMS.REGION_ENCODER`` and the cached input it
    reads: ``(None, "features")`` (frozen), ``(ResidualMLPEncoder, "features")`` ("mlp") or
    ``(RegionHead copy, "pooled")`` ("box_head", built from the detector's weights).

    Raises:
        ValueError: naming the key, for an unknown name, a non-positive width, or "box_head"
            without ``CACHE_POOLED_FEATURES`` or with a detector whose features are not
            ``VISUAL_DIM`` wide.
    """
    c = cfg.MODEL.REF_NMS
    name = c.REGION_ENCODER.NAME
    if name not in REGION_ENCODERS:
        raise ValueError(
            f"MODEL.REF_NMS.REGION_ENCODER.NAME must be one of {REGION_ENCODERS}, got {name!r}"
        )
    if name == "frozen":
        return None, "features"
    if name == "mlp":
        hidden = c.REGION_ENCODER.HIDDEN_DIM
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(
                f"MODEL.REF_NMS.REGION_ENCODER.HIDDEN_DIM must be an int >= 0 (0 = VISUAL_DIM), "
                f"got {hidden!r}"
            )
        return ResidualMLPEncoder(c.VISUAL_DIM, hidden or c.VISUAL_DIM), "features"
    if not c.CACHE_POOLED_FEATURES:
        raise ValueError(
            "MODEL.REF_NMS.REGION_ENCODER.NAME 'box_head' trains a copy of the detector's box head "
            "on the cached RoI-pooled features: set MODEL.REF_NMS.CACHE_POOLED_FEATURES True (the "
            "first-stage cache is then rebuilt in its own folder, ~10-50x larger for FPN)"
        )
    detector, _ = build_detector(cfg)
    check_visual_dim(detector, c.VISUAL_DIM)
    return region_head(detector, trainable_copy=True), "pooled"


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
        region_encoder: a trainable e_v applied to each RoI's cached input before the
            relatedness module (:func:`build_region_encoder`), or None (the cached box-head
            feature as is).
        region_input: the cached input of the region encoder, ``"features"`` (the box-head
            feature, ``(F, v)``) or ``"pooled"`` (the RoI-pooled map, ``(F, C, S, S)``).
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
        region_encoder: nn.Module | None = None,
        region_input: str = "features",
    ):
        super().__init__()
        if region_input not in ("features", "pooled"):
            raise ValueError(f"region_input must be 'features' or 'pooled', got {region_input!r}")
        if region_input == "pooled" and region_encoder is None:
            raise ValueError("region_input 'pooled' needs a region_encoder (the box head copy)")
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
        self.region_encoder = region_encoder
        self.region_input = region_input

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.REF_NMS
        region_encoder, region_input = build_region_encoder(cfg)
        return {
            "region_encoder": region_encoder,
            "region_input": region_input,
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
        """v_i of every candidate, ``(P, v)``: its RoI's cached feature, through the region
        encoder if there is one (run once per RoI, then indexed per candidate)."""
        dtype = self.relatedness.fc_r.weight.dtype
        if self.region_input == "pooled":
            if "pooled" not in cand:
                raise ValueError(
                    "the first-stage cache has no RoI-pooled features ('pooled'), which "
                    "MODEL.REF_NMS.REGION_ENCODER.NAME 'box_head' needs: set "
                    "MODEL.REF_NMS.CACHE_POOLED_FEATURES True"
                )
            rows = cand["pooled"].to(device=self.device, dtype=dtype)
        else:
            rows = cand["features"].to(device=self.device, dtype=dtype)
        if self.region_encoder is not None:
            rows = self.region_encoder(rows)
        return rows[cand["feature_index"].to(self.device)]

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: list[dict], log: bool = True) -> dict[str, torch.Tensor]:
        """Eq. (3) or Eq. (4) over a batch of expressions (module docstring); ``log``: put the
        ``ref_nms/*`` statistics into the event storage (off for the validation loss).

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
        storage = _storage() if log else None
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
