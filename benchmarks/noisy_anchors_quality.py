"""Noisy Anchors vs the detectron2 baselines on the quick synthetic configs (paper Tables 1, 5-7).

Two phases (run both by default):

``train``: snapshots the merged config of every run in ``RUNS`` first, then trains them one after
another (same seed and schedule) through ``projects/NoisyAnchors/train_net.py`` into
``output/noisy_anchors_bench/<run>/`` (a run whose ``model_final.pth`` exists is skipped).

``analyze``: loads each run's final weights and measures on ``synth_shapes_val``:

- COCO box AP / AP50 / AP75 (``COCOEvaluator``);
- Table 7: over the whole split, the top 2% most confident detections before and after NMS,
  their mean confidence, their mean IoU with the best-matching ground truth of the predicted
  class, and the Pearson correlation of confidence and IoU (before NMS). "Before NMS" are the
  inputs of the detector's own ``batched_nms`` call (recorded in the same inference pass, i.e.
  after the score threshold and per-level top-k), "after NMS" its outputs;
- Table 5 (Faster R-CNN runs): average recall of the RPN proposals at 100 / 300 / 1000 (IoU
  0.5:0.95, one-to-one greedy matching per image, as COCO's proposal AR).

Prints the tables, writes ``benchmarks/results/noisy_anchors_quality.json`` and the plot
``benchmarks/results/noisy_anchors_conf_vs_iou.png``.

    python benchmarks/noisy_anchors_quality.py            # train (if needed) and analyze
    python benchmarks/noisy_anchors_quality.py analyze    # analyze existing runs
    # the README's numbers (batch 4 with BASE_LR scaled, 150 iterations; see the README):
    python benchmarks/noisy_anchors_quality.py --batch 4
        --opts SOLVER.MAX_ITER 150 SOLVER.STEPS "(120,140)" SOLVER.WARMUP_ITERS 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import retinanet as retinanet_module
from detectron2.modeling.roi_heads import fast_rcnn as fast_rcnn_module
from detectron2.structures import Boxes, pairwise_iou

import d2kit  # noqa: F401  (registers the synthetic datasets)
import noisy_anchors
from d2kit.paths import REPO_ROOT

OUT_ROOT = os.path.join(REPO_ROOT, "output", "noisy_anchors_bench")
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
TRAIN_NET = os.path.join(REPO_ROOT, "projects", "NoisyAnchors", "train_net.py")
VAL = "synth_shapes_val"

#: run name -> config file (relative to the repository root), optionally with KEY VALUE overrides
RUNS = {
    "retinanet_baseline": "configs/quick_schedules/retinanet_R_18_FPN_quick_synth_shapes.yaml",
    "retinanet_noisy_anchors": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml"
    ),
    "faster_rcnn_baseline": "configs/quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    "faster_rcnn_noisy_anchors_rpn": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
    ),
    "retinanet_noisy_anchors_released": (
        "configs/NoisyAnchors/quick_schedules/"
        "noisy_anchors_released_retinanet_R_18_FPN_quick_synth_shapes.yaml"
    ),
    # Table 3 ablations: soft labels only (SL), re-weighting only (SR)
    "retinanet_noisy_anchors_sl_only": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        ["MODEL.NOISY_ANCHORS.REWEIGHTING", "False"],
    ),
    "retinanet_noisy_anchors_sr_only": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        ["MODEL.NOISY_ANCHORS.SOFT_LABELS", "False"],
    ),
}


def _merged_cfg(name: str):
    path, opts = (RUNS[name], []) if isinstance(RUNS[name], str) else RUNS[name]
    cfg = get_cfg()
    noisy_anchors.add_noisy_anchors_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, path))
    cfg.merge_from_list(opts)
    return cfg


def freeze_configs(runs: list[str], batch: int | None = None) -> None:
    """Write every run's fully merged config to ``<run>/frozen_config.yaml`` first, so that all
    runs train with the configs as they were when the benchmark started (a later edit of a base
    config cannot make baseline and method differ). Existing snapshots are kept."""
    for name in runs:
        path = os.path.join(OUT_ROOT, name, "frozen_config.yaml")
        if os.path.isfile(path):
            continue
        cfg = _merged_cfg(name)
        if batch:  # linear learning-rate scaling
            cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * batch / cfg.SOLVER.IMS_PER_BATCH
            cfg.SOLVER.IMS_PER_BATCH = batch
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(cfg.dump())


def train(runs: list[str], extra_opts: list[str], batch: int | None = None) -> None:
    """Train each run from its frozen config; ``batch`` overrides IMS_PER_BATCH and scales
    BASE_LR linearly."""
    freeze_configs(runs, batch)
    for name in runs:
        out = os.path.join(OUT_ROOT, name)
        if os.path.isfile(os.path.join(out, "model_final.pth")):
            print(f"[train] {name}: model_final.pth exists, skipped")
            continue
        frozen = os.path.join(out, "frozen_config.yaml")
        cmd = [sys.executable, TRAIN_NET, "--config-file", frozen, "OUTPUT_DIR", out]
        cmd += ["TEST.EVAL_PERIOD", "0", *extra_opts]
        print("[train]", " ".join(cmd), flush=True)
        start = time.perf_counter()
        # one intra-op thread: on a shared CPU, oversubscribed OpenMP threads are much slower
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
        print(f"[train] {name}: {time.perf_counter() - start:.0f} s", flush=True)


def _load(name: str):
    """The run's model, built from the config it was trained with (``<run>/config.yaml``)."""
    cfg = get_cfg()
    noisy_anchors.add_noisy_anchors_config(cfg)
    cfg.merge_from_file(os.path.join(OUT_ROOT, name, "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TEST = (VAL,)
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(os.path.join(OUT_ROOT, name, "model_final.pth"))
    return cfg, model


class _Recorder:
    """Wraps a module's ``batched_nms`` to record its inputs: the detections before NMS.

    RetinaNet's ``inference_single_image`` and R-CNN's ``fast_rcnn_inference_single_image`` call
    ``batched_nms(boxes, scores, classes, thresh)`` once per image; the model's own outputs are
    the detections after NMS, so one inference pass gives both (and the COCO AP).
    """

    def __init__(self, module):
        self.module, self.fn, self.calls = module, module.batched_nms, []

    def __enter__(self):
        def wrapped(boxes, scores, idxs, thresh):
            self.calls.append((boxes.detach().cpu(), scores.detach().cpu(), idxs.detach().cpu()))
            return self.fn(boxes, scores, idxs, thresh)

        self.module.batched_nms = wrapped
        return self

    def __exit__(self, *exc):
        self.module.batched_nms = self.fn


def _iou_with_gt(boxes, classes, gt):
    """(D, 2): IoU of each detection with the best ground truth of its predicted class (0 if
    none), and with the best ground truth of any class."""
    if not len(boxes) or not len(gt["boxes"]):
        return torch.zeros(len(boxes), 2)
    m = pairwise_iou(Boxes(boxes), gt["boxes"])  # (D, G)
    same = classes[:, None] == gt["classes"][None, :]
    same_class = torch.where(same, m, torch.zeros_like(m)).max(dim=1).values
    return torch.stack([same_class, m.max(dim=1).values], dim=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else 0.0


def top_fraction_stats(scores: np.ndarray, ious: np.ndarray, fraction: float = 0.02) -> dict:
    """Mean confidence, mean IoU and Pearson r of the top ``fraction`` most confident detections.

    ``ious`` is (D, 2): IoU with the best ground truth of the predicted class, and of any class
    (``*_any``: localization quality regardless of the class decision).
    """
    k = max(1, int(round(fraction * len(scores))))
    top = np.argsort(-scores, kind="stable")[:k]
    s, i, a = scores[top], ious[top, 0], ious[top, 1]
    return {
        "num": int(k),
        "mean_conf": float(s.mean()),
        "mean_iou": float(i.mean()),
        "pearson": _pearson(s, i),
        "mean_iou_any": float(a.mean()),
        "pearson_any": _pearson(s, a),
        "scores": s,
        "ious": i,
    }


def _ground_truth():
    gts = {}
    for d in DatasetCatalog.get(VAL):
        boxes = [a["bbox"] for a in d["annotations"]]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH_ABS -> XYXY
        gts[d["image_id"]] = {
            "boxes": Boxes(boxes),
            "classes": torch.tensor([a["category_id"] for a in d["annotations"]]),
        }
    return gts


def _greedy_recall(ious: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
    """Per threshold, how many ground truths (columns) a one-to-one greedy match covers."""
    covered = []
    ious = ious.clone()
    for _ in range(min(ious.shape)):
        best_per_gt, _ = ious.max(dim=0)
        j = int(best_per_gt.argmax())
        i = int(ious[:, j].argmax())
        covered.append(float(ious[i, j]))
        ious[i, :] = -1
        ious[:, j] = -1
    covered = np.array(covered + [0.0] * (ious.shape[1] - len(covered)))
    return np.array([(covered >= t).sum() for t in thresholds])


@torch.no_grad()
def evaluate_run(model, loader, evaluator, gts, limits=(100, 300, 1000)) -> dict:
    """One inference pass: COCO AP, Table 7 statistics and (R-CNN) Table 5 proposal recall."""
    is_rcnn = hasattr(model, "proposal_generator")
    nms_module = fast_rcnn_module if is_rcnn else retinanet_module
    thresholds = np.arange(0.5, 0.951, 0.05)
    hits = {k: np.zeros(len(thresholds)) for k in limits}
    num_gt = 0
    proposals_seen = []
    if is_rcnn:
        rpn = model.proposal_generator
        detector_topk = rpn.post_nms_topk[False]
        rpn_forward = rpn.forward

        def forward(*args, **kwargs):  # 1000 proposals for AR, the configured top-k to the heads
            proposals, losses = rpn_forward(*args, **kwargs)
            proposals_seen.append(proposals)
            return [p[:detector_topk] for p in proposals], losses

        rpn.post_nms_topk[False] = max(max(limits), detector_topk)
        rpn.forward = forward
    pre, post = ([], []), ([], [])
    evaluator.reset()
    try:
        for inputs in loader:
            with _Recorder(nms_module) as rec:
                outputs = model(inputs)
            evaluator.process(inputs, outputs)
            assert len(rec.calls) == len(inputs)
            for n, (inp, out, call) in enumerate(zip(inputs, outputs, rec.calls)):
                boxes, scores, classes = call
                gt = gts[inp["image_id"]]
                inst = out["instances"].to("cpu")
                # boxes before NMS are in the network's input resolution
                h, w = inst.image_size
                sy, sx = inp["height"] / h, inp["width"] / w
                boxes = boxes * torch.tensor([sx, sy, sx, sy])
                pre[0].append(scores)
                pre[1].append(_iou_with_gt(boxes, classes, gt))
                post[0].append(inst.scores)
                post[1].append(_iou_with_gt(inst.pred_boxes.tensor, inst.pred_classes, gt))
                num_gt += len(gt["boxes"])
                if is_rcnn and len(gt["boxes"]):
                    props = proposals_seen[-1][n]
                    pb = props.proposal_boxes.tensor.cpu() * torch.tensor([sx, sy, sx, sy])
                    for k in limits:  # proposals are sorted by objectness
                        hits[k] += _greedy_recall(
                            pairwise_iou(Boxes(pb[:k]), gt["boxes"]), thresholds
                        )
    finally:
        if is_rcnn:
            rpn.post_nms_topk[False] = detector_topk
            del rpn.forward
    bbox = evaluator.evaluate()["bbox"]
    res = {
        "AP": bbox["AP"],
        "AP50": bbox["AP50"],
        "AP75": bbox["AP75"],
        "before_nms": top_fraction_stats(torch.cat(pre[0]).numpy(), torch.cat(pre[1]).numpy()),
        "after_nms": top_fraction_stats(torch.cat(post[0]).numpy(), torch.cat(post[1]).numpy()),
    }
    if is_rcnn:
        res.update({f"AR{k}": float(100 * hits[k].mean() / max(num_gt, 1)) for k in limits})
    return res


def analyze(runs: list[str]) -> dict:
    gts = _ground_truth()
    results = {}
    for name in runs:
        if not os.path.isfile(os.path.join(OUT_ROOT, name, "model_final.pth")):
            print(f"[analyze] {name}: no model_final.pth, skipped")
            continue
        cfg, model = _load(name)
        loader = build_detection_test_loader(cfg, VAL)
        evaluator = COCOEvaluator(VAL, output_dir=os.path.join(OUT_ROOT, name, "eval"))
        results[name] = evaluate_run(model, loader, evaluator, gts)
        print(f"[analyze] {name}: AP {results[name]['AP']:.2f}", flush=True)
    return results


def _report(results: dict) -> None:
    print("\nCOCO box AP on synth_shapes_val (quick schedule, same seed and schedule)")
    print(f"{'run':36s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}")
    for name, r in results.items():
        print(f"{name:36s} {r['AP']:6.2f} {r['AP50']:6.2f} {r['AP75']:6.2f}")
    print("\nTable 7: top-2% most confident detections: mean confidence, mean IoU with the best")
    print("ground truth of the predicted class (any class in brackets), Pearson r before NMS")
    print(f"{'run':34s} {'#pre':>5s} {'conf-pre':>8s} {'IoU-pre':>14s} {'#post':>5s} "
          f"{'conf-post':>9s} {'IoU-post':>14s} {'pearson':>15s}")  # fmt: skip
    for name, r in results.items():
        b, a = r["before_nms"], r["after_nms"]
        print(
            f"{name:34s} {b['num']:5d} {b['mean_conf']:8.3f} "
            f"{b['mean_iou']:6.3f} ({b['mean_iou_any']:.3f}) {a['num']:5d} {a['mean_conf']:9.3f} "
            f"{a['mean_iou']:6.3f} ({a['mean_iou_any']:.3f}) "
            f"{b['pearson']:6.3f} ({b['pearson_any']:.3f})"
        )
    rpn = {k: v for k, v in results.items() if "AR100" in v}
    if rpn:
        print("\nTable 5: RPN proposal average recall (IoU 0.5:0.95)")
        print(f"{'run':36s} {'AR100':>6s} {'AR300':>6s} {'AR1000':>6s}")
        for name, r in rpn.items():
            print(f"{name:36s} {r['AR100']:6.1f} {r['AR300']:6.1f} {r['AR1000']:6.1f}")


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if n.startswith("retinanet")]
    if len(names) < 2:  # keep an earlier plot of the RetinaNet runs
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        b = results[name]["before_nms"]
        ax.scatter(b["scores"], b["ious"], s=4, alpha=0.5)
        ax.set_title(f"{name}\nPearson r = {b['pearson']:.3f}", fontsize=9)
        ax.set_xlabel("confidence (top 2%, before NMS)")
        ax.set_ylabel("IoU with ground truth")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", choices=["all", "train", "analyze"], default="all")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument(
        "--batch", type=int, default=None, help="IMS_PER_BATCH (BASE_LR scaled linearly)"
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for training"
    )
    args = parser.parse_args()
    if args.phase in ("all", "train"):
        train(args.runs, args.opts, args.batch)
    if args.phase in ("all", "analyze"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        results = analyze(args.runs)
        _report(results)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        _plot(results, os.path.join(RESULTS_DIR, "noisy_anchors_conf_vs_iou.png"))
        slim = {
            n: {
                k: ({kk: vv for kk, vv in v.items() if kk not in ("scores", "ious")})
                if isinstance(v, dict)
                else v
                for k, v in r.items()
            }
            for n, r in results.items()
        }
        path = os.path.join(RESULTS_DIR, "noisy_anchors_quality.json")
        if os.path.isfile(path):  # keep the runs analyzed earlier, update those analyzed now
            with open(path) as f:
                slim = {**json.load(f), **slim}
        with open(path, "w") as f:
            json.dump(slim, f, indent=2)


if __name__ == "__main__":
    main()
