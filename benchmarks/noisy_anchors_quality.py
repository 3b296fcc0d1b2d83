"""Noisy Anchors vs the detectron2 baselines on the quick synthetic configs (paper Tables 1, 5-7).

Two phases (run both by default):

``train``: snapshots the merged config of every run in ``RUNS`` first, then trains them one after
another (same schedule; ``SEED`` = each of ``--seeds``) through
``projects/NoisyAnchors/train_net.py`` into ``output/noisy_anchors_bench/<run>/s<seed>/`` (a run
whose ``model_final.pth`` exists is skipped). The four runs whose config is also a run of
``benchmarks/composed_quick_ap.py`` (``SAME_AS_COMPOSED``) take that benchmark's weights of the
same seed when they exist (``--reuse-from``) and their config matches key by key; the entry
names them (``weights_from``).

``analyze``: loads each run's and seed's final weights and measures on ``synth_shapes_val``:

- COCO box AP / AP50 / AP75 (``COCOEvaluator``);
- Table 7: over the whole split, the top 2% most confident detections before and after NMS,
  their mean confidence, their mean IoU with the best-matching ground truth of the predicted
  class, and the Pearson correlation of confidence and IoU (before NMS). "Before NMS" are the
  inputs of the detector's own ``batched_nms`` call (recorded in the same inference pass, i.e.
  after the score threshold and per-level top-k), "after NMS" its outputs;
- what the method decided during training, from the run's ``metrics.json``: the mean soft target,
  cls_c, loc_a and re-weighting factor, positives per image, ``loss_cls`` (``train_stats``;
  ``report`` prints them and plots ``noisy_anchors_soft_targets.png``);
- Table 5 (Faster R-CNN runs): average recall of the RPN proposals at 100 / 300 / 1000 (IoU
  0.5:0.95), with COCO's matching: ``d2kit.evaluation.recall_at_ious``, proposals in objectness
  order, each taking the unmatched ground truth of largest IoU. (Results written before this
  function was used, i.e. entries without ``"ar_matching"``, paired proposals and ground truths
  greedily by largest IoU first, regardless of the objectness order.)

Each run and seed is stored in ``benchmarks/results/noisy_anchors_quality.json`` under
``"<run>/s<seed>"`` (merged: other runs and seeds are kept); entries named ``"<run>"`` alone come
from the first version of this script (seed 42). ``report`` prints the tables (mean ± std over
seeds, and each seed) and draws ``benchmarks/results/noisy_anchors_conf_vs_iou.png`` from the
results file: a 2-D histogram of confidence against IoU of the top-2% detections before NMS, which
the entries store (``before_nms.hist2d``; not in the first version's entries).

    python benchmarks/noisy_anchors_quality.py --seeds 1 2 3     # train (if needed) and analyze
    python benchmarks/noisy_anchors_quality.py analyze --seeds 42
    python benchmarks/noisy_anchors_quality.py report           # tables and plot from the JSON
    # smoke run (2 iterations, 8 validation images, temporary files):
    python benchmarks/noisy_anchors_quality.py --seeds 1 --runs retinanet_baseline
        --out-root /tmp/na --results /tmp/na.json --val synth_shapes_val_mini
        --opts SOLVER.MAX_ITER 2 SOLVER.WARMUP_ITERS 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import yaml
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
from d2kit.benchmarking import training_log, update_results_json
from d2kit.config import add_d2kit_config
from d2kit.evaluation import recall_at_ious
from d2kit.paths import REPO_ROOT

OUT_ROOT = os.path.join(REPO_ROOT, "output", "noisy_anchors_bench")
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
TRAIN_NET = os.path.join(REPO_ROOT, "projects", "NoisyAnchors", "train_net.py")
VAL = "synth_shapes_val"
AR_THRESHOLDS = np.arange(0.5, 0.951, 0.05)  # COCO's AR: IoU 0.5:0.95
HIST_BINS = 20  # bins per axis of the stored confidence-IoU histogram

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
    # the top-N assignment (Alg. 1) alone: hard labels, no re-weighting
    "retinanet_noisy_anchors_topn_only": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        ["MODEL.NOISY_ANCHORS.SOFT_LABELS", "False", "MODEL.NOISY_ANCHORS.REWEIGHTING", "False"],
    ),
    # the baseline with the released focal alpha: the like-for-like baseline of the released
    # formulation (the authors' released_baseline configs)
    "retinanet_baseline_focal_alpha_0.5": (
        "configs/quick_schedules/retinanet_R_18_FPN_quick_synth_shapes.yaml",
        ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.5"],
    ),
    # the paper formulation with the released focal alpha (0.5 instead of Detectron2's 0.25)
    "retinanet_noisy_anchors_focal_alpha_0.5": (
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.5"],
    ),
}
#: runs whose config is a run of ``benchmarks/composed_quick_ap.py``: with ``--reuse-from`` the
#: weights that benchmark trained (same config, checked key by key, same seed) are analysed
#: instead of training again
SAME_AS_COMPOSED = {
    "retinanet_baseline": "baseline_retinanet",
    "retinanet_noisy_anchors": "noisy_anchors_retinanet",
    "faster_rcnn_baseline": "baseline_faster",
    "faster_rcnn_noisy_anchors_rpn": "noisy_anchors_rpn",
}
#: config keys that may differ between a reused run and this benchmark's frozen config
REUSE_IGNORED_KEYS = {"OUTPUT_DIR", "SEED", "DATASETS.TEST", "TEST.EVAL_PERIOD"}
#: training scalars kept from each run's metrics.json (the method's decisions over training)
TRAIN_SCALARS = ("noisy_anchors/", "num_pos_anchors", "loss_cls", "loss_box_reg")


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


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(frozen_path: str, other_path: str) -> list[str]:
    """The keys of the frozen config (but ``REUSE_IGNORED_KEYS``) whose value differs in the
    other config, or that it lacks; the other may have more keys (other projects')."""
    with open(frozen_path) as f:
        frozen = _flatten(yaml.safe_load(f))
    with open(other_path) as f:
        other = _flatten(yaml.safe_load(f))
    missing = object()
    return sorted(
        key
        for key, value in frozen.items()
        if key not in REUSE_IGNORED_KEYS and other.get(key, missing) != value
    )


def _reuse(name: str, seed: int, out: str, reuse_from: str) -> bool:
    """Take the weights of the composed benchmark's run of the same config and seed, if it has
    them and its config matches the frozen one; writes ``weights_from.txt`` naming them."""
    if name not in SAME_AS_COMPOSED:
        return False
    src = os.path.join(reuse_from, f"{SAME_AS_COMPOSED[name]}_s{seed}")
    if not os.path.isfile(os.path.join(src, "model_final.pth")):
        return False
    frozen = os.path.join(OUT_ROOT, name, "frozen_config.yaml")
    diff = config_differences(frozen, os.path.join(src, "config.yaml"))
    if diff:
        print(f"[train] {name} seed {seed}: not reusing {src}, config differs in {diff}")
        return False
    os.makedirs(out, exist_ok=True)
    cfg = get_cfg()
    add_d2kit_config(cfg)
    noisy_anchors.add_noisy_anchors_config(cfg)
    cfg.merge_from_file(frozen)
    cfg.merge_from_list(["SEED", seed, "OUTPUT_DIR", out])
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    for file in ("model_final.pth", "metrics.json"):
        if os.path.isfile(os.path.join(src, file)):
            shutil.copyfile(os.path.join(src, file), os.path.join(out, file))
    with open(os.path.join(out, "weights_from.txt"), "w") as f:
        f.write(os.path.relpath(src, REPO_ROOT) + "\n")
    print(f"[train] {name} seed {seed}: reused the weights of {src} (same config and seed)")
    return True


def train(
    runs: list[str],
    seeds: list[int],
    extra_opts: list[str],
    batch: int | None = None,
    reuse_from: str | None = None,
) -> None:
    """Train each run and seed from the run's frozen config; ``batch`` overrides IMS_PER_BATCH
    and scales BASE_LR linearly; ``reuse_from``: see ``SAME_AS_COMPOSED``."""
    freeze_configs(runs, batch)
    for seed in seeds:
        for name in runs:
            out = os.path.join(OUT_ROOT, name, f"s{seed}")
            if os.path.isfile(os.path.join(out, "model_final.pth")):
                print(f"[train] {name} seed {seed}: model_final.pth exists, skipped")
                continue
            if reuse_from and not extra_opts and _reuse(name, seed, out, reuse_from):
                continue
            frozen = os.path.join(OUT_ROOT, name, "frozen_config.yaml")
            cmd = [sys.executable, TRAIN_NET, "--config-file", frozen, "OUTPUT_DIR", out]
            cmd += ["SEED", str(seed), "TEST.EVAL_PERIOD", "0", *extra_opts]
            print("[train]", " ".join(cmd), flush=True)
            start = time.perf_counter()
            # one intra-op thread: on a shared CPU, oversubscribed OpenMP threads are much slower
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
            print(f"[train] {name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)


def _load(run_dir: str):
    """The run's model, built from the config it was trained with (``<run_dir>/config.yaml``)."""
    cfg = get_cfg()
    add_d2kit_config(cfg)  # train_net dumps the shared keys too
    noisy_anchors.add_noisy_anchors_config(cfg)
    cfg.merge_from_file(os.path.join(run_dir, "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TEST = (VAL,)
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(os.path.join(run_dir, "model_final.pth"))
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
    k = min(len(scores), max(1, int(round(fraction * len(scores)))))
    top = np.argsort(-scores, kind="stable")[:k]
    s, i, a = scores[top], ious[top, 0], ious[top, 1]
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    hist = np.histogram2d(np.clip(s, 0, 1), np.clip(i, 0, 1), bins=[edges, edges])[0]
    return {
        "num": int(k),
        "hist2d": hist.astype(int).tolist(),  # [confidence bin][IoU bin], for the plot
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


@torch.no_grad()
def evaluate_run(model, loader, evaluator, gts, limits=(100, 300, 1000)) -> dict:
    """One inference pass: COCO AP, Table 7 statistics and (R-CNN) Table 5 proposal recall."""
    is_rcnn = hasattr(model, "proposal_generator")
    nms_module = fast_rcnn_module if is_rcnn else retinanet_module
    proposal_dets = {k: [] for k in limits}  # per image, the top-k proposals
    proposal_gts = []
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
                if is_rcnn:
                    props = proposals_seen[-1][n]
                    pb = props.proposal_boxes.tensor.cpu() * torch.tensor([sx, sy, sx, sy])
                    ps = props.objectness_logits.cpu()
                    cls = torch.zeros(len(pb), dtype=torch.int64)  # class-agnostic
                    for k in limits:  # in objectness order
                        proposal_dets[k].append(
                            {"boxes": pb[:k], "scores": ps[:k], "classes": cls[:k]}
                        )
                    gt_boxes = gt["boxes"].tensor
                    proposal_gts.append(
                        {"boxes": gt_boxes, "classes": cls.new_zeros(len(gt_boxes))}
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
        for k in limits:
            recall = recall_at_ious(
                proposal_dets[k], proposal_gts, AR_THRESHOLDS, max_dets=None, class_aware=False
            )
            res[f"AR{k}"] = float(100 * np.nan_to_num(recall).mean())
        res["ar_matching"] = "COCO: objectness order (d2kit.evaluation.recall_at_ious)"
    return res


def training_scalars(run_dir: str) -> dict:
    """``{name: [[iteration, value], ...]}`` of the ``TRAIN_SCALARS`` logged during training
    (``<run_dir>/metrics.json``, one line per logging period); empty if the file is missing."""
    series: dict[str, list] = {}
    for record in training_log(run_dir):
        if "iteration" not in record:
            continue
        for key, value in record.items():
            if key.startswith(TRAIN_SCALARS) and isinstance(value, (int, float)):
                series.setdefault(key, []).append([record["iteration"], float(value)])
    return series


def analyze(runs: list[str], seeds: list[int]) -> dict:
    """``{"<run>/s<seed>": measurements}`` of every trained run and seed."""
    gts = _ground_truth()
    results = {}
    for seed in seeds:
        for name in runs:
            run_dir = os.path.join(OUT_ROOT, name, f"s{seed}")
            if not os.path.isfile(os.path.join(run_dir, "model_final.pth")):
                print(f"[analyze] {name} seed {seed}: no model_final.pth, skipped")
                continue
            cfg, model = _load(run_dir)
            loader = build_detection_test_loader(cfg, VAL)
            evaluator = COCOEvaluator(VAL, output_dir=os.path.join(run_dir, "eval"))
            key = f"{name}/s{seed}"
            results[key] = {"seed": seed, "val": VAL, **evaluate_run(model, loader, evaluator, gts)}
            results[key]["train_stats"] = training_scalars(run_dir)
            reused = os.path.join(run_dir, "weights_from.txt")
            if os.path.isfile(reused):
                with open(reused) as f:
                    results[key]["weights_from"] = f.read().strip()
            print(f"[analyze] {key}: AP {results[key]['AP']:.2f}", flush=True)
    return results


def _by_run(results: dict) -> dict:
    """{run: {seed: entry}}; first-version entries (no "/s<seed>") are seed 42."""
    out = {}
    for key, entry in results.items():
        name, _, seed = key.rpartition("/s")
        if not name or not seed.isdigit():
            name, seed = key, "42"
        out.setdefault(name, {})[int(seed)] = entry
    return out


def _fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _report(results: dict) -> None:
    runs = _by_run(results)
    print("\nCOCO box AP on synth_shapes_val (quick schedule), mean ± std over seeds")
    print(f"{'run':36s} {'seeds':>10s} {'AP':>14s} {'AP50':>14s} {'AP75':>14s}")
    for name, by_seed in runs.items():
        cells = [_fmt([r[m] for r in by_seed.values()]) for m in ("AP", "AP50", "AP75")]
        seeds = ",".join(map(str, by_seed))
        print(f"{name:36s} {seeds:>10s} " + " ".join(f"{c:>14s}" for c in cells))
    # (baseline run, compared runs: a name prefix, or a tuple of run names)
    for base, compared in (
        ("retinanet_baseline", "retinanet"),
        ("retinanet_noisy_anchors_topn_only", "retinanet_noisy"),  # what SL / SR add to top-N
        ("retinanet_noisy_anchors", "retinanet_noisy"),
        # the runs at focal α 0.5 against the baseline at the same α
        (
            "retinanet_baseline_focal_alpha_0.5",
            ("retinanet_noisy_anchors_released", "retinanet_noisy_anchors_focal_alpha_0.5"),
        ),
        # the released formulation against the paper's at the same focal α: the variant alone
        ("retinanet_noisy_anchors_focal_alpha_0.5", ("retinanet_noisy_anchors_released",)),
        ("faster_rcnn_baseline", "faster"),
    ):
        if base not in runs:
            continue
        print(f"\nAP minus {base}, same seed (mean ± std over seeds)")
        for name, by_seed in runs.items():
            if name == base or not (
                name.startswith(compared) if isinstance(compared, str) else name in compared
            ):
                continue
            diffs = [r["AP"] - runs[base][s]["AP"] for s, r in by_seed.items() if s in runs[base]]
            print(f"{name:36s} {_fmt(diffs):>14s}  (seeds: {len(diffs)})")
    print("\nTable 7: top-2% most confident detections: mean confidence, mean IoU with the best")
    print("ground truth of the predicted class (any class in brackets), Pearson r before NMS;")
    print("each seed")
    print(f"{'run / seed':38s} {'#pre':>5s} {'conf-pre':>8s} {'IoU-pre':>14s} {'#post':>5s} "
          f"{'conf-post':>9s} {'IoU-post':>14s} {'pearson':>15s}")  # fmt: skip
    for name, by_seed in runs.items():
        for seed, r in by_seed.items():
            b, a = r["before_nms"], r["after_nms"]
            print(
                f"{name + ' / ' + str(seed):38s} {b['num']:5d} {b['mean_conf']:8.3f} "
                f"{b['mean_iou']:6.3f} ({b['mean_iou_any']:.3f}) {a['num']:5d} "
                f"{a['mean_conf']:9.3f} {a['mean_iou']:6.3f} ({a['mean_iou_any']:.3f}) "
                f"{b['pearson']:6.3f} ({b['pearson_any']:.3f})"
            )
    rpn = {k: v for k, v in runs.items() if any("AR100" in r for r in v.values())}
    if rpn:
        print("\nTable 5: RPN proposal average recall (IoU 0.5:0.95), mean ± std over seeds")
        print(f"{'run':36s} {'AR100':>14s} {'AR300':>14s} {'AR1000':>14s}  matching")
        for name, by_seed in rpn.items():
            cells = [
                _fmt([r.get(m) for r in by_seed.values()]) for m in ("AR100", "AR300", "AR1000")
            ]
            matching = {
                r.get("ar_matching", "largest IoU first (first version)") for r in by_seed.values()
            }
            cells = " ".join(f"{c:>14s}" for c in cells)
            print(f"{name:36s} {cells}  " + "; ".join(sorted(matching)))


def _at(series: list, which: str) -> float | None:
    """The value of a ``[[iteration, value], ...]`` series at its first / last logged
    iteration, or its mean over the last quarter of training (``"late"``)."""
    if not series:
        return None
    if which == "first":
        return series[0][1]
    if which == "last":
        return series[-1][1]
    late = [v for it, v in series if it >= 0.75 * series[-1][0]]
    return float(np.mean(late))


def _report_training(results: dict) -> None:
    """What the method decided during training (from each run's metrics.json), mean ± std over
    seeds: the soft targets' level and the positives per image."""
    rows = [
        ("mean soft target, first log", "noisy_anchors/mean_target", "first"),
        ("mean soft target, last quarter", "noisy_anchors/mean_target", "late"),
        ("mean cls_c, last quarter", "noisy_anchors/mean_cls_c", "late"),
        ("mean loc_a, last quarter", "noisy_anchors/mean_loc_a", "late"),
        ("mean weight r, last quarter", "noisy_anchors/mean_weight", "late"),
        ("positive anchors / image, last quarter", "num_pos_anchors", "late"),
        ("loss_cls, last quarter", "loss_cls", "late"),
    ]
    runs = {
        name: by_seed
        for name, by_seed in _by_run(results).items()
        if name.startswith("retinanet") and any(r.get("train_stats") for r in by_seed.values())
    }
    if not runs:
        return
    print("\nDuring training (metrics.json, RetinaNet runs), mean ± std over seeds")
    print(f"{'':34s} " + " ".join(f"{n[len('retinanet_') :][:18]:>18s}" for n in runs))
    for label, key, which in rows:
        cells = [
            _fmt([_at(r.get("train_stats", {}).get(key, []), which) for r in by_seed.values()])
            for by_seed in runs.values()
        ]
        if any(c != "-" for c in cells):
            print(f"{label:34s} " + " ".join(f"{c:>18s}" for c in cells))


def _plot_training(results: dict, path: str) -> None:
    """The mean soft target and positives per image over training, one line per RetinaNet run
    (mean over seeds)."""
    curves = {}
    for name, by_seed in _by_run(results).items():
        stats = [r.get("train_stats", {}) for r in by_seed.values()]
        for key, panel in (("noisy_anchors/mean_target", 0), ("num_pos_anchors", 1)):
            series = [s[key] for s in stats if key in s]
            if name.startswith("retinanet") and series:
                n = min(len(x) for x in series)
                its = [x[0] for x in series[0][:n]]
                mean = np.mean([[v for _, v in x[:n]] for x in series], axis=0)
                curves.setdefault(panel, []).append((name, its, mean, len(series)))
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    titles = ("mean soft target of the positives", "positive anchors per image")
    for panel, ax in enumerate(axes):
        for name, its, mean, k in curves.get(panel, []):
            ax.plot(its, mean, label=f"{name[len('retinanet_') :]} ({k} seeds)")
        ax.set_title(titles[panel], fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


def _plot(results: dict, path: str) -> None:
    """Confidence vs IoU of the top-2% detections before NMS (paper Table 7), one panel per
    RetinaNet run, from the histograms stored in the results (summed over seeds)."""
    runs = {
        name: [r["before_nms"]["hist2d"] for r in by_seed.values() if "hist2d" in r["before_nms"]]
        for name, by_seed in _by_run(results).items()
        if name.startswith("retinanet")
    }
    runs = {name: hists for name, hists in runs.items() if hists}
    if not runs:
        print("\nno stored histograms (first-version entries): plot not drawn")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.4), squeeze=False)
    for ax, (name, hists) in zip(axes[0], runs.items()):
        hist = np.sum(np.array(hists, dtype=float), axis=0)
        ax.imshow(
            np.log1p(hist.T), origin="lower", extent=(0, 1, 0, 1), cmap="viridis", aspect="auto"
        )
        ax.set_title(f"{name}\n({len(hists)} seed(s))", fontsize=8)
        ax.set_xlabel("confidence (top 2%, before NMS)", fontsize=8)
        ax.set_ylabel("IoU with gt of the predicted class", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"\nplot: {path}")


def main() -> None:
    global OUT_ROOT, VAL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "phase", nargs="?", choices=["all", "train", "analyze", "report"], default="all"
    )
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds to train / analyze (default 42); with `report`, the seeds the tables cover "
        "(default: every seed in the results file)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="IMS_PER_BATCH (BASE_LR scaled linearly)"
    )
    parser.add_argument(
        "--results",
        default=os.path.join(RESULTS_DIR, "noisy_anchors_quality.json"),
        help="results file (merged); a temporary path for smoke runs",
    )
    parser.add_argument("--out-root", default=OUT_ROOT, help="training outputs")
    parser.add_argument("--val", default=VAL, help="evaluation split")
    parser.add_argument(
        "--reuse-from",
        default=os.path.join(REPO_ROOT, "output", "composed_quick_ap"),
        help="checkpoints of benchmarks/composed_quick_ap.py to reuse for the runs of the same "
        "config and seed (SAME_AS_COMPOSED); '' trains every run here",
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for training"
    )
    args = parser.parse_args()
    OUT_ROOT, VAL = args.out_root, args.val
    seeds = args.seeds or [42]
    if args.phase in ("all", "train"):
        train(args.runs, seeds, args.opts, args.batch, args.reuse_from or None)
    if args.phase in ("all", "analyze"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        for key, entry in analyze(args.runs, seeds).items():
            slim = {
                k: ({kk: vv for kk, vv in v.items() if kk not in ("scores", "ious")})
                if isinstance(v, dict)
                else v
                for k, v in entry.items()
            }
            # one line, 4 decimals: the per-iteration training scalars make indented JSON large
            update_results_json(args.results, key, None, slim, compact_digits=4)
    if os.path.isfile(args.results):
        with open(args.results) as f:
            results = json.load(f)
        if args.seeds:
            results = {
                key: entry
                for key, entry in results.items()
                if key.rpartition("/s")[2] in {str(seed) for seed in args.seeds}
            }
        _report(results)
        _report_training(results)
        plot = os.path.join(
            os.path.dirname(os.path.abspath(args.results)), "noisy_anchors_conf_vs_iou.png"
        )
        _plot(results, plot)
        _plot_training(results, plot.replace("conf_vs_iou", "soft_targets"))


if __name__ == "__main__":
    main()
