"""The first stage of Ref-NMS: a frozen two-stage detector's candidates and RoI features.

Paper ("Relatedness Module"): a pre-trained detector gives thousands of boxes; those with a class
confidence c_i > δ = 0.05 form the set B, and each b_i ∈ B is described by a region feature
v_i = e_v(b_i) ("an RoI Pooling layer and a convolutional head network"). As released
(ref_nms.md §1.1), a candidate is a **(RoI, class) pair** of the ~300 second-stage RoIs, with the
class-specific regressed box and the class probability, taken **before** the detector's NMS
(Ref-NMS replaces it); a RoI enters once per class above δ.

Region feature (ref_nms.md §6 #20): v_i is the feature the detector's own box head computes for
the candidate's RoI, i.e. what its box predictor reads:

- ``StandardROIHeads`` (FPN): ROIAlign on the FPN levels + the box head (2 FC) -> the FC
  feature, ``ROI_BOX_HEAD.FC_DIM`` wide;
- ``Res5ROIHeads`` (C4, the paper's R-101 Mask R-CNN): ROIAlign on res4 + res5, mean-pooled ->
  2048 (the release's v_i: a copy of layer4 on a 7×7 crop of the C4 map, mean-pooled).

All candidates of one RoI share its feature. The detector is frozen and, by default, so is e_v:
the features are computed once and cached, whereas the paper fine-tunes its head network (4e-4)
and the release a copy of layer4. ``MODEL.REF_NMS.REGION_ENCODER`` trains a small encoder on the
cached feature ("mlp"), or a copy of the detector's box head on the cached RoI-pooled features
("box_head", with ``CACHE_POOLED_FEATURES``; :func:`region_head`); see projects/RefNMS/README.md.
:func:`box_features` pools the same e_v at arbitrary boxes (ground-truth regions, the
candidates' own boxes) for the second-stage listener (:mod:`ref_nms.grounding`).

:func:`first_stage_candidates` runs the detector's parts (backbone, RPN, ROI pooling, box head,
box predictor) without Detectron2's inference post-processing; :func:`build_first_stage_cache`
stores one file per image (``torch.save``) so that training does not rerun the detector.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils import comm
from torch import nn

from d2kit.config import add_d2kit_config
from d2kit.paths import REPO_ROOT, resolve_config_file

from ._checks import check_boxes
from .selection import filter_candidates

__all__ = [
    "FIRST_STAGE_VERSION",
    "RegionHead",
    "box_features",
    "build_detector",
    "build_first_stage_cache",
    "check_visual_dim",
    "first_stage_cache_dir",
    "first_stage_candidates",
    "load_candidates",
    "region_feature_dim",
    "region_head",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

#: Bump when the cached content changes, so that stale caches are not reused.
FIRST_STAGE_VERSION = 1

_URL_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "manifold://")


def resolve_weights(path: str, hint: str = "") -> str:
    """A weights path as given, absolute if it is a file (here or under the repository root);
    URLs and ``""`` unchanged.

    Raises:
        FileNotFoundError: naming the path (and ``hint``, e.g. how to produce the file).
    """
    if not path or path.startswith(_URL_PREFIXES):
        return path
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"detector weights not found: {path!r}" + (f"; {hint}" if hint else ""))


def _detector_cfg(cfg: CfgNode) -> CfgNode:
    c = cfg.MODEL.REF_NMS
    if not c.DETECTOR_CONFIG:
        raise ValueError(
            "MODEL.REF_NMS.DETECTOR_CONFIG is empty: set it to the detector's config file (e.g. "
            "configs/RefNMS/quick_schedules/detector_faster_rcnn_R_18_FPN_quick_synth_referring"
            ".yaml)"
        )
    det_cfg = get_cfg()
    add_d2kit_config(det_cfg)
    config_file = resolve_config_file(c.DETECTOR_CONFIG)
    det_cfg.merge_from_file(config_file)
    det_cfg.merge_from_list([str(o) for o in c.DETECTOR_OPTS])
    det_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    weights = c.DETECTOR_WEIGHTS or det_cfg.MODEL.WEIGHTS
    det_cfg.MODEL.WEIGHTS = resolve_weights(
        weights,
        f"train the detector first: python -m d2kit.engine.train_net --config-file "
        f"{c.DETECTOR_CONFIG} (it writes OUTPUT_DIR/model_final.pth), or set "
        "MODEL.REF_NMS.DETECTOR_WEIGHTS",
    )
    det_cfg.freeze()
    return det_cfg


def build_detector(cfg: CfgNode) -> tuple[nn.Module, CfgNode]:
    """The frozen first stage named by ``cfg.MODEL.REF_NMS.DETECTOR_CONFIG`` / ``DETECTOR_WEIGHTS``
    (``DETECTOR_OPTS`` applied, ``MODEL.DEVICE`` taken from ``cfg``), in eval mode, with
    ``requires_grad`` off.

    Returns:
        (model, detector config).
    """
    det_cfg = _detector_cfg(cfg)
    model = build_model(det_cfg)
    if det_cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(det_cfg.MODEL.WEIGHTS)
    else:
        logger.warning(
            "Ref-NMS first stage: no detector weights (MODEL.REF_NMS.DETECTOR_WEIGHTS and the "
            "detector config's MODEL.WEIGHTS are empty): the detector has random weights."
        )
    model.eval()
    model.requires_grad_(False)
    return model, det_cfg


def _check_detector(model: nn.Module) -> None:
    for part in ("backbone", "proposal_generator", "roi_heads", "preprocess_image"):
        if getattr(model, part, None) is None:
            raise ValueError(
                f"the first stage must be a two-stage GeneralizedRCNN (backbone, RPN, ROI heads); "
                f"{type(model).__name__} has no {part!r}"
            )
    heads = model.roi_heads
    box_head = getattr(heads, "box_head", None)
    if isinstance(box_head, nn.ModuleList):
        raise ValueError(
            f"{type(heads).__name__} has several box heads (a cascade): the first stage supports "
            "StandardROIHeads (FPN) and Res5ROIHeads (C4)"
        )
    if not (box_head is not None and hasattr(heads, "box_pooler")) and not (
        hasattr(heads, "res5") and hasattr(heads, "pooler")
    ):
        raise ValueError(
            f"unsupported ROI heads {type(heads).__name__}: the first stage supports "
            "StandardROIHeads (box_pooler + box_head) and Res5ROIHeads (pooler + res5)"
        )


def _is_standard(heads: nn.Module) -> bool:
    return getattr(heads, "box_head", None) is not None and hasattr(heads, "box_pooler")


def _pool_rois(heads: nn.Module, features: dict, boxes: list) -> torch.Tensor:
    """The box head's input for every box (``Boxes`` per image, input-image coordinates):
    ``(ΣR, C, S, S)`` (FPN: ROIAlign on the FPN levels; C4: on res4)."""
    if _is_standard(heads):
        return heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
    return heads.pooler([features[f] for f in heads.in_features], boxes)


class RegionHead(nn.Module):
    """e_v on pooled RoI features: the detector's box head (FPN: the FC head, flattened output)
    or res5 + the spatial mean (C4), ``(N, C, S, S)`` -> ``(N, v)``. :func:`region_head` returns
    the detector's own (frozen) one or a trainable copy."""

    def __init__(self, head: nn.Module, mean_pool: bool):
        super().__init__()
        self.head = head
        self.mean_pool = bool(mean_pool)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.head(pooled)
        return x.mean(dim=[2, 3]) if self.mean_pool else torch.flatten(x, start_dim=1)


def region_head(model: nn.Module, trainable_copy: bool = False) -> RegionHead:
    """The detector's region head (its box predictor's input from the pooled RoI features).

    Args:
        model: a two-stage GeneralizedRCNN (StandardROIHeads or Res5ROIHeads).
        trainable_copy: a deep copy with ``requires_grad`` on (the fine-tuned e_v of the paper,
            initialised from the detector's weights); False: the detector's own module.
    """
    _check_detector(model)
    heads = model.roi_heads
    standard = _is_standard(heads)
    head = heads.box_head if standard else heads.res5
    if trainable_copy:
        head = copy.deepcopy(head).requires_grad_(True)
    return RegionHead(head, mean_pool=not standard)


def _box_features(heads: nn.Module, features: dict, proposals: list) -> tuple:
    """The pooled RoI features and the box predictor's input for every RoI:
    ``(ΣR, C, S, S)`` and ``(ΣR, D)`` (see the module docstring)."""
    pooled = _pool_rois(heads, features, [p.proposal_boxes for p in proposals])
    if _is_standard(heads):
        return pooled, torch.flatten(heads.box_head(pooled), start_dim=1)
    # Res5ROIHeads: what its forward computes before box_predictor
    return pooled, heads.res5(pooled).mean(dim=[2, 3])


def region_feature_dim(model: nn.Module) -> int:
    """v, the width of the region features :func:`first_stage_candidates` returns for ``model``."""
    _check_detector(model)
    heads = model.roi_heads
    if _is_standard(heads):
        shape = heads.box_head.output_shape
        return int(shape.channels * (shape.height or 1) * (shape.width or 1))
    return int(heads.res5[-1].out_channels)


def check_visual_dim(model: nn.Module, visual_dim: int) -> int:
    """The width of ``model``'s region features; a ValueError naming MODEL.REF_NMS.VISUAL_DIM
    when it is not ``visual_dim``."""
    dim = region_feature_dim(model)
    if dim != visual_dim:
        raise ValueError(
            f"the detector's region features are {dim}-d but MODEL.REF_NMS.VISUAL_DIM is "
            f"{visual_dim}: set MODEL.REF_NMS.VISUAL_DIM {dim}"
        )
    return dim


@torch.no_grad()
def first_stage_candidates(
    model: nn.Module,
    batched_inputs: list[dict],
    delta: float = 0.05,
    min_candidates: int = 1,
    step: float = 0.005,
    return_pooled: bool = False,
) -> list[dict]:
    """The candidate set B of each image: every (RoI, class) pair with class probability > δ,
    before NMS, with its class-specific box and its RoI's feature (module docstring).

    Args:
        model: a Detectron2 GeneralizedRCNN (StandardROIHeads or Res5ROIHeads; any backbone), in
            eval mode.
        batched_inputs: Detectron2 inputs (``image`` CHW tensor as the detector's test mapper
            gives it; optional ``height``/``width``, the size to report boxes in, as for
            ``model.inference``).
        delta: δ (0.05); the test is c > δ.
        min_candidates: lower δ by ``step`` while fewer pairs pass (released: 32 for training
            images, 1 at inference; :func:`ref_nms.selection.filter_candidates`).
        step: the lowering step (0.005).
        return_pooled: also return each RoI's pooled feature map (the box head's input).

    Returns:
        one dict per image (CPU tensors):

        - ``boxes``: float32 ``(P, 4)`` x1, y1, x2, y2 in the original image (clipped to it);
        - ``scores``: float32 ``(P,)`` c in (δ', 1], δ' the threshold used;
        - ``classes``: int64 ``(P,)`` contiguous class ids in [0, K);
        - ``feature_index``: int64 ``(P,)``, the row of ``features`` of the candidate's RoI;
        - ``features``: float32 ``(F, v)``, one row per RoI with at least one candidate;
        - ``threshold`` (float, δ or the lowered value), ``num_rois`` (int, R),
          ``height``/``width`` (int);
        - with ``return_pooled``: ``pooled``, float32 ``(F, C, S, S)``, the rows of ``features``
          before the box head (:func:`region_head` maps them to ``features``).
    """
    _check_detector(model)
    if model.training:
        raise ValueError("the detector must be in eval mode (model.eval())")
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    heads = model.roi_heads
    pooled, box_features = _box_features(heads, features, proposals)
    predictor = heads.box_predictor
    predictions = predictor(box_features)
    probs = predictor.predict_probs(predictions, proposals)
    boxes = predictor.predict_boxes(predictions, proposals)
    sizes = [len(p) for p in proposals]
    box_features, pooled = box_features.split(sizes), pooled.split(sizes)
    out = []
    for i, inputs in enumerate(batched_inputs):
        prob, box, feat = probs[i], boxes[i], box_features[i]
        r, k = prob.shape[0], prob.shape[1] - 1
        # Detectron2's predictor puts the background last (MAttNet's: first)
        class_scores = prob[:, :k]
        box = box.reshape(r, -1, 4)
        valid = torch.isfinite(box).all(dim=2).all(dim=1) & torch.isfinite(prob).all(dim=1)
        class_scores = class_scores.masked_fill(~valid[:, None], 0.0).clamp(0.0, 1.0)
        box = box.masked_fill(~valid[:, None, None], 0.0)
        in_h, in_w = images.image_sizes[i]
        out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
        flat = Boxes(box.reshape(-1, 4))
        flat.clip((in_h, in_w))
        # as detector_postprocess: back to the original size, clipped there
        flat.scale(out_w / in_w, out_h / in_h)
        flat.clip((out_h, out_w))
        box = flat.tensor.reshape(r, -1, 4)
        roi_index, class_index, threshold = filter_candidates(
            class_scores, delta, min_candidates, step
        )
        cand_boxes = box[roi_index, class_index if box.shape[1] > 1 else 0]
        rois, feature_index = torch.unique(roi_index, sorted=True, return_inverse=True)
        if return_pooled:
            out_pooled = {"pooled": pooled[i][rois].float().cpu()}
        else:
            out_pooled = {}
        out.append(
            {
                "boxes": cand_boxes.float().cpu(),
                "scores": class_scores[roi_index, class_index].float().cpu(),
                "classes": class_index.cpu(),
                "feature_index": feature_index.reshape(-1).cpu(),
                "features": feat[rois].float().cpu(),
                "threshold": float(threshold),
                "num_rois": int(r),
                "height": out_h,
                "width": out_w,
                **out_pooled,
            }
        )
    return out


@torch.no_grad()
def box_features(model: nn.Module, batched_inputs: list[dict], boxes: list) -> list[torch.Tensor]:
    """e_v at given boxes: the detector's box-head feature pooled exactly at each box (what
    MAttNet extracts for ground-truth regions and for its detections), the same feature as
    :func:`first_stage_candidates`' RoI features but at any box.

    Args:
        model: a Detectron2 two-stage GeneralizedRCNN in eval mode.
        batched_inputs: Detectron2 inputs (``image``, optional ``height``/``width``).
        boxes: one float ``(N_i, 4)`` tensor per image, x1, y1, x2, y2 in the original image
            (``height``/``width``) coordinates; may be empty.

    Returns:
        one float32 CPU tensor ``(N_i, v)`` per image.
    """
    _check_detector(model)
    if model.training:
        raise ValueError("the detector must be in eval mode (model.eval())")
    if len(boxes) != len(batched_inputs):
        raise ValueError(f"boxes has {len(boxes)} entries for {len(batched_inputs)} images")
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    scaled = []
    for i, (inputs, b) in enumerate(zip(batched_inputs, boxes)):
        check_boxes(f"boxes[{i}]", b)
        in_h, in_w = images.image_sizes[i]
        out_h, out_w = int(inputs.get("height", in_h)), int(inputs.get("width", in_w))
        scale = torch.tensor([in_w / out_w, in_h / out_h] * 2, dtype=torch.float32)
        scaled.append(Boxes((b.float().cpu() * scale).to(images.tensor.device)))
    heads = model.roi_heads
    pooled = _pool_rois(heads, features, scaled)
    dim = region_feature_dim(model)
    feats = region_head(model)(pooled) if pooled.shape[0] else torch.zeros(0, dim)
    return [f.float().cpu() for f in feats.split([len(b) for b in scaled])]


def _weights_stamp(path: str) -> dict:
    if not path or not os.path.isfile(path):
        return {"path": path}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def first_stage_cache_dir(cfg: CfgNode, min_candidates: int) -> str:
    """The folder of this first stage's cached candidates: ``<CACHE_DIR>/<fingerprint>``, the
    fingerprint a hash of the detector config (after DETECTOR_OPTS), its weights file (path,
    size, mtime), δ, the lowering rule, the feature dtype and :data:`FIRST_STAGE_VERSION`."""
    c = cfg.MODEL.REF_NMS
    det_cfg = _detector_cfg(cfg)
    key = {
        "version": FIRST_STAGE_VERSION,
        "detector": det_cfg.dump(),
        "weights": _weights_stamp(det_cfg.MODEL.WEIGHTS),
        "delta": float(c.CANDIDATE_SCORE_THRESH),
        "step": float(c.CANDIDATE_THRESH_STEP),
        "min_candidates": int(min_candidates),
        "dtype": c.CACHE_FEATURE_DTYPE,
    }
    if c.CACHE_POOLED_FEATURES:  # only when on: the plain caches keep their fingerprint
        key["pooled"] = True
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = c.CACHE_DIR or os.path.join(cfg.OUTPUT_DIR, "first_stage_cache")
    return os.path.join(os.path.abspath(root), digest)


def _cache_file(cache_dir: str, file_name: str) -> str:
    """One file per image, named by the image file (so RefCOCO and RefCOCO+, which share
    images, share entries)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    digest = hashlib.sha1(os.path.abspath(file_name).encode()).hexdigest()[:8]
    return os.path.join(cache_dir, f"{stem}_{digest}.pth")


_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def build_first_stage_cache(
    cfg: CfgNode, dataset_dicts: list[dict], min_candidates: int
) -> list[str]:
    """Run the first stage on the images not cached yet and return each image's cache file.

    Every process handles a share of the missing images, then all wait for each other.

    Args:
        cfg: a config with the Ref-NMS keys (MODEL.REF_NMS.DETECTOR_*, CANDIDATE_*, CACHE_*,
            VISUAL_DIM).
        dataset_dicts: Detectron2 dataset dicts (``file_name``, ``image_id``, ``height``,
            ``width``).
        min_candidates: MIN_CANDIDATES_TRAIN or MIN_CANDIDATES_TEST.

    Returns:
        the cache file of each dict, in order (:func:`load_candidates` reads one).
    """
    c = cfg.MODEL.REF_NMS
    if c.CACHE_FEATURE_DTYPE not in _DTYPES:
        raise ValueError(
            f"MODEL.REF_NMS.CACHE_FEATURE_DTYPE must be one of {sorted(_DTYPES)}, got "
            f"{c.CACHE_FEATURE_DTYPE!r}"
        )
    cache_dir = first_stage_cache_dir(cfg, min_candidates)
    files = [_cache_file(cache_dir, d["file_name"]) for d in dataset_dicts]
    missing, seen = [], set()
    for i, f in enumerate(files):  # an image listed twice is computed once
        if f not in seen and not os.path.isfile(f):
            missing.append(i)
        seen.add(f)
    mine = missing[comm.get_rank() :: comm.get_world_size()]
    if mine:
        os.makedirs(cache_dir, exist_ok=True)
        model, det_cfg = build_detector(cfg)
        dim = check_visual_dim(model, c.VISUAL_DIM)
        meta_file = os.path.join(cache_dir, "meta.json")
        if comm.is_main_process() and not os.path.isfile(meta_file):
            meta = {
                "detector_config": c.DETECTOR_CONFIG,
                "weights": det_cfg.MODEL.WEIGHTS,
                "delta": c.CANDIDATE_SCORE_THRESH,
                "min_candidates": min_candidates,
                "visual_dim": dim,
                "version": FIRST_STAGE_VERSION,
            }
            with open(meta_file, "w") as f:
                json.dump(meta, f, indent=2)
        mapper = DatasetMapper(det_cfg, is_train=False)
        batch = max(1, int(c.FIRST_STAGE_BATCH_SIZE))
        logger.info(f"Ref-NMS first stage: {len(mine)} images to cache in {cache_dir}")
        done = 0
        for start in range(0, len(mine), batch):
            idx = mine[start : start + batch]
            inputs = [mapper(dict(dataset_dicts[i])) for i in idx]
            results = first_stage_candidates(
                model, inputs, c.CANDIDATE_SCORE_THRESH, min_candidates, c.CANDIDATE_THRESH_STEP,
                return_pooled=bool(c.CACHE_POOLED_FEATURES),
            )  # fmt: skip
            for i, res in zip(idx, results):
                res["features"] = res["features"].to(_DTYPES[c.CACHE_FEATURE_DTYPE])
                if "pooled" in res:
                    res["pooled"] = res["pooled"].to(_DTYPES[c.CACHE_FEATURE_DTYPE])
                res["image_id"] = dataset_dicts[i]["image_id"]
                res["file_name"] = dataset_dicts[i]["file_name"]
                tmp = f"{files[i]}.{os.getpid()}.tmp"
                torch.save(res, tmp)
                os.replace(tmp, files[i])
            done += len(idx)
            if done % 100 < batch or done == len(mine):
                logger.info(f"Ref-NMS first stage: {done}/{len(mine)} images cached")
        del model
    comm.synchronize()
    return files


def load_candidates(path: str) -> dict:
    """A cached image of :func:`build_first_stage_cache`: the dict of
    :func:`first_stage_candidates` (features in the cache dtype) plus ``image_id``,
    ``file_name``."""
    try:
        return torch.load(path, map_location="cpu")
    except FileNotFoundError:
        raise FileNotFoundError(f"first-stage cache file missing: {path}") from None
