"""Methods compared at convergence: the convergence protocol, learning curves, and every method
re-measured at the schedule where its Detectron2 baseline has stopped improving. Synthetic-data
numbers, not COCO.

    python benchmarks/converged_quick_ap.py train --group faster_shapes --runs baseline \
        --scales 2 4 8
    python benchmarks/converged_quick_ap.py train --group faster_shapes  # all, converged scale
    python benchmarks/converged_quick_ap.py import-quick  # 1x: composed_quick_ap.json's runs
    python benchmarks/converged_quick_ap.py time    # inference ms/image (on an idle machine)
    python benchmarks/converged_quick_ap.py report [--plot]

**Schedules.** A run at scale ``k`` trains ``k`` times the quick schedule (``SOLVER.MAX_ITER``
400·k), with the LR steps at the same fractions (80 % and 95 % of the run) and the same 100
warm-up iterations; nothing else changes. Scale 1 is the quick configs' own schedule.

**Convergence protocol** (:func:`converged_scale`). For each detector group the baseline trains at
1x, 2x, 4x (and 8x where needed) over the same seeds. The converged schedule is the shortest scale
``k`` at which doubling it moves the baseline's mean AP by less than the seed std (the larger of
the two scales' stds). Methods are compared with the baseline of the same scale, paired by seed.

**Learning curves.** Every training evaluates on the group's test set every ``--eval-period``
iterations (``TEST.EVAL_PERIOD``); the curve (iteration, AP) is read from the run's
``metrics.json`` and stored with the run. ``report --plot`` draws AP against iteration (mean and
min-max band over seeds) for the baseline and each method at the converged scale, one panel per
group, into ``benchmarks/results/learning_curves.png``.

**Resumable.** Every finished run is written at once to
``benchmarks/results/converged_quick_ap.json`` under ``runs/<group>/<run>/x<scale>/s<seed>``, and a
rerun skips the entries already there; a training that was stopped resumes from its last
checkpoint (every ``--checkpoint-period`` iterations) under ``output/converged_quick_ap/``. Runs
that only change the inference evaluate the baseline's weights of the same scale and seed.
Inference time is measured by ``time`` alone, never while a training runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

from d2kit.benchmarking import (
    claim_run,
    converged_scale,
    evaluate_run,
    forward_timing_trainer,
    learning_curve,
    load_results,
    mean_std,
    paired_difference,
    paired_verdict,
    run_train_net,
    scaled_schedule_opts,
    seconds_per_iter,
    train_run,
    update_results_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT_JSON = os.path.join(HERE, "results", "converged_quick_ap.json")
CURVES_PNG = os.path.join(HERE, "results", "learning_curves.png")
RUNS_DIR = os.path.join(REPO, "output", "converged_quick_ap")
#: the quick configs' schedule (MAX_ITER 400, STEPS (320, 380)), which scale 1 is
QUICK_ITERS = 400
METRICS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")

Q = "quick_schedules/"
COMPOSED = "Composed/quick_schedules/"
SOFT_PREFILTER = ["MODEL.SUPPRESSION.METHOD", "soft_nms", "MODEL.SUPPRESSION.PREFILTER", "hnms"]


def _run(config, overrides=(), label="", eval_of=None):
    """A run: a config, its overrides, and (eval_of) the run whose weights it evaluates instead
    of training."""
    return {"config": config, "opts": list(overrides), "label": label, "eval_of": eval_of}


#: group -> test set, the seeds, and its runs; "baseline" is the Detectron2 model every other run
#: of the group is paired with; COMBINES: combination -> the single methods it combines
GROUPS = {
    "faster_shapes": {
        "title": "Faster R-CNN on synth_shapes",
        "test_set": "synth_shapes_val",
        "runs": {
            "baseline": _run(Q + "faster_rcnn_R_18_FPN_quick_synth_shapes.yaml", (), "Detectron2"),
            "noisy_anchors_rpn": _run(
                "NoisyAnchors/quick_schedules/"
                "noisy_anchors_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Noisy Anchors RPN",
            ),
            "hash_rpn": _run(
                Q + "faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                ["MODEL.PROPOSAL_GENERATOR.NAME", "HashRPN"],
                "HashRPN",
            ),
            "overlap_sampler": _run(
                "OverlapSampler/quick_schedules/"
                "faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml",
                (),
                "Overlap Sampler",
            ),
            "rank_nms": _run(
                "RankNMS/quick_schedules/rank_nms_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Rank-NMS",
            ),
            "hnms_soft": _run(
                Q + "faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads", *SOFT_PREFILTER],
                "HNMS pre-filter + Soft-NMS (baseline weights)",
                eval_of="baseline",
            ),
            "combo3": _run(
                COMPOSED + "faster_rcnn_overlap_sampler_rank_nms_hnms_soft_nms_"
                "R_18_FPN_quick_synth_shapes.yaml",
                (),
                "(3) Overlap Sampler + Rank-NMS, HNMS pre-filter + Soft-NMS",
            ),
            "combo5": _run(
                COMPOSED + "faster_rcnn_all_in_one_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "(5) all in one",
            ),
        },
        "combines": {
            "combo3": ("overlap_sampler", "rank_nms", "hnms_soft"),
            "combo5": ("noisy_anchors_rpn", "hash_rpn", "overlap_sampler", "rank_nms", "hnms_soft"),
        },
    },
    "retinanet_shapes": {
        "title": "RetinaNet on synth_shapes",
        "test_set": "synth_shapes_val",
        "runs": {
            "baseline": _run(Q + "retinanet_R_18_FPN_quick_synth_shapes.yaml", (), "Detectron2"),
            "noisy_anchors": _run(
                "NoisyAnchors/quick_schedules/"
                "noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Noisy Anchors (paper)",
            ),
            "noisy_anchors_released": _run(
                "NoisyAnchors/quick_schedules/"
                "noisy_anchors_released_retinanet_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Noisy Anchors (released, focal alpha 0.5)",
            ),
            "hnms_soft": _run(
                Q + "retinanet_R_18_FPN_quick_synth_shapes.yaml",
                ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet", *SOFT_PREFILTER],
                "HNMS pre-filter + Soft-NMS (baseline weights)",
                eval_of="baseline",
            ),
            "combo1": _run(
                COMPOSED + "retinanet_noisy_anchors_hnms_soft_nms_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "(1) Noisy Anchors + HNMS pre-filter + Soft-NMS",
            ),
        },
        "combines": {"combo1": ("noisy_anchors", "hnms_soft")},
    },
    "faster_crowd": {
        "title": "Faster R-CNN on synth_crowd",
        "test_set": "synth_crowd_val",
        "runs": {
            "baseline": _run(Q + "faster_rcnn_R_18_FPN_quick_synth_crowd.yaml", (), "Detectron2"),
            "overlap_sampler": _run(
                Q + "faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
                [
                    "MODEL.ROI_HEADS.NAME",
                    "OverlapSamplerROIHeads",
                    "MODEL.ROI_HEADS.NMS_THRESH_TEST",
                    "0.55",
                    "MODEL.OVERLAP_SAMPLER.THRESHOLD",
                    "0.55",
                ],  # fmt: skip
                "Overlap Sampler (θ 0.55, test NMS 0.55)",
            ),
            "rank_nms": _run(
                Q + "faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
                # h scaled with the RoI batch as in the quick Rank-NMS config (25 per 128 RoIs)
                ["MODEL.ROI_HEADS.NAME", "RankNMSROIHeads", "MODEL.RANK_NMS.TOP_H", "50"],
                "Rank-NMS (h 50 for 256 RoIs)",
            ),
            "hnms_soft": _run(
                Q + "faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
                ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads", *SOFT_PREFILTER],
                "HNMS pre-filter + Soft-NMS (baseline weights)",
                eval_of="baseline",
            ),
            "hash_rpn": _run(
                "HNMS/quick_schedules/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
                (),
                "HashRPN",
            ),
        },
        "combines": {},
    },
    "mask_shapes": {
        "title": "Mask R-CNN on synth_shapes",
        "test_set": "synth_shapes_val",
        "runs": {
            "baseline": _run(Q + "mask_rcnn_R_18_FPN_quick_synth_shapes.yaml", (), "Detectron2"),
            "rank_nms": _run(
                "RankNMS/quick_schedules/rank_nms_mask_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Rank-NMS",
            ),
        },
        "combines": {},
    },
    "cascade_shapes": {
        "title": "Cascade R-CNN on synth_shapes",
        "test_set": "synth_shapes_val",
        "runs": {
            "baseline": _run(Q + "cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml", (), "Detectron2"),
            "rank_nms": _run(
                "RankNMS/quick_schedules/rank_nms_cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml",
                (),
                "Rank-NMS",
            ),
        },
        "combines": {},
    },
}


def _run_dir(out_dir: str, group: str, run: str, scale: int, seed: int) -> str:
    return os.path.join(out_dir, group, f"{run}_x{scale}_s{seed}")


def _key(group: str, run: str, scale: int, seed: int) -> str:
    return f"{group}/{run}/x{scale}/s{seed}"


def _metrics(results: dict, task: str) -> dict:
    return {k: float(v) for k, v in results.get(task, {}).items()}


def _train_one(args, group: str, run: str, scale: int, seed: int) -> None:
    spec = GROUPS[group]["runs"][run]
    test_set = GROUPS[group]["test_set"]
    out = _run_dir(args.out_dir, group, run, scale, seed)
    schedule = scaled_schedule_opts(QUICK_ITERS, scale)
    schedule += ["TEST.EVAL_PERIOD", str(args.eval_period)]
    schedule += ["SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period)]
    common = ["SEED", str(seed), *spec["opts"], *schedule]
    start = time.perf_counter()
    if spec["eval_of"] is None:
        opts = [*common, "DATASETS.TEST", f"('{test_set}',)"]
        results, weights = train_run(spec["config"], opts, out)
    else:
        base_dir = _run_dir(args.out_dir, group, spec["eval_of"], scale, seed)
        weights = os.path.join(base_dir, "model_final.pth")
        if not os.path.isfile(weights):
            print(f"skip {_key(group, run, scale, seed)}: train {spec['eval_of']} first")
            return
        opts = [*common, "DATASETS.TEST", f"('{test_set}',)"]
        results = evaluate_run(spec["config"], opts, weights, out)
    wall_s = time.perf_counter() - start
    entry = {
        "group": group,
        "run": run,
        "label": spec["label"],
        "scale": scale,
        "max_iter": QUICK_ITERS * scale,
        "seed": seed,
        "config": spec["config"],
        "opts": common,
        "eval_of": spec["eval_of"],
        "test_set": test_set,
        "bbox": _metrics(results, "bbox"),
        "weights": os.path.relpath(weights, REPO),
        "wall_s": wall_s,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if "segm" in results:
        entry["segm"] = _metrics(results, "segm")
    if spec["eval_of"] is None:
        entry["curve"] = learning_curve(out, QUICK_ITERS * scale)
        entry["s_per_iter"] = seconds_per_iter(out)
    update_results_json(args.results, "runs", _key(group, run, scale, seed), entry)
    print(f"{_key(group, run, scale, seed)}: AP {entry['bbox'].get('AP', float('nan')):.2f}")


def _baseline_ap_by_scale(runs: dict, group: str) -> dict[int, list[float]]:
    by_scale: dict[int, list[float]] = {}
    for e in runs.values():
        if e["group"] == group and e["run"] == "baseline":
            by_scale.setdefault(e["scale"], []).append(e["bbox"]["AP"])
    return by_scale


def cmd_train(args) -> None:
    runs_of_group = GROUPS[args.group]["runs"]
    names = args.runs or list(runs_of_group)
    unknown = [r for r in names if r not in runs_of_group]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown} in {args.group}; runs: {list(runs_of_group)}")
    scales = args.scales
    if not scales:
        scale, _ = converged_scale(
            _baseline_ap_by_scale(load_results(args.results).get("runs", {}), args.group)
        )
        if scale is None:
            raise SystemExit(
                f"{args.group}: no converged schedule in {args.results} yet; train the baseline "
                "at more scales (--runs baseline --scales 2 4 8) or pass --scales"
            )
        scales = [scale]
    # runs that evaluate another run's weights go after it
    names = sorted(names, key=lambda r: runs_of_group[r]["eval_of"] is not None)
    for scale in scales:
        for seed in args.seeds:
            for run in names:
                done = load_results(args.results).get("runs", {})
                if _key(args.group, run, scale, seed) in done:
                    continue
                with claim_run(_run_dir(args.out_dir, args.group, run, scale, seed)) as mine:
                    if mine:
                        _train_one(args, args.group, run, scale, seed)
                    else:
                        print(f"skip {_key(args.group, run, scale, seed)}: another process runs it")


#: run of benchmarks/composed_quick_ap.py -> (group, run): the same config, seed and schedule
#: (the quick one, scale 1), imported by ``import-quick`` instead of training them again
COMPOSED_QUICK_RUNS = {
    "baseline_faster": ("faster_shapes", "baseline"),
    "noisy_anchors_rpn": ("faster_shapes", "noisy_anchors_rpn"),
    "hash_rpn": ("faster_shapes", "hash_rpn"),
    "overlap_sampler": ("faster_shapes", "overlap_sampler"),
    "rank_nms": ("faster_shapes", "rank_nms"),
    "hnms_soft_faster": ("faster_shapes", "hnms_soft"),
    "combo3": ("faster_shapes", "combo3"),
    "combo5": ("faster_shapes", "combo5"),
    "baseline_retinanet": ("retinanet_shapes", "baseline"),
    "noisy_anchors_retinanet": ("retinanet_shapes", "noisy_anchors"),
    "hnms_soft_retinanet": ("retinanet_shapes", "hnms_soft"),
    "combo1": ("retinanet_shapes", "combo1"),
}
COMPOSED_QUICK_JSON = os.path.join(HERE, "results", "composed_quick_ap.json")


def cmd_import_quick(args) -> None:
    """Copy the quick-schedule (scale 1) runs of ``composed_quick_ap.json`` into the results
    file, marked with their source; their AP and inference time are that benchmark's, they
    have no learning curve."""
    source = load_results(args.source).get("runs", {})
    if not source:
        raise SystemExit(f"no runs in {args.source}")
    for entry in source.values():
        if entry["run"] not in COMPOSED_QUICK_RUNS:
            continue
        group, run = COMPOSED_QUICK_RUNS[entry["run"]]
        key = _key(group, run, 1, entry["seed"])
        imported = {
            "group": group,
            "run": run,
            "label": GROUPS[group]["runs"][run]["label"],
            "scale": 1,
            "max_iter": QUICK_ITERS,
            "seed": entry["seed"],
            "config": entry["config"],
            "opts": entry["opts"],
            "eval_of": GROUPS[group]["runs"][run]["eval_of"],
            "test_set": entry["test_set"],
            "bbox": entry["bbox"],
            "ms_per_image": entry["ms_per_image"],
            "timing_threads": entry["torch_threads"],
            "wall_s": entry["train_s"],
            "machine": entry["machine"],
            "source": os.path.relpath(args.source, REPO) + f" runs/{entry['run']}/s{entry['seed']}",
        }
        update_results_json(args.results, "runs", key, imported)
        print(f"imported {key}")


#: the shared Trainer whose model times its forward (for the evaluation pass)
_TimedTrainer = forward_timing_trainer()


def cmd_time(args) -> None:
    """Inference ms per test image (batch 1, the model's forward, first image skipped) of each
    stored run that has none yet, over its whole test set."""
    runs = load_results(args.results).get("runs", {})
    for key, entry in sorted(runs.items()):
        if "ms_per_image" in entry and not args.again:
            continue
        if args.groups and entry["group"] not in args.groups:
            continue
        weights = os.path.join(REPO, entry["weights"])
        if not os.path.isfile(weights):
            print(f"skip {key}: no weights at {weights}")
            continue
        opts = [*entry["opts"], "MODEL.WEIGHTS", weights]
        opts += ["DATASETS.TEST", f"('{entry['test_set']}',)"]
        opts += ["OUTPUT_DIR", os.path.join(args.out_dir, "timing", key.replace("/", "_"))]
        torch.set_num_threads(args.threads)
        run_train_net(entry["config"], opts, eval_only=True, trainer_cls=_TimedTrainer)
        timer = _TimedTrainer.timer
        entry = dict(
            entry,
            ms_per_image=timer.mean_ms(skip=1),
            images_timed=max(len(timer.times) - 1, 1),
            timing_threads=args.threads,
        )
        update_results_json(args.results, "runs", key, entry)
        print(f"{key}: {entry['ms_per_image']:.1f} ms/image")


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _by_seed(entries, task="bbox", metric="AP") -> dict[int, float]:
    return {e["seed"]: e.get(task, {}).get(metric, float("nan")) for e in entries}


def report_group(runs: dict, group: str, scale: int | None = None) -> None:
    """Print the convergence table and the methods at the converged scale (or ``scale``)."""
    spec = GROUPS[group]
    entries = [e for e in runs.values() if e["group"] == group]
    if not entries:
        return
    print(f"## {spec['title']} ({spec['test_set']}, synthetic data)\n")
    by_scale = _baseline_ap_by_scale(runs, group)
    print("Baseline box AP by schedule (mean ± std over seeds):\n")
    print("| scale | iterations | seeds | AP | AP50 | AP75 | s/iter | wall min, all seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for k in sorted(by_scale):
        rows = [e for e in entries if e["run"] == "baseline" and e["scale"] == k]
        seeds = ",".join(str(e["seed"]) for e in sorted(rows, key=lambda e: e["seed"]))
        cells = [_fmt(*mean_std([e["bbox"][m] for e in rows])) for m in ("AP", "AP50", "AP75")]
        spi = [e["s_per_iter"] for e in rows if not math.isnan(e.get("s_per_iter", math.nan))]
        cells.append(f"{statistics.mean(spi):.2f}" if spi else "—")
        cells.append(f"{sum(e['wall_s'] for e in rows) / 60:.0f}")
        print(f"| {k}x | {QUICK_ITERS * k} | {seeds} | " + " | ".join(cells) + " |")
    found, rows = converged_scale(by_scale)
    print()
    for r in rows:
        print(
            f"- {r['scale']}x -> {r['doubled']}x: mean AP {r['delta']:+.2f}, seed std "
            f"{r['std']:.2f}: {'converged' if r['converged'] else 'still improving'}"
        )
    target = scale or found
    if target is None:
        print("\nNo converged schedule yet: methods are compared at the longest baseline scale.")
        target = max(by_scale) if by_scale else None
    if target is None:
        return
    label = "converged" if target == found else "NOT converged: a comparison of training speed"
    print(f"\nMethods at {target}x ({QUICK_ITERS * target} iterations, {label}), paired by seed:\n")
    base_spec = spec["runs"]["baseline"]
    schedule = " ".join(
        f'"{o}"' if " " in o else o for o in scaled_schedule_opts(QUICK_ITERS, target)
    )
    print(
        "One run by hand (any run: its config and overrides, any seed): python -m "
        f"d2kit.engine.train_net --config-file {base_spec['config']} SEED 1 {schedule}\n"
    )
    at = {}
    for e in entries:
        if e["scale"] == target:
            at.setdefault(e["run"], []).append(e)
    has_segm = any("segm" in e for e in entries)
    header = ["run", "seeds", *[f"box {m}" for m in METRICS]]
    header += ["mask AP"] if has_segm else []
    header += ["ms / image", "box AP vs baseline"]
    header += ["mask AP vs baseline"] if has_segm else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    base = at.get("baseline", [])
    for run, run_spec in spec["runs"].items():
        rows = at.get(run)
        if not rows:
            continue
        rows = sorted(rows, key=lambda e: e["seed"])
        cells = [run_spec["label"], ",".join(str(e["seed"]) for e in rows)]
        cells += [_fmt(*mean_std([e["bbox"].get(m, math.nan) for e in rows])) for m in METRICS]
        if has_segm:
            cells.append(_fmt(*mean_std([e.get("segm", {}).get("AP", math.nan) for e in rows])))
        ms = [e["ms_per_image"] for e in rows if "ms_per_image" in e]
        cells.append(_fmt(*mean_std(ms)) if ms else "—")
        tasks = ("bbox", "segm") if has_segm else ("bbox",)
        for task in tasks:
            if run == "baseline" or not base:
                cells.append("—")
                continue
            mean, std, n = paired_difference(_by_seed(rows, task), _by_seed(base, task))
            cells.append(f"{mean:+.2f} ± {std:.2f} ({paired_verdict(mean, std, n)})")
        print("| " + " | ".join(cells) + " |")
    for combo, singles in spec["combines"].items():
        if combo not in at:
            continue
        ap = _by_seed(at[combo])
        measured = {s: _by_seed(at[s]) for s in singles if s in at}
        if not measured:
            continue
        best = max(measured, key=lambda s: statistics.mean(measured[s].values()))
        mean, std, n = paired_difference(ap, measured[best])
        verdict = paired_verdict(mean, std, n)
        ships = verdict in ("gain", "no difference")
        missing = "" if len(measured) == len(singles) else " (not every single method measured)"
        print(
            f"\n{combo} against its best single method ({best}): {mean:+.2f} ± {std:.2f} over "
            f"{n} seeds, {verdict}: {'ships' if ships else 'does not ship'}{missing}"
        )
    wall = sum(e["wall_s"] for e in entries if "source" not in e) / 3600
    print(f"\nWall time of this group's runs in the file (training + evaluations): {wall:.1f} h\n")


def _curves_of(runs: dict, group: str, run: str, scale: int) -> list:
    return [
        e["curve"]
        for e in runs.values()
        if (e["group"], e["run"], e["scale"]) == (group, run, scale) and e.get("curve")
    ]


def _draw_curves(ax, curves: list, label: str, **style) -> None:
    """Mean over seeds (and the min-max band with more than one) of learning curves."""
    iters = sorted(set.intersection(*[{it for it, _ in c} for c in curves]))
    values = [[dict(map(tuple, c))[it] for c in curves] for it in iters]
    (line,) = ax.plot(iters, [statistics.mean(v) for v in values], label=label, **style)
    if len(curves) > 1:
        lo, hi = [min(v) for v in values], [max(v) for v in values]
        ax.fill_between(iters, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def plot_curves(runs: dict, path: str) -> None:
    """AP against iteration, mean and min-max band over seeds, one panel per group: the
    baseline at every measured schedule (thin, dashed: the convergence protocol), and each run
    at the group's converged (else longest) baseline scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUPS if any(e["group"] == g and e.get("curve") for e in runs.values())]
    if not groups:
        print("no learning curves in the results file yet")
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        by_scale = _baseline_ap_by_scale(runs, group)
        scale = converged_scale(by_scale)[0] or max(by_scale)
        for k in sorted(by_scale):
            curves = _curves_of(runs, group, "baseline", k)
            if k != scale and curves:
                label = f"Detectron2, {k}x ({len(curves)} seeds)"
                _draw_curves(ax, curves, label, lw=0.9, ls="--", color=f"C{7 + k % 3}")
        for i, (run, spec) in enumerate(GROUPS[group]["runs"].items()):
            curves = _curves_of(runs, group, run, scale)
            if curves:
                label = f"{spec['label']}, {scale}x ({len(curves)} seeds)"
                _draw_curves(ax, curves, label, lw=1.3, color=f"C{i}")
        ax.set_title(f"{GROUPS[group]['title']}, {scale}x", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("box AP", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def cmd_report(args) -> None:
    runs = load_results(args.results).get("runs", {})
    if not runs:
        raise SystemExit(f"no results at {args.results}; run `train` first")
    for group in args.groups or GROUPS:
        report_group(runs, group, args.scale)
    print(
        "Paired by seed: mean ± std of the per-seed differences; a gain or a loss only when it "
        "exceeds that std, else no difference."
    )
    if args.plot:
        plot_curves(runs, args.plot_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    train = sub.add_parser("train", help="train and evaluate runs")
    train.add_argument("--group", required=True, choices=list(GROUPS))
    train.add_argument("--runs", nargs="+", help="runs of the group (default: all)")
    train.add_argument(
        "--scales", nargs="+", type=int, help="schedule scales (default: the converged one)"
    )
    train.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    train.add_argument("--eval-period", type=int, default=200, help="TEST.EVAL_PERIOD")
    train.add_argument("--checkpoint-period", type=int, default=400)
    timing = sub.add_parser("time", help="time inference of the stored runs' weights")
    timing.add_argument("--threads", type=int, default=2)
    timing.add_argument("--groups", nargs="+", choices=list(GROUPS))
    timing.add_argument("--again", action="store_true", help="re-time runs that have a time")
    imp = sub.add_parser("import-quick", help="import the quick runs of composed_quick_ap")
    imp.add_argument("--source", default=COMPOSED_QUICK_JSON)
    report = sub.add_parser("report", help="print the tables from the results file")
    report.add_argument("--groups", nargs="+", choices=list(GROUPS))
    report.add_argument("--scale", type=int, help="compare methods at this scale")
    report.add_argument("--plot", action="store_true", help=f"write {CURVES_PNG}")
    report.add_argument("--plot-path", default=CURVES_PNG)
    for p in (train, timing, imp, report):
        p.add_argument("--results", default=OUT_JSON, help="results JSON (default: %(default)s)")
        p.add_argument("--out-dir", default=RUNS_DIR)
    args = parser.parse_args(argv)
    commands = {"train": cmd_train, "time": cmd_time, "import-quick": cmd_import_quick}
    commands["report"] = cmd_report
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
