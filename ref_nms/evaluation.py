"""Table 1 of Ref-NMS: recall of the referent and of the context objects by the proposals of each
expression, for Ref-NMS and for the baseline two-stage grounding methods use.

Per expression, four proposal lists are made from the same cached candidates (ref_nms.md §1.4):

============  ==========================================  =========================================
setting       Ref-NMS (``"ref_nms"``)                     baseline (``"baseline"``)
============  ==========================================  =========================================
``top<N>``    NMS (0.3, per class) on s = r·c, N best     NMS on c, the N best (Table 1's N = 100)
``real``      NMS on s, top-1 + s > conf (released rule)  NMS on c, c >= 0.65, lowered by 0.1 while
                                                          none passes (MAttNet, the "Real" row)
============  ==========================================  =========================================

Recall (ref_nms.md §3, utils/hit_rate_utils.py): an expression's referent is recalled when a
proposal has IoU > 0.5 with it; its context recall is the fraction of its context boxes with such
a proposal, averaged over the expressions that have context boxes (the others are skipped).
Context boxes are the pseudo ground truth (``context``, what the paper reports) and, where the
data knows them (the synthetic referring data), the objects the sentence really mentions
(``context_true``). Values are in %, proposals per expression a mean count.

Extra selection thresholds (``sweep``) add ``real@<conf>/...`` rows and ``matched/...``: the
threshold whose mean number of proposals is closest to the baseline's real case. On data with
true context objects, ``pseudo_gt`` scores the pseudo ground truth against them (precision and
recall of the context object ids, :func:`ref_nms.pseudo_gt.pseudo_gt_precision_recall`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .losses import box_iou
from .pseudo_gt import mean_precision_recall, pseudo_gt_precision_recall
from .selection import baseline_proposals, select_proposals

__all__ = ["RefNMSEvaluator", "expression_recall", "summarize_recall"]

logger = logging.getLogger(__name__)


def _boxes(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).reshape(-1, 4)


def expression_recall(
    proposals: torch.Tensor,
    referent_box,
    context_boxes=None,
    true_context_boxes=None,
    iou_threshold: float = 0.5,
) -> dict:
    """Recall of one expression's proposals.

    Args:
        proposals: float ``(K, 4)`` x1, y1, x2, y2.
        referent_box: 4 numbers.
        context_boxes: ``(M, 4)`` pseudo context boxes (may be empty) or None.
        true_context_boxes: ``(M', 4)`` or None when unknown.
        iou_threshold: a box is hit by a proposal with IoU strictly above this.

    Returns:
        ``{"referent": 0.0 or 1.0, "context": fraction or NaN (no context box), "context_true":
        fraction or NaN (none / unknown), "proposals": K}``.
    """
    proposals = _boxes(proposals)

    def hit_fraction(targets) -> float:
        if targets is None:
            return math.nan
        targets = _boxes(targets)
        if targets.shape[0] == 0:
            return math.nan
        if proposals.shape[0] == 0:
            return 0.0
        hits = (box_iou(targets, proposals) > iou_threshold).any(dim=1)
        return float(hits.double().mean())

    return {
        "referent": hit_fraction([referent_box]),
        "context": hit_fraction(context_boxes),
        "context_true": hit_fraction(true_context_boxes),
        "proposals": float(proposals.shape[0]),
    }


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def summarize_recall(rows: list[dict]) -> dict[str, float]:
    """Means over expressions of :func:`expression_recall` rows: ``referent``, ``context``,
    ``context_true`` in % (NaN rows skipped; ``context_true`` left out when no row has it) and
    ``proposals`` (mean count)."""
    out = {
        "referent": 100.0 * _nanmean([r["referent"] for r in rows]),
        "context": 100.0 * _nanmean([r["context"] for r in rows]),
        "proposals": _nanmean([r["proposals"] for r in rows]),
    }
    true = _nanmean([r["context_true"] for r in rows])
    if not math.isnan(true):
        out["context_true"] = 100.0 * true
    return out


class RefNMSEvaluator(DatasetEvaluator):
    """Table 1 for one dataset (module docstring).

    ``process(inputs, outputs)``: ``inputs`` are the test loader's images
    (``{"candidates": {boxes, scores, classes, ...}, "expressions": [...]}``), ``outputs`` the
    model's ``{"relatedness": (E, P)}``.

    ``evaluate()`` returns ``{"ref_nms": {...}, "baseline": {...}}`` (plus ``"pseudo_gt"`` when
    the data has true context objects), keys ``top<N>/<metric>``, ``real/<metric>``,
    ``real@<conf>/<metric>``, ``matched/<metric>`` with metric in referent, context,
    context_true, proposals (see :func:`summarize_recall`), and ``expressions`` (the count).

    Args:
        dataset_name: for logs.
        nms_thresh: the per-class NMS IoU (released 0.3), for both.
        top_n: N of the top-N setting (100).
        selection_thresh: conf of Ref-NMS's real case (top-1, then s > conf).
        keep_top1: keep the best proposal whatever its score.
        baseline_score_thresh, baseline_step: the baseline's 0.65 and its lowering step.
        recall_iou: 0.5, strict.
        sweep: more conf values to evaluate.
        distributed: gather the rows of every process.
    """

    def __init__(
        self,
        dataset_name: str = "",
        *,
        nms_thresh: float = 0.3,
        top_n: int = 100,
        selection_thresh: float = 0.1,
        keep_top1: bool = True,
        baseline_score_thresh: float = 0.65,
        baseline_step: float | None = 0.1,
        recall_iou: float = 0.5,
        sweep=(),
        distributed: bool = True,
    ):
        self.dataset_name = dataset_name
        self.nms_thresh = float(nms_thresh)
        self.top_n = int(top_n)
        self.selection_thresh = float(selection_thresh)
        self.keep_top1 = bool(keep_top1)
        self.baseline_score_thresh = float(baseline_score_thresh)
        self.baseline_step = baseline_step if baseline_step else None
        self.recall_iou = float(recall_iou)
        self.sweep = tuple(float(t) for t in sweep)
        self.distributed = distributed
        self.reset()

    @classmethod
    def from_cfg(cls, cfg, dataset_name: str = "") -> RefNMSEvaluator:
        c = cfg.MODEL.REF_NMS
        return cls(
            dataset_name,
            nms_thresh=c.NMS_THRESH,
            top_n=c.TOP_N,
            selection_thresh=c.SELECTION_THRESH,
            keep_top1=c.KEEP_TOP1,
            baseline_score_thresh=c.BASELINE_SCORE_THRESH,
            baseline_step=c.BASELINE_THRESH_STEP,
            recall_iou=c.RECALL_IOU,
            sweep=c.EVAL_SELECTION_THRESHS,
        )

    def reset(self):
        self._rows: list[dict] = []

    def _recall(self, boxes, keep, expr) -> dict:
        return expression_recall(
            boxes[keep], expr["referent_box"], expr.get("pseudo_context_boxes"),
            expr.get("true_context_boxes"), self.recall_iou,
        )  # fmt: skip

    def process(self, inputs, outputs):
        for item, output in zip(inputs, outputs):
            cand = item["candidates"]
            boxes, scores, classes = cand["boxes"], cand["scores"], cand["classes"]
            rel = output["relatedness"].to(torch.float32).cpu()
            ones = torch.ones_like(scores)
            base_top = select_proposals(
                boxes, classes, scores, ones, self.nms_thresh, top_n=self.top_n
            )
            base_real = baseline_proposals(
                boxes, classes, scores, self.nms_thresh, self.baseline_score_thresh,
                self.baseline_step,
            )  # fmt: skip
            for e, expr in enumerate(item["expressions"]):
                r = rel[e]
                row = {
                    "sent_id": expr.get("sent_id"),
                    "baseline": {
                        f"top{self.top_n}": self._recall(boxes, base_top, expr),
                        "real": self._recall(boxes, base_real, expr),
                    },
                    "ref_nms": {},
                }
                # NMS on s once; the selections are prefixes/filters of its sorted survivors
                survivors = select_proposals(boxes, classes, scores, r, self.nms_thresh)
                fused = (r * scores)[survivors]
                row["ref_nms"][f"top{self.top_n}"] = self._recall(
                    boxes, survivors[: self.top_n], expr
                )
                for name, conf in [("real", self.selection_thresh)] + [
                    (f"real@{t:g}", t) for t in self.sweep
                ]:
                    passed = fused > conf
                    if self.keep_top1 and passed.numel():
                        passed[0] = True
                    row["ref_nms"][name] = self._recall(boxes, survivors[passed], expr)
                if expr.get("true_context_ids") is not None:
                    row["pseudo_gt"] = pseudo_gt_precision_recall(
                        expr.get("pseudo_context_ids", []), expr["true_context_ids"]
                    )
                self._rows.append(row)

    def evaluate(self):
        rows = self._rows
        if self.distributed:
            comm.synchronize()
            rows = list(itertools.chain(*comm.gather(rows, dst=0)))
            if not comm.is_main_process():
                return {}
        if not rows:
            logger.warning(f"[RefNMSEvaluator] no expression in {self.dataset_name!r}")
            return {}
        results: OrderedDict = OrderedDict()
        for method in ("ref_nms", "baseline"):
            res: OrderedDict = OrderedDict()
            for setting in rows[0][method]:
                summary = summarize_recall([row[method][setting] for row in rows])
                for metric, value in summary.items():
                    res[f"{setting}/{metric}"] = value
            res["expressions"] = float(len(rows))
            results[method] = res
        if self.sweep:
            target = results["baseline"]["real/proposals"]
            best = min(
                self.sweep,
                key=lambda t: (abs(results["ref_nms"][f"real@{t:g}/proposals"] - target), -t),
            )
            for key in list(results["ref_nms"]):
                if key.startswith(f"real@{best:g}/"):
                    results["ref_nms"]["matched/" + key.split("/", 1)[1]] = results["ref_nms"][key]
            results["ref_nms"]["matched/conf"] = best
        pr = [row["pseudo_gt"] for row in rows if "pseudo_gt" in row]
        if pr:
            precision, recall = mean_precision_recall(pr)
            results["pseudo_gt"] = OrderedDict(
                precision=100.0 * precision, recall=100.0 * recall, expressions=float(len(pr))
            )
        logger.info(f"Ref-NMS recall on {self.dataset_name}: {dict(results)}")
        return results
