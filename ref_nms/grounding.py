"""Table 2 of Ref-NMS on our data: a small built-in second-stage grounding model (a "listener").

Ref-NMS is "agnostic to the second stage": Table 2 feeds its proposals to two-stage grounding
models (MAttNet, NMTree, CM-A-E) in place of the baseline's (NMS on c, c >= 0.65) and reports
their top-1 accuracy: a prediction is correct when its IoU with the referent is larger than 0.5
(paper, "Evaluation Metrics"). Those models are not part of this package; :class:`Listener` is a
small MAttNet-style one so that Table 2 can be measured end to end here:

- regions: the frozen detector's box-head feature pooled at each box
  (:func:`ref_nms.first_stage.box_features`, e_v at ground-truth boxes and at the candidates'
  own boxes), plus the box geometry;
- the expression: its own Bi-GRU :class:`~ref_nms.relatedness.ExpressionEncoder` on the same
  fixed word vectors, and one word attention per module (as MAttNet's phrase embeddings);
- three matching modules, each a cosine between a region embedding and a phrase embedding:
  *subject* (the region feature), *location* (its normalised box and the offsets to up to 5
  same-class neighbours, MAttNet's location module) and *relation* (every other proposal of
  the list as context, feature + offset, max over them: MAttNet's relationship module), mixed
  by expression-dependent module weights;
- one score per proposal, softmax over the expression's proposals, cross-entropy on the
  referent.

As two-stage methods are, it is trained on the ground-truth regions (the image's annotated
boxes as the candidates; paper, "Referent Grounding") and evaluated with each proposal set:
the ground-truth boxes (the upper bound), the baseline's proposals and Ref-NMS's. The
relation module sees the other proposals of the same list, so a proposal set that drops the
context object a sentence names ("the circle left of the blue square") hurts it, which is what
Ref-NMS's context recall is for.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from torch import nn

from ._checks import check_boxes, check_float_tensor, check_number
from .expressions import annotation_xyxy, load_image_dicts, word_lookup_from_cfg
from .first_stage import (
    box_features,
    build_detector,
    first_stage_cache_dir,
    load_candidates,
)
from .losses import box_iou
from .relatedness import ExpressionEncoder, WordLookup, masked_softmax
from .selection import baseline_proposals, select_proposals

__all__ = [
    "LISTENER_MODULES",
    "Listener",
    "box_geometry",
    "build_listener",
    "build_listener_images",
    "evaluate_listener",
    "expression_proposals",
    "grounding_accuracy",
    "grounding_hit",
    "listener_examples",
    "listener_settings",
    "relative_geometry",
    "train_listener",
]

logger = logging.getLogger(__name__)

#: The listener's matching modules (MAttNet's, without its attribute branch and masks).
LISTENER_MODULES = ("subject", "location", "relation")


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def box_geometry(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """MAttNet's 5-d location feature: ``[x1/W, y1/H, x2/W, y2/H, w·h/(W·H)]``.

    Args:
        boxes: float ``(..., N, 4)`` x1, y1, x2, y2.
        image_sizes: float ``(..., 2)`` (H, W) of each box set's image, > 0.

    Returns:
        float ``(..., N, 5)``.
    """
    h = image_sizes[..., 0, None].to(boxes.dtype)
    w = image_sizes[..., 1, None].to(boxes.dtype)
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    return torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, area / (w * h)], dim=-1)


def relative_geometry(boxes: torch.Tensor, min_size: float = 1.0) -> torch.Tensor:
    """MAttNet's relative offsets of box j seen from box i:
    ``[(x1_j − cx_i)/w_i, (y1_j − cy_i)/h_i, (x2_j − cx_i)/w_i, (y2_j − cy_i)/h_i,
    w_j·h_j/(w_i·h_i)]``, with w_i, h_i at least ``min_size`` (degenerate boxes).

    Args:
        boxes: float ``(..., N, 4)``.

    Returns:
        float ``(..., N, N, 5)``, entry ``[..., i, j, :]``.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    w = (x2 - x1).clamp(min=min_size)
    h = (y2 - y1).clamp(min=min_size)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2

    def off(a, c, s):  # a_j − c_i over s_i
        return (a[..., None, :] - c[..., :, None]) / s[..., :, None]

    area_j = ((x2 - x1) * (y2 - y1))[..., None, :]
    return torch.stack(
        [off(x1, cx, w), off(y1, cy, h), off(x2, cx, w), off(y2, cy, h),
         area_j / (w * h)[..., :, None]],
        dim=-1,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def listener_settings(cfg) -> dict:
    """The validated ``MODEL.REF_NMS.LISTENER`` keys (lower-case names).

    Raises:
        ValueError: naming the key, the value and what it must be.
    """
    c = cfg.MODEL.REF_NMS.LISTENER

    def integer(key, lo):
        v = c.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"MODEL.REF_NMS.LISTENER.{key} must be an int >= {lo}, got {v!r}")
        return int(v)

    def number(key, lo, hi=None, lo_open=False, hi_open=False):
        return check_number(f"MODEL.REF_NMS.LISTENER.{key}", c.get(key), lo, hi, lo_open, hi_open)

    if not isinstance(c.RELATION, bool):
        raise ValueError(
            f"MODEL.REF_NMS.LISTENER.RELATION must be True or False, got {c.RELATION!r}"
        )
    train = c.TRAIN_DATASETS
    if isinstance(train, str) or not all(isinstance(n, str) for n in train):
        raise ValueError(
            f"MODEL.REF_NMS.LISTENER.TRAIN_DATASETS must be a tuple of dataset names, got {train!r}"
        )
    return {
        "gru_hidden_dim": integer("GRU_HIDDEN_DIM", 1),
        "hidden_dim": integer("HIDDEN_DIM", 1),
        "embed_dim": integer("EMBED_DIM", 1),
        "location_neighbours": integer("LOCATION_NEIGHBOURS", 0),
        "relation": c.RELATION,
        "dropout": number("DROPOUT", 0.0, 1.0, hi_open=True),
        "epochs": integer("EPOCHS", 1),
        "batch_size": integer("BATCH_SIZE", 1),
        "base_lr": number("BASE_LR", 0.0, lo_open=True),
        "weight_decay": number("WEIGHT_DECAY", 0.0),
        "hit_iou": number("HIT_IOU", 0.0, 1.0, hi_open=True),
        "train_datasets": tuple(train),
    }


# ---------------------------------------------------------------------------------------------
# The listener
# ---------------------------------------------------------------------------------------------
def _mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


class Listener(nn.Module):
    """A small MAttNet-style grounding model (module docstring): one score per proposal.

    Args:
        encoder: the expression encoder (its ``lookup`` set for token-list input).
        visual_dim: v, the region features' width.
        hidden_dim: the module MLPs' hidden width.
        embed_dim: the joint embedding width of the cosine scores.
        location_neighbours: same-class neighbours in the location feature (0: absolute only).
        relation: use the relation module.
        dropout: on the region features and the phrase embeddings while training.
    """

    @configurable
    def __init__(
        self,
        *,
        encoder: ExpressionEncoder,
        visual_dim: int,
        hidden_dim: int = 256,
        embed_dim: int = 128,
        location_neighbours: int = 5,
        relation: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not isinstance(encoder, ExpressionEncoder):
            raise ValueError(f"encoder must be an ExpressionEncoder, got {type(encoder).__name__}")
        for name, v, lo in (("visual_dim", visual_dim, 1), ("hidden_dim", hidden_dim, 1),
                            ("embed_dim", embed_dim, 1),
                            ("location_neighbours", location_neighbours, 0)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        check_number("dropout", dropout, 0.0, 1.0, hi_open=True)
        self.encoder = encoder
        self.visual_dim = visual_dim
        self.location_neighbours = location_neighbours
        self.modules_used = LISTENER_MODULES if relation else LISTENER_MODULES[:2]
        q, m = encoder.output_dim, len(self.modules_used)
        self.dropout = nn.Dropout(dropout)
        # one word attention and phrase projection per module; module weights from the sentence
        self.word_attention = nn.Linear(q, m)
        self.phrase = nn.ModuleList(nn.Linear(q, embed_dim) for _ in range(m))
        self.module_weights = nn.Linear(q, m)
        self.subject = _mlp(visual_dim, hidden_dim, embed_dim)
        self.location = _mlp(5 + 5 * location_neighbours, hidden_dim, embed_dim)
        if relation:
            # MLP_r([v_j; δ_ij]) with its first layer split: the v_j part once per proposal
            self.relation_visual = nn.Linear(visual_dim, hidden_dim)
            self.relation_offset = nn.Linear(5, hidden_dim, bias=False)
            self.relation_out = nn.Linear(hidden_dim, embed_dim)
        # softmax temperature of the cosine scores, learned (starts at 10)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @classmethod
    def from_config(cls, cfg, lookup: WordLookup | None = None):
        s = listener_settings(cfg)
        c = cfg.MODEL.REF_NMS
        encoder = ExpressionEncoder(
            embed_dim=c.WORD_EMBED_DIM, hidden_size=s["gru_hidden_dim"], lookup=lookup
        )
        return {
            "encoder": encoder,
            "visual_dim": c.VISUAL_DIM,
            "hidden_dim": s["hidden_dim"],
            "embed_dim": s["embed_dim"],
            "location_neighbours": s["location_neighbours"],
            "relation": s["relation"],
            "dropout": s["dropout"],
        }

    def _location_features(self, boxes, classes, valid, image_sizes, offsets, others):
        """``(B, N, 5 + 5K)``: the absolute geometry and the offsets to the K nearest other
        valid proposals of the same class (by centre distance; zero-padded)."""
        geo = box_geometry(boxes, image_sizes)
        k = self.location_neighbours
        b, n = boxes.shape[:2]
        if k == 0:
            return geo
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        dist = torch.cdist(centre, centre) if n else centre.new_zeros(b, 0, 0)
        same = others & (classes[:, :, None] == classes[:, None, :])
        dist = dist.masked_fill(~same, math.inf)
        kk = min(k, n)
        near = torch.zeros(b, n, k, 5, dtype=boxes.dtype, device=boxes.device)
        if kk:
            d, idx = torch.topk(dist, kk, dim=2, largest=False)
            got = torch.gather(offsets, 2, idx[..., None].expand(-1, -1, -1, 5))
            near[:, :, :kk] = got * torch.isfinite(d)[..., None].to(boxes.dtype)
        return torch.cat([geo, near.flatten(2)], dim=2)

    def forward(
        self,
        region_features: torch.Tensor,
        boxes: torch.Tensor,
        classes: torch.Tensor,
        valid: torch.Tensor,
        image_sizes: torch.Tensor,
        expressions,
    ) -> torch.Tensor:
        """Scores of B expressions' proposal lists, padded to N.

        Args:
            region_features: float ``(B, N, v)``.
            boxes: float ``(B, N, 4)`` x1, y1, x2, y2 (image pixels).
            classes: int64 ``(B, N)`` the proposals' classes (the location module's
                neighbours are the same-class proposals).
            valid: bool ``(B, N)``, False at padding.
            image_sizes: float ``(B, 2)`` (H, W).
            expressions: B token lists.

        Returns:
            logits: float ``(B, N)``, −inf at padding; softmax over a row gives the
            probability of each proposal being the referent. N = 0 gives ``(B, 0)``.
        """
        check_float_tensor("region_features", region_features, ndim=3)
        b, n, v = region_features.shape
        if v != self.visual_dim:
            raise ValueError(
                f"region_features must be (B, N, v={self.visual_dim}), got {(b, n, v)}"
            )
        check_float_tensor("boxes", boxes, ndim=3)
        if tuple(boxes.shape) != (b, n, 4):
            raise ValueError(f"boxes must be (B, N, 4) = {(b, n, 4)}, got {tuple(boxes.shape)}")
        for name, x, dtypes in (("classes", classes, (torch.int64, torch.int32)),
                                ("valid", valid, (torch.bool,))):  # fmt: skip
            if not isinstance(x, torch.Tensor) or x.dtype not in dtypes or tuple(x.shape) != (b, n):
                raise ValueError(
                    f"{name} must be a {dtypes[0]} tensor of shape {(b, n)}, got "
                    f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
                )
        if tuple(image_sizes.shape) != (b, 2):
            raise ValueError(
                f"image_sizes must be (B, 2) = {(b, 2)}, got {tuple(image_sizes.shape)}"
            )
        if len(expressions) != b:
            raise ValueError(f"expressions has {len(expressions)} entries for B = {b}")
        dtype = self.log_scale.dtype
        feats = self.dropout(region_features.to(dtype))
        boxes = boxes.to(dtype)
        # phrase embeddings: one attention over the words per module (MAttNet's phrases)
        words, mask = self.encoder(list(expressions))
        m = len(self.modules_used)
        att = self.word_attention(words).transpose(1, 2)  # (B, M, T)
        alpha = masked_softmax(att, mask[:, None, :].expand(-1, m, -1))
        phrases = self.dropout(alpha @ words)  # (B, M, q)
        sentence = (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        beta = torch.softmax(self.module_weights(sentence), dim=1)  # (B, M)
        eye = torch.eye(n, dtype=torch.bool, device=valid.device)
        others = valid[:, :, None] & valid[:, None, :] & ~eye  # pairs (i, j), j a context of i
        offsets = relative_geometry(boxes)  # (B, N, N, 5)
        scores = [
            _cosine(self.subject(feats), self.phrase[0](phrases[:, 0])[:, None, :]),
            _cosine(
                self.location(
                    self._location_features(boxes, classes, valid, image_sizes, offsets, others)
                ),
                self.phrase[1](phrases[:, 1])[:, None, :],
            ),
        ]
        if "relation" in self.modules_used:
            hidden = self.relation_visual(feats)[:, None, :, :] + self.relation_offset(offsets)
            context = self.relation_out(torch.relu(hidden))  # (B, N_i, N_j, D)
            rel = _cosine(context, self.phrase[2](phrases[:, 2])[:, None, None, :])
            rel = rel.masked_fill(~others, -math.inf).amax(dim=2) if n else rel.sum(2)
            # a proposal without any other proposal has no context: score 0
            scores.append(torch.where(torch.isfinite(rel), rel, torch.zeros_like(rel)))
        score = (beta[:, None, :] * torch.stack(scores, dim=2)).sum(2)
        logits = self.log_scale.exp().clamp(max=100.0) * score
        return logits.masked_fill(~valid, -math.inf)


def build_listener(cfg, lookup: WordLookup | None = None) -> Listener:
    """The listener of ``MODEL.REF_NMS.LISTENER`` with the word lookup of the Ref-NMS model
    (:func:`ref_nms.expressions.word_lookup_from_cfg` when ``lookup`` is None)."""
    return Listener(cfg, lookup=lookup if lookup is not None else word_lookup_from_cfg(cfg))


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------
def grounding_hit(predicted_box, referent_box, iou_threshold: float = 0.5) -> bool:
    """Top-1 correctness (paper: "When the IoU between bbox and ground truth is larger than 0.5,
    the prediction is correct"): IoU strictly above ``iou_threshold``; no prediction (None, an
    empty proposal list) is wrong."""
    if predicted_box is None:
        return False
    a = torch.as_tensor(predicted_box, dtype=torch.float64).reshape(1, 4)
    b = torch.as_tensor(referent_box, dtype=torch.float64).reshape(1, 4)
    check_boxes("predicted_box", a)
    check_boxes("referent_box", b)
    return bool(box_iou(a, b)[0, 0] > iou_threshold)


def grounding_accuracy(predicted_boxes, referent_boxes, iou_threshold: float = 0.5) -> float:
    """Top-1 accuracy in %: the share of expressions whose predicted box (None: no prediction)
    hits the referent (:func:`grounding_hit`); NaN for no expression."""
    predicted_boxes, referent_boxes = list(predicted_boxes), list(referent_boxes)
    if len(predicted_boxes) != len(referent_boxes):
        raise ValueError(
            f"predicted_boxes has {len(predicted_boxes)} entries, referent_boxes "
            f"{len(referent_boxes)}: one of each per expression"
        )
    if not predicted_boxes:
        return math.nan
    hits = [grounding_hit(p, r, iou_threshold) for p, r in zip(predicted_boxes, referent_boxes)]
    return 100.0 * sum(hits) / len(hits)


# ---------------------------------------------------------------------------------------------
# Data: ground-truth regions and candidates with their box features
# ---------------------------------------------------------------------------------------------
def _listener_cache_file(cfg, file_name: str) -> str:
    """``<the test first-stage cache folder>_boxes/<image>.pth``: the frozen detector's box
    features at the image's ground-truth boxes and at its candidates' boxes."""
    folder = first_stage_cache_dir(cfg, cfg.MODEL.REF_NMS.MIN_CANDIDATES_TEST) + "_boxes"
    stem = os.path.splitext(os.path.basename(file_name))[0]
    digest = hashlib.sha1(os.path.abspath(file_name).encode()).hexdigest()[:8]
    return os.path.join(folder, f"{stem}_{digest}.pth")


def build_listener_images(
    cfg, dataset_name: str, with_candidates: bool = True, max_images: int = 0
) -> list[dict]:
    """Every image of ``dataset_name`` (its first ``max_images``) with what the listener reads.

    Per image: the keys of :func:`ref_nms.trainer.build_image_items` (``expressions``, each with
    ``ann_id``, ``tokens``, ``referent_box``, ...) plus

    - ``gt_boxes`` float32 ``(G, 4)``, ``gt_classes`` int64 ``(G,)`` (contiguous ids),
      ``gt_ann_ids`` (list), ``gt_features`` float32 ``(G, v)``: the annotated regions;
    - with ``with_candidates``: ``candidates`` (the first-stage cache at ``MIN_CANDIDATES_TEST``:
      boxes, scores, classes, ...) and ``candidate_features`` float32 ``(P, v)``, e_v pooled
      at each candidate's own box.

    The box features are computed once with the frozen detector and cached next to the
    first-stage cache (:func:`ref_nms.first_stage.box_features`).
    """
    from .trainer import build_image_items  # the trainer imports the data modules

    c = cfg.MODEL.REF_NMS
    min_candidates = c.MIN_CANDIDATES_TEST if with_candidates else None
    items = build_image_items(cfg, [dataset_name], max_images, min_candidates)
    dicts = {d["image_id"]: d for _, d in load_image_dicts([dataset_name], max_images)}
    detector = mapper = None
    out = []
    for item in items:
        d = dicts[item["image_id"]]
        anns = d["annotations"]
        gt_boxes = torch.tensor([annotation_xyxy(a) for a in anns], dtype=torch.float32)
        gt_boxes = gt_boxes.reshape(-1, 4)
        cand = load_candidates(item["candidates_file"]) if with_candidates else None
        path = _listener_cache_file(cfg, d["file_name"])
        cached = torch.load(path, map_location="cpu") if os.path.isfile(path) else None
        if cached is not None and with_candidates and cached.get("candidate_features") is None:
            cached = None  # cached for training (ground truth only): add the candidates
        if cached is None:
            if detector is None:
                detector, det_cfg = build_detector(cfg)
                mapper = DatasetMapper(det_cfg, is_train=False)
            boxes = torch.cat([gt_boxes] + ([cand["boxes"]] if with_candidates else []))
            feats = box_features(detector, [mapper(dict(d))], [boxes])[0]
            g = gt_boxes.shape[0]
            cached = {
                "gt_boxes": gt_boxes,
                "gt_features": feats[:g],
                "candidate_features": feats[g:] if with_candidates else None,
                "num_candidates": int(cand["boxes"].shape[0]) if with_candidates else None,
            }
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save(cached, tmp)
            os.replace(tmp, path)
        if cached["gt_features"].shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"stale listener cache {path}: delete it")
        image = dict(item)
        image.update(
            height=int(d["height"]),
            width=int(d["width"]),
            gt_boxes=gt_boxes,
            gt_classes=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            gt_ann_ids=[a["id"] for a in anns],
            gt_features=cached["gt_features"].float(),
        )
        if with_candidates:
            if cached["num_candidates"] != cand["boxes"].shape[0]:
                raise ValueError(f"stale listener cache {path}: delete it")
            image.update(candidates=cand, candidate_features=cached["candidate_features"].float())
        out.append(image)
    return out


def listener_examples(images: list[dict]) -> list[tuple[int, int, int]]:
    """The training examples over ground-truth regions: ``(image index, expression index,
    referent index among the image's gt boxes)`` for every expression."""
    out = []
    for i, image in enumerate(images):
        index = {a: k for k, a in enumerate(image["gt_ann_ids"])}
        for e, expr in enumerate(image["expressions"]):
            if expr["ann_id"] not in index:
                raise ValueError(
                    f"image {image['image_id']}: expression {expr.get('sent_id')} refers to "
                    f"annotation {expr['ann_id']}, not among the image's annotations"
                )
            out.append((i, e, index[expr["ann_id"]]))
    return out


def _pad(rows: list[tuple]) -> tuple:
    """Pad (features (N, v), boxes (N, 4), classes (N,), (H, W)) rows to a batch."""
    b = len(rows)
    n = max([r[0].shape[0] for r in rows] + [0])
    v = rows[0][0].shape[1] if rows else 0
    feats = torch.zeros(b, n, v)
    boxes = torch.zeros(b, n, 4)
    classes = torch.zeros(b, n, dtype=torch.int64)
    valid = torch.zeros(b, n, dtype=torch.bool)
    sizes = torch.zeros(b, 2)
    for i, (f, bx, cl, hw) in enumerate(rows):
        k = f.shape[0]
        feats[i, :k], boxes[i, :k], classes[i, :k], valid[i, :k] = f, bx, cl, True
        sizes[i] = torch.tensor(hw, dtype=torch.float32)
    return feats, boxes, classes, valid, sizes


def _gt_row(image: dict) -> tuple:
    return (image["gt_features"], image["gt_boxes"], image["gt_classes"],
            (image["height"], image["width"]))  # fmt: skip


def train_listener(
    listener: Listener,
    images: list[dict],
    *,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Train on the ground-truth regions of ``images`` (:func:`build_listener_images`): per
    expression, softmax over the image's annotated boxes, cross-entropy on the referent; Adam.

    Returns:
        the mean training loss of each epoch.
    """
    examples = listener_examples(images)
    if not examples:
        raise ValueError("no training expression: the listener's training images have none")
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(listener.parameters(), lr=lr, weight_decay=weight_decay)
    listener.train()
    history = []
    for _ in range(int(epochs)):
        order = torch.randperm(len(examples), generator=gen).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = [examples[k] for k in order[start : start + batch_size]]
            feats, boxes, classes, valid, sizes = _pad([_gt_row(images[i]) for i, _, _ in batch])
            tokens = [images[i]["expressions"][e]["tokens"] for i, e, _ in batch]
            target = torch.tensor([t for _, _, t in batch])
            logits = listener(feats, boxes, classes, valid, sizes, tokens)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(batch)
        history.append(total / len(examples))
    listener.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Proposal sets and evaluation
# ---------------------------------------------------------------------------------------------
def expression_proposals(
    candidates: dict,
    relatedness: torch.Tensor | None = None,
    *,
    nms_thresh: float = 0.3,
    selection_thresh: float = 0.1,
    keep_top1: bool = True,
    baseline_score_thresh: float = 0.65,
    baseline_step: float | None = 0.1,
) -> torch.Tensor:
    """One expression's proposals (indices into ``candidates``) in Table 2's two settings:
    ``relatedness`` None: the baseline two-stage methods use (NMS on c, c >= 0.65,
    :func:`ref_nms.selection.baseline_proposals`); else Ref-NMS's (NMS on s = r·c, top-1 +
    s > conf, :func:`ref_nms.selection.select_proposals`)."""
    boxes, classes, scores = candidates["boxes"], candidates["classes"], candidates["scores"]
    if relatedness is None:
        return baseline_proposals(
            boxes, classes, scores, nms_thresh, baseline_score_thresh, baseline_step
        )
    return select_proposals(
        boxes, classes, scores, relatedness.to(scores.dtype), nms_thresh,
        score_thresh=selection_thresh, keep_top1=keep_top1,
    )  # fmt: skip


@torch.no_grad()
def evaluate_listener(listener: Listener, images: list[dict], proposals=None,
                      hit_iou: float = 0.5) -> dict:  # fmt: skip
    """Top-1 accuracy of ``listener`` with one proposal set.

    Args:
        images: :func:`build_listener_images` output (with candidates unless ``proposals`` is
            None).
        proposals: None for the ground-truth boxes as candidates (the upper bound), else a
            function ``(image index, expression index) -> int64 indices into the image's
            candidates``.
        hit_iou: a prediction is correct at IoU > this with the referent.

    Returns:
        ``{"accuracy": %, "referent_recall": % of expressions whose proposals hold the
        referent (IoU > hit_iou; the accuracy's ceiling), "proposals": mean count,
        "expressions": count}``; an expression without proposals counts as wrong.
    """
    listener.eval()
    predicted, referents, recall, counts = [], [], [], []
    for i, image in enumerate(images):
        exprs = image["expressions"]
        if not exprs:
            continue
        hw = (image["height"], image["width"])
        rows = []
        for e in range(len(exprs)):
            if proposals is None:
                rows.append(_gt_row(image))
                continue
            keep = proposals(i, e).to(torch.int64)
            cand = image["candidates"]
            rows.append((image["candidate_features"][keep], cand["boxes"][keep],
                         cand["classes"][keep], hw))  # fmt: skip
        feats, boxes, classes, valid, sizes = _pad(rows)
        logits = listener(feats, boxes, classes, valid, sizes, [x["tokens"] for x in exprs])
        for e, expr in enumerate(exprs):
            k = int(valid[e].sum())
            counts.append(k)
            predicted.append(boxes[e, int(logits[e].argmax())] if k else None)
            referents.append(expr["referent_box"])
            ref = torch.tensor([expr["referent_box"]], dtype=torch.float32)
            recall.append(bool(k) and bool((box_iou(boxes[e, :k], ref) > hit_iou).any()))
    n = len(predicted)
    return {
        "accuracy": grounding_accuracy(predicted, referents, hit_iou),
        "referent_recall": 100.0 * sum(recall) / n if n else math.nan,
        "proposals": sum(counts) / n if n else math.nan,
        "expressions": float(n),
    }
