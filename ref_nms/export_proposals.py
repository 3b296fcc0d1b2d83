"""Write the proposals of each expression for two-stage grounding models (MAttNet, CM-Att-Erase).

::

    python -m ref_nms.export_proposals --config-file configs/RefNMS/<config>.yaml \\
        [--output-dir DIR] [--method ref_nms|baseline] [--tag TAG] MODEL.WEIGHTS <model.pth> \\
        [KEY VALUE ...]

For the datasets of ``DATASETS.TEST`` it writes, per refer dataset (e.g. RefCOCO unc: all its
test splits in one file, each record naming its split), into ``--output-dir`` (default
``OUTPUT_DIR/proposals``):

- ``matt_dets_<m>_<tag>_<dataset>_<splitBy>_<top_N>.json``: what MAttNet's fork reads
  (ref_nms.md §4.2): a JSON list, one record per kept proposal,
  ``{"det_id", "h5_id" (= det_id), "ref_id", "sent_id", "image_id", "box": [x, y, w, h] with
  w = x2 - x1 (as released; MAttNet's own dets use x2 - x1 + 1), "category_id" (the dataset's
  id), "category_name", "split"}``, without scores. The selection is ``MODEL.REF_NMS.SELECTION``:
  ``threshold`` (top-1, then s > SELECTION_THRESH; top_N = 0 in the name, as released),
  ``top_n`` (the TOP_N best) or ``all``. ``<m>`` is ``ref_nms_<LOSS>`` or ``baseline``.
- ``proposals_<m>_<tag>_<dataset>_<splitBy>.json``: every NMS survivor with its score,
  ``{split: {sent_id: [{"score", "box": [x1, y1, x2, y2], "cls_idx": contiguous id + 1}]}}``
  by decreasing score (the release's intermediate ``proposals_*.pkl``, for re-thresholding).

Consumers put the matt_dets file at
``cache/detections/<dataset>_<splitBy>/matt_dets_<m>_<tag>_<dataset>_<splitBy>_<top_N>.json``.
``--method baseline`` writes the MAttNet rule's proposals from the same cached detector output
(per-class NMS 0.3, c >= 0.65, lowered by 0.1 while none passes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm

from .config import add_ref_nms_config
from .selection import baseline_proposals, select_proposals

__all__ = ["METHODS", "export_proposals", "main", "matt_dets_record", "write_json"]

logger = logging.getLogger(__name__)

METHODS = ("ref_nms", "baseline")


def matt_dets_record(
    det_id: int, expr: dict, box_xyxy, category_id: int, category_name: str, split: str
) -> dict:
    """One record of MAttNet's ``matt_dets`` list (module docstring)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return {
        "det_id": int(det_id),
        "h5_id": int(det_id),
        "ref_id": expr.get("ref_id"),
        "sent_id": expr["sent_id"],
        "image_id": expr["image_id"],
        "box": [x1, y1, x2 - x1, y2 - y1],
        "category_id": int(category_id),
        "category_name": category_name,
        "split": split,
    }


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _selection(cfg) -> tuple[float | None, int | None, int]:
    """(score_thresh, top_n, top_N of the file name) of MODEL.REF_NMS.SELECTION."""
    c = cfg.MODEL.REF_NMS
    if c.SELECTION == "threshold":
        return c.SELECTION_THRESH, None, 0
    if c.SELECTION == "top_n":
        return None, c.TOP_N, c.TOP_N
    if c.SELECTION == "all":
        return None, None, 0
    raise ValueError(
        f"MODEL.REF_NMS.SELECTION must be 'threshold', 'top_n' or 'all', got {c.SELECTION!r}"
    )


def _select(cfg, boxes, classes, scores, relatedness, score_thresh, top_n):
    """(kept indices, every NMS survivor, their NMS scores) of one expression: Ref-NMS when
    ``relatedness`` is given, else the baseline."""
    c = cfg.MODEL.REF_NMS
    if relatedness is None:
        ones = torch.ones_like(scores)
        survivors = select_proposals(boxes, classes, scores, ones, c.NMS_THRESH)
        if score_thresh is not None:  # the MAttNet rule
            keep = baseline_proposals(
                boxes, classes, scores, c.NMS_THRESH, c.BASELINE_SCORE_THRESH,
                c.BASELINE_THRESH_STEP or None,
            )  # fmt: skip
        else:
            keep = survivors[:top_n]
        return keep, survivors, scores[survivors]
    survivors = select_proposals(boxes, classes, scores, relatedness, c.NMS_THRESH)
    fused = (relatedness * scores)[survivors]
    passed = torch.ones_like(fused, dtype=torch.bool)
    if score_thresh is not None:  # released threshold_with_confidence
        passed = fused > score_thresh
        if c.KEEP_TOP1 and passed.numel():
            passed[0] = True
    return survivors[passed][:top_n], survivors, fused


def export_proposals(
    cfg, model, output_dir: str, method: str = "ref_nms", tag: str = "d2"
) -> list[str]:
    """Write the files of the module docstring for ``cfg.DATASETS.TEST``; returns their paths
    (main process; ``[]`` on the others).

    Args:
        cfg: the Ref-NMS config.
        model: the trained ``RefNMS`` model (unused for ``method="baseline"``).
        output_dir: where to write.
        method: ``"ref_nms"`` or ``"baseline"``.
        tag: the ``<tid>`` part of the file names.
    """
    from .trainer import RefNMSTrainer

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    c = cfg.MODEL.REF_NMS
    score_thresh, top_n, top_name = _selection(cfg)
    m = f"ref_nms_{c.LOSS}" if method == "ref_nms" else "baseline"
    entries = []  # (dataset index, (dataset, split_by), split, sent_id, dets, proposals)
    for index, dataset_name in enumerate(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(dataset_name)
        key = (meta.get("refer_dataset", dataset_name), meta.get("refer_split_by", "none"))
        split = meta.get("refer_split", dataset_name)
        classes = meta.thing_classes
        to_dataset_id = {v: k for k, v in meta.get("thing_dataset_id_to_contiguous_id", {}).items()}
        loader = RefNMSTrainer.build_test_loader(cfg, dataset_name)
        with inference_context(model), torch.no_grad():
            for inputs in loader:
                outputs = model(inputs) if method == "ref_nms" else [None] * len(inputs)
                for item, output in zip(inputs, outputs):
                    cand = item["candidates"]
                    boxes, scores, classes_t = cand["boxes"], cand["scores"], cand["classes"]
                    for e, expr in enumerate(item["expressions"]):
                        r = None if output is None else output["relatedness"][e].float()
                        keep, survivors, fused = _select(
                            cfg, boxes, classes_t, scores, r, score_thresh, top_n
                        )
                        dets = []
                        for i in keep.tolist():
                            k = int(classes_t[i])
                            dets.append(
                                matt_dets_record(
                                    0,
                                    expr,
                                    boxes[i].tolist(),
                                    to_dataset_id.get(k, k + 1),
                                    classes[k],
                                    split,
                                )  # fmt: skip
                            )
                        props = [
                            {
                                "score": float(s),
                                "box": [float(v) for v in boxes[i]],
                                "cls_idx": int(classes_t[i]) + 1,
                            }  # fmt: skip
                            for i, s in zip(survivors.tolist(), fused.tolist())
                        ]
                        entries.append((index, key, split, expr["sent_id"], dets, props))
    entries = [e for part in comm.gather(entries, dst=0) for e in part]
    if not comm.is_main_process():
        return []
    groups: OrderedDict = OrderedDict()  # (dataset, split_by) -> (dets, proposals)
    for _, key, split, sent_id, dets, props in sorted(entries, key=lambda e: (e[0], e[3])):
        all_dets, proposals = groups.setdefault(key, ([], OrderedDict()))
        for det in dets:
            det["det_id"] = det["h5_id"] = len(all_dets)
            all_dets.append(det)
        proposals.setdefault(split, OrderedDict())[str(sent_id)] = props
    paths = []
    for (dataset, split_by), (dets, proposals) in groups.items():
        det_path = os.path.join(
            output_dir, f"matt_dets_{m}_{tag}_{dataset}_{split_by}_{top_name}.json"
        )
        write_json(det_path, dets)
        prop_path = os.path.join(output_dir, f"proposals_{m}_{tag}_{dataset}_{split_by}.json")
        write_json(prop_path, proposals)
        logger.info(f"Wrote {len(dets)} proposals to {det_path} (scores: {prop_path})")
        paths += [det_path, prop_path]
    return paths


def main(argv: list[str] | None = None) -> list[str]:
    """The command line of the module docstring; returns the written paths."""
    from d2kit.engine import train_net

    from .trainer import RefNMSTrainer

    parser = default_argument_parser()
    parser.add_argument("--output-dir", default="", help="default: OUTPUT_DIR/proposals")
    parser.add_argument("--method", default="ref_nms", choices=METHODS)
    parser.add_argument("--tag", default="d2", help="the <tid> part of the file names")
    args = parser.parse_args(argv)
    cfg = train_net.setup(args, [add_ref_nms_config])
    model = RefNMSTrainer.build_model(cfg)
    if args.method == "ref_nms":
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS is empty: pass the trained Ref-NMS weights")
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=False
        )
    output_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "proposals")
    paths = export_proposals(cfg, model, output_dir, args.method, args.tag)
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
