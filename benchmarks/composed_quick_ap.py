"""Composed methods on the quick synthetic schedules: the baselines, each method alone and the
shipped combinations, over seeds. Synthetic-data numbers, not COCO.

    python benchmarks/composed_quick_ap.py train [--runs baseline_faster combo3 ...] [--seeds 1 2 3]
    python benchmarks/composed_quick_ap.py report

``train`` trains each run (a config plus overrides) with each seed through the shared train_net
(every project's keys), then evaluates the final weights on ``synth_shapes_val`` with
COCOEvaluator (box AP, AP50 ... AP90) and times the model's forward per test image (batch 1,
the first image skipped as warm-up). Runs that change only the inference evaluate the weights of
the run they name (``weights_of``) instead of training again. Every run is stored in
``benchmarks/results/composed_quick_ap.json`` (``--results`` for another file) under
``runs/<run>/s<seed>``; checkpoints go to ``output/composed_quick_ap/<run>_s<seed>``.

``report`` prints one table (mean ± std over seeds, and each run's AP against its Detectron2
baseline paired by seed) and, for each combination, its AP against the best of its single
methods (by mean AP), paired by seed. A combination ships as a config when it measures at least
as well: a gain, or no difference (the paired difference within its std over seeds); it does not
ship when it is a loss beyond the seed spread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
from detectron2.engine import default_argument_parser

from d2kit.benchmarking import (
    difference_verdict,
    forward_timing_trainer,
    mean_std,
    update_results_json,
)
from d2kit.engine import Trainer, train_net
from d2kit.projects import project_config_fns

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT_JSON = os.path.join(HERE, "results", "composed_quick_ap.json")
RUNS_DIR = os.path.join(REPO, "output", "composed_quick_ap")
VAL = "synth_shapes_val"

Q = "quick_schedules/"
FASTER = Q + "faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
RETINA = Q + "retinanet_R_18_FPN_quick_synth_shapes.yaml"
MASK = Q + "mask_rcnn_R_18_FPN_quick_synth_shapes.yaml"
COMPOSED = "Composed/quick_schedules/"
SOFT_PREFILTER = ["MODEL.SUPPRESSION.METHOD", "soft_nms", "MODEL.SUPPRESSION.PREFILTER", "hnms"]


#: name -> (config, overrides, weights_of (None: trains), label)
RUNS = {
    "baseline_faster": (FASTER, [], None, "Faster R-CNN (Detectron2)"),
    "noisy_anchors_rpn": (
        "NoisyAnchors/quick_schedules/noisy_anchors_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "Faster R-CNN, Noisy Anchors RPN",
    ),
    "hash_rpn": (
        FASTER,
        ["MODEL.PROPOSAL_GENERATOR.NAME", "HashRPN"],
        None,
        "Faster R-CNN, HNMS in the RPN (HashRPN)",
    ),
    "overlap_sampler": (
        "OverlapSampler/quick_schedules/"
        "faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml",
        [],
        None,
        "Faster R-CNN, Overlap Sampler",
    ),
    "rank_nms": (
        "RankNMS/quick_schedules/rank_nms_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "Faster R-CNN, Rank-NMS",
    ),
    "hnms_soft_faster": (
        FASTER,
        ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads", *SOFT_PREFILTER],
        "baseline_faster",
        "Faster R-CNN, HNMS pre-filter + Soft-NMS (baseline weights)",
    ),
    "baseline_retinanet": (RETINA, [], None, "RetinaNet (Detectron2)"),
    "noisy_anchors_retinanet": (
        "NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "RetinaNet, Noisy Anchors",
    ),
    "hnms_soft_retinanet": (
        RETINA,
        ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet", *SOFT_PREFILTER],
        "baseline_retinanet",
        "RetinaNet, HNMS pre-filter + Soft-NMS (baseline weights)",
    ),
    "combo1": (
        COMPOSED + "retinanet_noisy_anchors_hnms_soft_nms_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "(1) RetinaNet: Noisy Anchors + HNMS pre-filter + Soft-NMS",
    ),
    "combo2": (
        COMPOSED
        + "faster_rcnn_noisy_anchors_hash_rpn_overlap_sampler_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "(2) Faster: Noisy Anchors + HashRPN, Overlap Sampler",
    ),
    "combo3": (
        COMPOSED
        + "faster_rcnn_overlap_sampler_rank_nms_hnms_soft_nms_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "(3) Faster: Overlap Sampler + Rank-NMS, HNMS pre-filter + Soft-NMS",
    ),
    "combo5": (
        COMPOSED + "faster_rcnn_all_in_one_R_18_FPN_quick_synth_shapes.yaml",
        [],
        None,
        "(5) Faster: all in one ((2) and (3))",
    ),
}
#: what `train` runs by default: the baselines, each method alone, combinations 1, 3 and 5
DEFAULT_RUNS = [name for name in RUNS if name != "combo2"]
#: combination -> the single methods it combines (it ships if it is at least as good as the best)
COMBINES = {
    "combo1": ("noisy_anchors_retinanet", "hnms_soft_retinanet"),
    "combo2": ("noisy_anchors_rpn", "hash_rpn", "overlap_sampler"),
    "combo3": ("overlap_sampler", "rank_nms", "hnms_soft_faster"),
    "combo5": ("noisy_anchors_rpn", "hash_rpn", "overlap_sampler", "rank_nms", "hnms_soft_faster"),
}
#: the Detectron2 model each run is compared with
BASELINE_OF = {
    run: "baseline_retinanet"
    if run in ("baseline_retinanet", "noisy_anchors_retinanet", "hnms_soft_retinanet", "combo1")
    else "baseline_faster"
    for run in RUNS
}
METRICS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")


#: the shared Trainer whose model times its forward (for the evaluation pass)
_TimedTrainer = forward_timing_trainer()


def _main(config, opts, eval_only=False, trainer_cls=Trainer):
    argv = ["--config-file", config] + (["--eval-only"] if eval_only else []) + list(opts)
    args = default_argument_parser().parse_args(argv)
    return train_net.main(args, config_fns=project_config_fns(), trainer_cls=trainer_cls)


def _run_dir(out_dir: str, run: str, seed: int) -> str:
    return os.path.join(out_dir, f"{run}_s{seed}")


def _train_one(args, run: str, seed: int) -> None:
    config, overrides, weights_of, label = RUNS[run]
    out = _run_dir(args.out_dir, run, seed)
    common = ["SEED", str(seed), *overrides, *args.extra]
    if args.max_iter:
        common += ["SOLVER.MAX_ITER", str(args.max_iter)]
    start = time.perf_counter()
    if weights_of is None:
        # train without the final evaluation: the timed evaluation below gives the AP
        _main(config, [*common, "OUTPUT_DIR", out, "DATASETS.TEST", "()"])
        weights = os.path.join(out, "model_final.pth")
    else:
        weights = os.path.join(_run_dir(args.out_dir, weights_of, seed), "model_final.pth")
        if not os.path.isfile(weights):
            print(f"skip {run} s{seed}: train {weights_of} first (no {weights})")
            return
    train_s = time.perf_counter() - start
    opts = [*common, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", os.path.join(out, "eval")]
    opts += ["DATASETS.TEST", f"('{args.test_set}',)"]
    results = _main(config, opts, eval_only=True, trainer_cls=_TimedTrainer)
    timer = _TimedTrainer.timer
    entry = {
        "run": run,
        "label": label,
        "seed": seed,
        "config": config,
        "opts": [os.path.relpath(o, REPO) if str(o).startswith(REPO) else o for o in common],
        "weights_of": weights_of,
        "test_set": args.test_set,
        "bbox": {k: float(v) for k, v in results["bbox"].items()},
        "ms_per_image": timer.mean_ms(skip=1),
        "images_timed": max(len(timer.times) - 1, 1),
        "train_s": train_s,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if "segm" in results:
        entry["segm"] = {k: float(v) for k, v in results["segm"].items()}
    update_results_json(args.results, "runs", f"{run}/s{seed}", entry)
    print(f"{run} s{seed}: AP {entry['bbox']['AP']:.2f}, {entry['ms_per_image']:.1f} ms/image")


def cmd_train(args) -> None:
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; runs: {', '.join(RUNS)}")
    # runs that reuse weights go after the runs they reuse
    runs = sorted(args.runs, key=lambda r: RUNS[r][2] is not None)
    for seed in args.seeds:
        for run in runs:
            _train_one(args, run, seed)


def _stats(values):
    return mean_std(v for v in values if not math.isnan(v))


def _fmt(mean, std) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _ap_by_seed(rows) -> dict[int, float]:
    return {r["seed"]: r["bbox"]["AP"] for r in rows}


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean and std over the shared seeds of a - b, and how many seeds."""
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    mean, std = _stats(diffs)
    return mean, std, len(diffs)


def verdict(diff_mean: float, diff_std: float) -> str:
    """A paired difference is a gain or a loss only when it exceeds its spread over seeds."""
    return "n/a" if math.isnan(diff_mean) else difference_verdict(diff_mean, diff_std)


def cmd_report(args) -> None:
    if not os.path.exists(args.results):
        raise SystemExit(f"no results at {args.results}; run `train` first")
    with open(args.results) as f:
        runs = json.load(f).get("runs", {})
    by_run: dict[str, list] = {}
    for entry in runs.values():
        by_run.setdefault(entry["run"], []).append(entry)
    header = ["run", "seeds", *[f"box {m}" for m in METRICS], "ms / image", "AP vs baseline"]
    print(f"Quick schedules on {VAL} (synthetic data), mean ± std over seeds\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run in RUNS:
        rows = by_run.get(run)
        if not rows:
            continue
        cells = [RUNS[run][3], ",".join(str(r["seed"]) for r in sorted(rows, key=_seed))]
        cells += [_fmt(*_stats([r["bbox"].get(m, float("nan")) for r in rows])) for m in METRICS]
        cells.append(_fmt(*_stats([r["ms_per_image"] for r in rows])))
        base = BASELINE_OF[run]
        if run == base or base not in by_run:
            cells.append("—")
        else:
            mean, std, _ = _paired(_ap_by_seed(rows), _ap_by_seed(by_run[base]))
            cells.append(f"{mean:+.2f} ± {std:.2f} ({verdict(mean, std)})")
        print("| " + " | ".join(cells) + " |")
    print(
        "\nAP vs baseline: paired by seed (mean ± std of the differences); a gain or a loss only "
        "when it exceeds the std"
    )
    print()
    for combo, singles in COMBINES.items():
        if combo not in by_run:
            continue
        ap = _ap_by_seed(by_run[combo])
        measured = {s: _ap_by_seed(by_run[s]) for s in singles if s in by_run}
        if not measured:
            print(f"{combo}: none of its single methods measured yet")
            continue
        best = max(measured, key=lambda s: statistics.mean(measured[s].values()))
        mean, std, n = _paired(ap, measured[best])
        # "at least as well as its best single method": not a loss beyond the seed spread
        ships = verdict(mean, std) in ("gain", "no difference")
        print(
            f"{combo}: AP {statistics.mean(ap.values()):.2f} vs best single method {best} "
            f"{statistics.mean(measured[best].values()):.2f}: paired {mean:+.2f} ± {std:.2f} "
            f"over {n} seeds, {verdict(mean, std)}: {'ships' if ships else 'does not ship'}"
            + ("" if len(measured) == len(singles) else " (not every single method measured)")
        )


def _seed(entry) -> int:
    return entry["seed"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    train = sub.add_parser("train", help="train and evaluate runs with seeds")
    train.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help=f"of {', '.join(RUNS)}")
    train.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    train.add_argument("--max-iter", type=int, default=0, help="SOLVER.MAX_ITER (0: config's)")
    train.add_argument("--test-set", default=VAL)
    train.add_argument("--out-dir", default=RUNS_DIR)
    train.add_argument(
        "--extra", nargs="*", default=[], help="config overrides for every run: KEY VALUE ..."
    )
    report = sub.add_parser("report", help="print the table from the results file")
    for p in (train, report):
        p.add_argument("--results", default=OUT_JSON, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    {"train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
