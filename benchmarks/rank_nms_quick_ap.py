"""Rank-NMS on the quick synthetic schedule: baseline vs Rank-NMS over seeds, the paper's
ablations, and Fig. 3 (recall against matching IoU). Synthetic-data numbers, not COCO.

    python benchmarks/rank_nms_quick_ap.py train [--runs baseline rank_nms ...] [--seeds 1 2 3]
    python benchmarks/rank_nms_quick_ap.py evals [--seeds 1 2 3]   # test-time ablations
    python benchmarks/rank_nms_quick_ap.py recall [--seed 1]       # Fig. 3
    python benchmarks/rank_nms_quick_ap.py report                  # tables + plots from the JSON

``train`` trains each run (a config plus overrides, one thing changed against ``rank_nms``) with
each seed and evaluates it on ``synth_shapes_val`` (box AP, AP50 ... AP90). ``evals`` evaluates
the trained ``baseline`` and ``rank_nms`` weights again with test-time changes only (β of Eq.
(4), Table 2; the NMS score, Table 7; Soft-NMS, Table 6). ``recall`` draws Fig. 3 from one
Rank-NMS model. Everything goes into ``benchmarks/results/rank_nms_quick_ap.json`` (every run;
``report`` prints mean ± std) and ``benchmarks/results/rank_nms_*.png``; checkpoints go to
``output/rank_nms_quick_ap/<run>_s<seed>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.structures import BoxMode

import rank_nms
from d2kit.benchmarking import update_results_json
from d2kit.engine import train_net
from d2kit.evaluation import recall_at_ious

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
OUT_JSON = os.path.join(RESULTS, "rank_nms_quick_ap.json")
RUNS_DIR = os.path.join(REPO, "output", "rank_nms_quick_ap")
VAL = "synth_shapes_val"

BASELINE = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
RANK = "RankNMS/quick_schedules/rank_nms_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
MASK_BASELINE = "quick_schedules/mask_rcnn_R_18_FPN_quick_synth_shapes.yaml"
MASK_RANK = "RankNMS/quick_schedules/rank_nms_mask_rcnn_R_18_FPN_quick_synth_shapes.yaml"
CASCADE_BASELINE = "quick_schedules/cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml"
CASCADE_RANK = "RankNMS/quick_schedules/rank_nms_cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml"
R = "MODEL.RANK_NMS."
#: Training runs: (config, overrides, what it measures). Everything else is the quick schedule.
RUNS = {
    "baseline": (BASELINE, [], "Detectron2 StandardROIHeads"),
    "rank_nms": (RANK, [], "Rank-NMS, paper defaults (α 0.5, β 0.15, hard pairs)"),
    "margin_0": (RANK, [R + "MARGIN", "0.0"], "Table 1: α = 0"),
    "margin_0.25": (RANK, [R + "MARGIN", "0.25"], "Table 1: α = 0.25"),
    "margin_0.75": (RANK, [R + "MARGIN", "0.75"], "Table 1: α = 0.75"),
    "margin_1.0": (RANK, [R + "MARGIN", "1.0"], "Table 1: α = 1.0"),
    "pos_frac_0.5": (RANK, ["MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.5"], "Table 3: ratio 0.5"),
    "full_pair": (RANK, [R + "PAIR_SAMPLING", "full"], "Table 4: full-pair"),
    "foreground": (RANK, [R + "TRAIN_ON", "foreground"], "A1: positives only train R"),
    "regressed": (RANK, [R + "TARGET_BOX", "regressed"], "A8: IoU of the regressed box"),
    "mask_baseline": (MASK_BASELINE, [], "Mask R-CNN, Detectron2 StandardROIHeads"),
    "mask_rank_nms": (MASK_RANK, [], "Mask R-CNN + Rank-NMS"),
    "cascade_baseline": (CASCADE_BASELINE, [], "Cascade R-CNN, Detectron2 CascadeROIHeads"),
    "cascade_rank_nms": (CASCADE_RANK, [], "Cascade R-CNN + Rank-NMS (last stage)"),
}
#: The reference each trained run is paired with by seed (default: baseline and rank_nms).
PAIRED_WITH = {
    "mask_rank_nms": ("mask_baseline",),
    "cascade_rank_nms": ("cascade_baseline",),
    "mask_baseline": (),
    "cascade_baseline": (),
}
#: Test-time variants evaluated on trained weights: (weights of run, overrides, label).
EVALS = {
    **{
        f"beta_{b}": ("rank_nms", [R + "BETA", str(b)], f"Table 2: β = {b}")
        for b in (0.05, 0.15, 0.25, 0.35, 0.45)
    },
    "nms_cls": ("rank_nms", [R + "NMS_SCORE", "cls"], "Table 7: NMS-Cls (same weights)"),
    "nms_ltr": ("rank_nms", [R + "NMS_SCORE", "rank"], "Table 7: NMS-LTR"),
    "rank_soft_linear": ("rank_nms", [R + "SUPPRESSION", "soft_nms"], "Table 6: + Soft-NMS (lin)"),
    "rank_soft_gaussian": (
        "rank_nms",
        [R + "SUPPRESSION", "soft_nms", R + "SOFT_NMS.METHOD", "gaussian"],
        "Table 6: + Soft-NMS (Gaussian σ 0.5)",
    ),
    "base_soft_linear": (
        "baseline",
        [R + "NMS_SCORE", "cls", R + "SUPPRESSION", "soft_nms"],
        "Table 6: baseline + Soft-NMS (lin)",
    ),
    "base_soft_gaussian": (
        "baseline",
        [R + "NMS_SCORE", "cls", R + "SUPPRESSION", "soft_nms", R + "SOFT_NMS.METHOD", "gaussian"],
        "Table 6: baseline + Soft-NMS (Gaussian σ 0.5)",
    ),
}
METRICS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "AP50:90")


def _load() -> dict:
    if os.path.exists(OUT_JSON):
        with open(OUT_JSON) as f:
            return json.load(f)
    return {}


def _save(section: str, key: str, value) -> None:
    """Merge one entry into the JSON (other processes may write meanwhile)."""
    update_results_json(OUT_JSON, section, key, value)


def _run_dir(run: str, seed: int) -> str:
    return os.path.join(RUNS_DIR, f"{run}_s{seed}")


def _train_net(config, opts, eval_only=False):
    argv = ["--config-file", config] + (["--eval-only"] if eval_only else []) + opts
    args = default_argument_parser().parse_args(argv)
    return train_net.main(args, config_fns=[rank_nms.add_rank_nms_config])


def _rel(opts):
    return [os.path.relpath(o, REPO) if str(o).startswith(REPO) else o for o in opts]


def cmd_train(args) -> None:
    for seed in args.seeds:
        for run in args.runs:
            config, extra, _ = RUNS[run]
            out = _run_dir(run, seed)
            opts = ["SEED", str(seed), "OUTPUT_DIR", out, "DATASETS.TEST", f"('{VAL}',)", *extra]
            if args.max_iter:
                opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
            start = time.perf_counter()
            res = _train_net(config, opts)
            _save(
                "train",
                f"{run}/s{seed}",
                {
                    "run": run,
                    "seed": seed,
                    "config": config,
                    "opts": _rel(opts),
                    **{
                        task: {k: float(v) for k, v in res[task].items()}
                        for task in ("bbox", "segm")
                        if task in res
                    },
                    "wall_s": time.perf_counter() - start,
                },
            )


def cmd_evals(args) -> None:
    for seed in args.seeds:
        for name in args.evals:
            run, extra, _ = EVALS[name]
            weights = os.path.join(_run_dir(run, seed), "model_final.pth")
            if not os.path.isfile(weights):
                print(f"skip {name} s{seed}: no {weights}")
                continue
            out = os.path.join(RUNS_DIR, "evals", f"{name}_s{seed}")
            opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", out, "DATASETS.TEST", f"('{VAL}',)"]
            opts += ["SEED", str(seed), *extra]
            res = _train_net(RANK, opts, eval_only=True)
            _save(
                "evals",
                f"{name}/s{seed}",
                {
                    "eval": name,
                    "weights_of": run,
                    "seed": seed,
                    "opts": _rel(opts),
                    "bbox": {k: float(v) for k, v in res["bbox"].items()},
                },
            )


# ---------------------------------------------------------------------------------------------
# Fig. 3: recall against matching IoU
# ---------------------------------------------------------------------------------------------
RECALL_IOUS = np.round(np.arange(0.5, 1.0001, 0.05), 2)
RECALL_METHODS = {
    # name: (inference params changes, score threshold, NMS IoU, detections per image)
    "NMS": ({"nms_score": "cls"}, None, None, None),
    "Soft-NMS": ({"nms_score": "cls", "suppression": "soft_nms"}, None, None, None),
    "Rank-NMS": ({}, None, None, None),
    "Rank-NMS + Soft-NMS": ({"suppression": "soft_nms"}, None, None, None),
    # every candidate above the score threshold before suppression (NMS at IoU 1 keeps all)
    "upper bound (before NMS)": ({"nms_score": "cls"}, None, 1.0, -1),
}


def _gt_of(dicts):
    out = []
    for d in dicts:
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        out.append(
            {
                "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                "classes": np.asarray([a["category_id"] for a in d["annotations"]]),
            }
        )
    return out


def cmd_recall(args) -> None:
    from detectron2.data import build_detection_test_loader

    weights = os.path.join(_run_dir("rank_nms", args.seed), "model_final.pth")
    argv = ["--config-file", RANK, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", "/tmp/rank_recall"]
    cfg = train_net.setup(
        default_argument_parser().parse_args(argv), [rank_nms.add_rank_nms_config]
    )
    model = train_net.Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    predictor = model.roi_heads.box_predictor
    base_params = predictor.rank_inference
    defaults = (
        predictor.test_score_thresh,
        predictor.test_nms_thresh,
        predictor.test_topk_per_image,
    )
    dicts = DatasetCatalog.get(VAL)
    gts = _gt_of(dicts)
    loader = build_detection_test_loader(cfg, VAL)
    curves = {}
    for name, (changes, score, nms, topk) in RECALL_METHODS.items():
        predictor.rank_inference = dataclasses.replace(base_params, **changes)
        predictor.test_score_thresh = defaults[0] if score is None else score
        predictor.test_nms_thresh = defaults[1] if nms is None else nms
        predictor.test_topk_per_image = defaults[2] if topk is None else topk
        dets = []
        with torch.no_grad():
            for inputs in loader:
                inst = model(inputs)[0]["instances"].to("cpu")
                dets.append(
                    {
                        "boxes": inst.pred_boxes.tensor.numpy(),
                        "scores": inst.scores.numpy(),
                        "classes": inst.pred_classes.numpy(),
                    }
                )
        max_dets = None if topk == -1 else 100
        curves[name] = recall_at_ious(dets, gts, RECALL_IOUS, max_dets=max_dets).tolist()
        print(name, " ".join(f"{r:.3f}" for r in curves[name]))
    _save(
        "recall",
        f"s{args.seed}",
        {"ious": RECALL_IOUS.tolist(), "recall": curves, "weights": _rel([weights])[0]},
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _stats(rows, metric, task="bbox"):
    values = [r[task].get(metric, float("nan")) for r in rows]
    return float(np.mean(values)), float(np.std(values)), len(values)


def _group(section: dict, key: str) -> dict:
    groups = {}
    for row in section.values():
        groups.setdefault(row[key], []).append(row)
    return groups


def _print_table(title, groups, names, labels, task="bbox"):
    print(f"\n{title}")
    print(f"{'':38s}" + "".join(f"{m:>15s}" for m in METRICS) + "  seeds")
    for name in names:
        if name not in groups or not all(task in r for r in groups[name]):
            continue
        rows = groups[name]
        cells = "".join(
            "{:>15s}".format("{:.2f} ± {:.2f}".format(*_stats(rows, m, task)[:2])) for m in METRICS
        )
        print(f"{labels.get(name, name)[:38]:38s}{cells}  {len(rows)}")


def _print_paired(table: dict) -> None:
    """Differences paired by seed: each trained run against the baseline (and each ablation
    against Rank-NMS) trained with the same seed, and each test-time variant against its own
    weights' default evaluation."""
    metrics = ("AP", "AP50", "AP80", "AP90")
    train = table.get("train", {})
    rows = []
    for row in train.values():
        # ablations: against both the baseline and Rank-NMS
        for ref_run in PAIRED_WITH.get(row["run"], ("baseline", "rank_nms")):
            ref = train.get(f"{ref_run}/s{row['seed']}")
            if row["run"] not in ("baseline", ref_run) and ref:
                rows.append((f"{row['run']} − {ref_run}", row, ref))
    for row in table.get("evals", {}).values():
        ref = train.get(f"{row['weights_of']}/s{row['seed']}")
        if ref:
            rows.append((f"{row['eval']} − {row['weights_of']} (same weights)", row, ref))
    groups = {}
    for name, row, ref in rows:
        for task in ("bbox", "segm"):
            if task in row and task in ref:
                diff = {m: row[task].get(m, np.nan) - ref[task].get(m, np.nan) for m in metrics}
                label = name if task == "bbox" else f"{name} [mask AP]"
                groups.setdefault(label, []).append(diff)
    print("\nDifferences paired by seed (mean ± std of the per-seed differences)")
    print(f"{'':52s}" + "".join(f"{'Δ' + m:>15s}" for m in metrics) + "  seeds")
    for name in sorted(groups):
        diffs = groups[name]
        cells = ""
        for m in metrics:
            values = [d[m] for d in diffs]
            cells += f"{f'{np.mean(values):+.2f} ± {np.std(values):.2f}':>15s}"
        print(f"{name[:52]:52s}{cells}  {len(diffs)}")


def cmd_report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _load()
    train = _group(table.get("train", {}), "run")
    evals = _group(table.get("evals", {}), "eval")
    labels = {k: v[2] for k, v in RUNS.items()} | {k: v[2] for k, v in EVALS.items()}
    _print_table("Trained runs (synth_shapes_val, mean ± std over seeds)", train, RUNS, labels)
    _print_table("Test-time variants of trained weights", evals, EVALS, labels)
    _print_table("Mask AP of the trained Mask R-CNN runs", train, RUNS, labels, task="segm")

    _print_paired(table)

    if "baseline" in train and "rank_nms" in train:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        thresholds = ["AP50", "AP60", "AP70", "AP80", "AP90"]
        x = np.arange(len(thresholds))
        bars = [
            ("baseline (Detectron2 heads)", train["baseline"]),
            ("Rank-NMS weights, NMS on s_c (β = 0)", evals.get("nms_cls")),
            ("Rank-NMS (β = 0.15)", train["rank_nms"]),
        ]
        bars = [(label, rows) for label, rows in bars if rows]
        width = 0.8 / len(bars)
        for i, (label, rows) in enumerate(bars):
            means = [_stats(rows, m)[0] for m in thresholds]
            stds = [_stats(rows, m)[1] for m in thresholds]
            offset = (i - (len(bars) - 1) / 2) * width
            ax.bar(x + offset, means, width, yerr=stds, capsize=2, label=label)
        ax.set_xticks(x, thresholds)
        ax.set_ylabel("box AP (%), mean ± std over seeds")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
        ax.set_title("Quick Faster R-CNN, synth_shapes_val (synthetic)", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "rank_nms_ap_by_iou.png"), dpi=90)
        print("wrote benchmarks/results/rank_nms_ap_by_iou.png")

    pairs = [
        ("Faster R-CNN", "baseline", "rank_nms"),
        ("Mask R-CNN", "mask_baseline", "mask_rank_nms"),
        ("Cascade R-CNN", "cascade_baseline", "cascade_rank_nms"),
    ]
    pairs = [p for p in pairs if p[1] in train and p[2] in train]
    if len(pairs) > 1:
        thresholds = ["AP50", "AP60", "AP70", "AP80", "AP90"]
        x = np.arange(len(thresholds))
        fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.2), sharey=True)
        for ax, (title, base, rank) in zip(axes, pairs):
            for i, (label, run) in enumerate((("baseline", base), ("Rank-NMS", rank))):
                rows = train[run]
                means = [_stats(rows, m)[0] for m in thresholds]
                stds = [_stats(rows, m)[1] for m in thresholds]
                ax.bar(x + (i - 0.5) * 0.4, means, 0.4, yerr=stds, capsize=2, label=label)
            ax.set_xticks(x, [t[2:] for t in thresholds])
            ax.set_xlabel("IoU threshold (%)")
            ax.set_title(f"{title} ({len(train[rank])} seeds)", fontsize=9)
            ax.set_ylim(0, 100)
        axes[0].set_ylabel("box AP (%), mean ± std")
        axes[0].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "rank_nms_ap_by_iou_detectors.png"), dpi=80)
        print("wrote benchmarks/results/rank_nms_ap_by_iou_detectors.png")

    recall = table.get("recall", {})
    if recall:
        key = sorted(recall)[0]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for name, curve in recall[key]["recall"].items():
            style = "k--" if name.startswith("upper") else "-"
            ax.plot(recall[key]["ious"], curve, style, marker=".", label=name)
        ax.set_xlabel("matching IoU")
        ax.set_ylabel("recall")
        ax.set_title(f"Fig. 3 analogue: quick Rank-NMS model ({key}), synth_shapes_val", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "rank_nms_recall_vs_iou.png"), dpi=90)
        print("wrote benchmarks/results/rank_nms_recall_vs_iou.png")
        print(f"\nRecall against matching IoU ({key})")
        print(f"{'':26s}" + "".join(f"{t:>7.2f}" for t in recall[key]["ious"]))
        for name, curve in recall[key]["recall"].items():
            print(f"{name[:26]:26s}" + "".join(f"{r:7.3f}" for r in curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train")
    p.add_argument("--runs", nargs="+", default=["baseline", "rank_nms"], choices=list(RUNS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--max-iter", type=int, default=None, help="default: the config's (400)")
    p = sub.add_parser("evals")
    p.add_argument("--evals", nargs="+", default=list(EVALS), choices=list(EVALS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p = sub.add_parser("recall")
    p.add_argument("--seed", type=int, default=1)
    sub.add_parser("report")
    args = parser.parse_args()
    {"train": cmd_train, "evals": cmd_evals, "recall": cmd_recall, "report": cmd_report}[args.cmd](
        args
    )


if __name__ == "__main__":
    main()
