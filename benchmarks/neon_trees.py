"""NEON tree crowns (real airborne RGB, d2kit.data.neon): a recipe search for the Faster R-CNN
baseline, then every method at the chosen recipe and schedule, paired by seed with it.

    python benchmarks/neon_trees.py search                    # every recipe, its own scale
    python benchmarks/neon_trees.py search --recipes gn_aug --scales 1 2 4   # convergence
    python benchmarks/neon_trees.py train                     # methods: best converged recipe
    python benchmarks/neon_trees.py train --recipe gn_aug --scale 2 --arms baseline rank_nms
    python benchmarks/neon_trees.py report [--plot]
    python benchmarks/neon_trees.py predict-picture           # the best baseline on OSBS_029

**Data.** Train on ``neon_trees_train`` (64 tiles of 400 px), evaluate on ``neon_trees_val`` (12
held-out tiles of the same site) and ``neon_trees_test`` (OSBS_029 and SOAP_061, other sites).
Every run records, per set, COCO box AP, AP50, AP75 (and AP60..AP90), and NeonTreeEvaluation's
box precision and recall at IoU 0.4 for the detections scored >= 0.3 (``TEST.BOX_PR_AT``):
``P@0.4``, ``R@0.4`` pooled over images and ``P@0.4/img``, ``R@0.4/img`` per-image means.

**Schedules.** A run at scale ``k`` trains ``k * --base-iters`` iterations (default 400, the quick
configs' schedule) with the LR steps at 80 % and 95 % of the run and the configs' 100 warm-up
iterations (:func:`d2kit.benchmarking.scaled_schedule_opts`). A smaller ``--base-iters`` is for
smoke tests only: write those runs to another ``--results`` and ``--out-dir`` (a results file
refuses runs of another base). Every run evaluates on both sets every ``--eval-period``
iterations (default a quarter of the base: 100) for the learning curve on val, and after
training.

**Recipes** (``search``): the NEON quick config
``configs/quick_schedules/faster_rcnn_R_18_FPN_quick_neon_trees.yaml`` plus a recipe's overrides
at its scale (``--scales`` replaces it); see :data:`RECIPES`. A recipe may name a pretraining run
(``init_from``, :data:`PRETRAINING`): it is trained first, per seed and resumable like any run,
and its ``model_final.pth`` becomes the recipe's ``MODEL.WEIGHTS``. Detectron2's checkpointer
loads every weight of the same name and shape and skips (with a warning) those whose shape
differs, here the class-specific box predictor (synth_crowd has 2 classes, NEON 1); each run
records what was skipped and what was newly initialised (``init``).

**Convergence** (:func:`d2kit.benchmarking.converged_scale`, on mean val AP). A recipe has
converged at the shortest scale ``k`` at which ``2k`` moves its mean val AP by less than the seed
std. ``train`` without ``--recipe`` takes, among the converged recipes, the one with the best mean
val AP50 at its converged scale.

**Methods** (``train``): the arms of :data:`ARMS`, in that order, on the chosen recipe's overrides
(and pretrained weights for the Faster R-CNN arms), 3 seeds. The Faster R-CNN baseline is the
recipe-search run of the same recipe, scale and seed (reused, or trained and stored in both
places); arms with ``eval_of`` evaluate their baseline's weights with another inference and train
nothing. RetinaNet arms use ``configs/quick_schedules/retinanet_R_18_FPN_quick_neon_trees.yaml``
with the recipe's overrides, without its pretraining (a Faster R-CNN's).

**Resumable.** Every finished run is written at once into ``benchmarks/results/neon_trees.json``:
``search/<recipe>/x<scale>/s<seed>``, ``methods/<recipe>/x<scale>/<arm>/s<seed>`` and
``pretrain/<name>/x<scale>/s<seed>``; a rerun skips the entries already there. A stopped training
resumes from its last checkpoint (every ``--checkpoint-period`` iterations, default the base)
under ``output/neon_trees/``. Several processes may share one list of runs: each run's folder is
claimed by one (:func:`d2kit.benchmarking.claim_run`).

**Report.** ``report`` prints the recipe search, the convergence rows, and the methods on val and
on test (mean ± std over seeds, paired differences to the baseline of the same detector with
:func:`d2kit.benchmarking.difference_verdict`, combinations against their best single method);
``--plot`` writes ``benchmarks/results/neon_trees_curves.png`` (val AP against iteration, mean and
min-max band over seeds). ``predict-picture`` draws the best baseline's detections on OSBS_029
(``benchmarks/results/neon_trees_osbs_029.png``) with :mod:`d2kit.predict`.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import tempfile
import time

import torch

from d2kit.benchmarking import (
    claim_run,
    converged_scale,
    evaluate_run,
    learning_curve,
    load_results,
    mean_std,
    paired_difference,
    paired_verdict,
    scaled_schedule_opts,
    seconds_per_iter,
    train_run,
    update_results_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT_JSON = os.path.join(HERE, "results", "neon_trees.json")
CURVES_PNG = os.path.join(HERE, "results", "neon_trees_curves.png")
PICTURE_PNG = os.path.join(HERE, "results", "neon_trees_osbs_029.png")
RUNS_DIR = os.path.join(REPO, "output", "neon_trees")
#: the quick configs' schedule (MAX_ITER 400, STEPS (320, 380)): scale 1
BASE_ITERS = 400

FASTER = "quick_schedules/faster_rcnn_R_18_FPN_quick_neon_trees.yaml"
RETINANET = "quick_schedules/retinanet_R_18_FPN_quick_neon_trees.yaml"
CONFIGS = {"faster": FASTER, "retinanet": RETINANET}
#: short name -> registered test set; both are in the NEON configs' DATASETS.TEST
SETS = {"val": "neon_trees_val", "test": "neon_trees_test"}
#: the learning curves stored with each training (val)
CURVE_METRICS = ("AP", "AP50")
#: the convergence protocol's metric (val) and the one that picks the recipe (val)
CONVERGE_METRIC, SELECT_METRIC = "AP", "AP50"
PR = ("P@0.4", "R@0.4")


# ------------------------------------------------------------------------------ recipes


def _recipe(summary: str, opts=(), scale: int = 1, init_from: str | None = None) -> dict:
    """A recipe: overrides of the NEON quick config (any detector's keys: the RetinaNet arms
    take them too), its default schedule scale, and the pretraining run it starts from."""
    return {"summary": summary, "opts": list(opts), "scale": scale, "init_from": init_from}


#: BatchNorm as in the synthetic quick configs, Detectron2's horizontal flip only
BN_NO_AUG = [
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.NORM", "",
    "INPUT.OVERHEAD_AUG.ENABLED", "False",
    "INPUT.RANDOM_FLIP", "horizontal",
]  # fmt: skip
#: the NEON configs' GroupNorm and anchors (one size per level, 3 aspect ratios): a pretraining
#: with them gives every backbone, FPN and RPN weight the NEON model's shape
NEON_GN_ANCHORS = [
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.NORM", "GN",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[12], [24], [48], [96], [192]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.8, 1.0, 1.25]]",
]  # fmt: skip

RECIPES = {
    "bn_800": _recipe(
        "BatchNorm (no GN), no overhead aug (horizontal flip only), 2x (800 its)", BN_NO_AUG, 2
    ),
    "gn_aug": _recipe("the config as shipped: GroupNorm, overhead aug, 400 px"),
    "gn_aug_multiscale": _recipe(
        "+ multi-scale training, shorter side 320..480 step 32 (test 400)",
        ["INPUT.MIN_SIZE_TRAIN", "(320, 352, 384, 416, 448, 480)", "INPUT.MAX_SIZE_TRAIN", "480"],
    ),
    "gn_aug_lr01": _recipe("+ BASE_LR 0.01 (shipped: 0.02)", ["SOLVER.BASE_LR", "0.01"]),
    "pretrain_synth": _recipe(
        "initialised from a Faster R-CNN trained on synth_crowd (box predictor re-initialised)",
        init_from="synth_crowd_gn",
    ),
}

#: pretraining runs a recipe can start from (``init_from``): config, overrides, scale, test set
PRETRAINING = {
    "synth_crowd_gn": {
        "summary": "Faster R-CNN on synth_crowd (2 classes, 256 px) with the NEON GN and anchors",
        "config": "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
        "opts": NEON_GN_ANCHORS,
        "scale": 1,
        "test_set": "synth_crowd_val",
    },
}


# ------------------------------------------------------------------------------ methods


def _arm(detector: str, opts, label: str, eval_of: str | None = None) -> dict:
    """A method: overrides on the recipe's config for ``detector`` ("faster"/"retinanet");
    ``eval_of``: the arm whose weights it evaluates instead of training."""
    return {"detector": detector, "opts": list(opts), "label": label, "eval_of": eval_of}


SOFT = ["MODEL.SUPPRESSION.METHOD", "soft_nms"]
SOFT_PREFILTER = [*SOFT, "MODEL.SUPPRESSION.PREFILTER", "hnms"]
#: Rank-NMS's h and head scaled to the quick RoI batch (128 per image), as in
#: configs/RankNMS/quick_schedules/
RANK_QUICK = ["MODEL.RANK_NMS.TOP_H", "25", "MODEL.RANK_NMS.HEAD.FC_DIM", "256"]
#: the Overlap Sampler's θ 0.55, also the test NMS threshold, as in
#: configs/OverlapSampler/quick_schedules/ (its other keys are the defaults)
OVERLAP_SAMPLER = [
    "MODEL.ROI_HEADS.NAME", "OverlapSamplerROIHeads",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.55",
    "MODEL.OVERLAP_SAMPLER.THRESHOLD", "0.55",
]  # fmt: skip
#: configs/Composed/quick_schedules/faster_rcnn_overlap_sampler_rank_nms_hnms_soft_nms_*.yaml
COMBO3 = [
    "MODEL.ROI_HEADS.NAME", "ComposedROIHeads",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.55",
    "MODEL.COMPOSE.ROI_HEADS.SAMPLER", "overlap_sampler",
    "MODEL.COMPOSE.ROI_HEADS.SCORING", "rank_nms",
    *SOFT_PREFILTER,
    *RANK_QUICK,
]  # fmt: skip
#: configs/Composed/quick_schedules/faster_rcnn_all_in_one_*.yaml: (3) + Noisy Anchors + HashRPN
COMBO5 = [
    *COMBO3,
    "MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN",
    "MODEL.COMPOSE.RPN.ASSIGNER", "noisy_anchors",
    "MODEL.SUPPRESSION.RPN.METHOD", "hnms",
]  # fmt: skip

#: the methods, in the order ``train`` runs them
ARMS = {
    "baseline": _arm("faster", (), "Faster R-CNN (Detectron2)"),
    "hnms_soft": _arm(
        "faster",
        ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads", *SOFT_PREFILTER],
        "HNMS pre-filter + Soft-NMS (baseline weights)",
        eval_of="baseline",
    ),
    "soft_nms": _arm(
        "faster",
        ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads", *SOFT],
        "Soft-NMS (baseline weights)",
        eval_of="baseline",
    ),
    "overlap_sampler": _arm(
        "faster",
        OVERLAP_SAMPLER,
        "Overlap Sampler (θ 0.55, test NMS 0.55)",
    ),
    "rank_nms": _arm(
        "faster",
        ["MODEL.ROI_HEADS.NAME", "RankNMSROIHeads", *RANK_QUICK],
        "Rank-NMS (h 25 for 128 RoIs)",
    ),
    "noisy_anchors_rpn": _arm(
        "faster", ["MODEL.PROPOSAL_GENERATOR.NAME", "NoisyAnchorsRPN"], "Noisy Anchors RPN"
    ),
    "hash_rpn": _arm("faster", ["MODEL.PROPOSAL_GENERATOR.NAME", "HashRPN"], "HashRPN"),
    "combo3": _arm("faster", COMBO3, "(3) Overlap Sampler + Rank-NMS, HNMS pre-filter + Soft-NMS"),
    "combo5": _arm("faster", COMBO5, "(5) all in one: (3) + Noisy Anchors RPN with HNMS"),
    "retinanet_baseline": _arm("retinanet", (), "RetinaNet (Detectron2)"),
    "retinanet_noisy_anchors": _arm(
        "retinanet",
        ["MODEL.META_ARCHITECTURE", "NoisyAnchorsRetinaNet"],
        "RetinaNet + Noisy Anchors",
    ),
    "retinanet_hnms_soft": _arm(
        "retinanet",
        ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet", *SOFT_PREFILTER],
        "RetinaNet, HNMS pre-filter + Soft-NMS (baseline weights)",
        eval_of="retinanet_baseline",
    ),
}
#: the arm every arm of a detector is paired with
BASELINE_OF = {"faster": "baseline", "retinanet": "retinanet_baseline"}
#: combination -> the single methods it combines
COMBINES = {
    "combo3": ("overlap_sampler", "rank_nms", "hnms_soft"),
    "combo5": ("noisy_anchors_rpn", "hash_rpn", "overlap_sampler", "rank_nms", "hnms_soft"),
}


# ------------------------------------------------------------------------------ runs


def _search_key(recipe: str, scale: int, seed: int) -> str:
    return f"{recipe}/x{scale}/s{seed}"


def _methods_key(recipe: str, scale: int, arm: str, seed: int) -> str:
    return f"{recipe}/x{scale}/{arm}/s{seed}"


def _pretrain_key(name: str, scale: int, seed: int) -> str:
    return f"{name}/x{scale}/s{seed}"


def _run_dir(out_dir: str, recipe: str, scale: int, arm: str, seed: int) -> str:
    """One folder per training: the recipe search's run is the methods' ``baseline``."""
    return os.path.join(out_dir, f"{recipe}_x{scale}", f"{arm}_s{seed}")


def _pretrain_dir(out_dir: str, name: str, scale: int, seed: int) -> str:
    return os.path.join(out_dir, "pretrain", f"{name}_x{scale}_s{seed}")


def _shown_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith("..") else rel


def _abs_path(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def _bbox(results: dict) -> dict:
    return {k: float(v) for k, v in results.get("bbox", {}).items()}


def _per_set(results: dict) -> dict:
    """``{"val": {bbox metrics}, "test": {...}}`` from detectron2's results of the two sets."""
    missing = [name for name in SETS.values() if name not in results]
    if missing:
        raise RuntimeError(f"no evaluation results for {missing}; got {sorted(results)}")
    return {short: _bbox(results[name]) for short, name in SETS.items()}


def _check_base_iters(path: str, base_iters: int) -> None:
    for section in ("search", "methods", "pretrain"):
        for key, entry in load_results(path).get(section, {}).items():
            if entry.get("base_iters", base_iters) != base_iters:
                raise SystemExit(
                    f"{path} holds runs of --base-iters {entry['base_iters']} ({section}/{key}), "
                    f"not {base_iters}: pass another --results (and --out-dir)"
                )


def _periods(args, max_iter: int) -> list[str]:
    eval_period = args.eval_period or max(args.base_iters // 4, 1)
    ckpt_period = args.checkpoint_period or args.base_iters
    return [
        "TEST.EVAL_PERIOD", str(min(eval_period, max_iter)),
        "SOLVER.CHECKPOINT_PERIOD", str(ckpt_period),
    ]  # fmt: skip


def _machine() -> dict:
    return {
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _init_report(pretrained: str, final: str, source: str) -> dict:
    """What a run initialised from ``pretrained`` took from it: the weights of the same name and
    shape loaded, those with another shape skipped, those not in it initialised anew (read from
    the two checkpoints' state dicts)."""
    before = torch.load(pretrained, map_location="cpu")["model"]
    after = torch.load(final, map_location="cpu")["model"]
    skipped = sorted(k for k in after if k in before and before[k].shape != after[k].shape)
    new = sorted(k for k in after if k not in before)
    loaded = sum(1 for k in after if k in before and before[k].shape == after[k].shape)
    return {"from": source, "loaded": loaded, "skipped_by_shape": skipped, "new": new}


def _ensure_pretrained(args, name: str, seed: int) -> str | None:
    """The weights of pretraining ``name`` for ``seed``, trained first if needed (None while
    another process trains them)."""
    spec = PRETRAINING[name]
    key = _pretrain_key(name, spec["scale"], seed)
    out = _pretrain_dir(args.out_dir, name, spec["scale"], seed)
    done = load_results(args.results).get("pretrain", {})
    if key in done and os.path.isfile(_abs_path(done[key]["weights"])):
        return _abs_path(done[key]["weights"])
    with claim_run(out) as mine:
        if not mine:
            print(f"skip: pretraining {key} runs in another process")
            return None
        done = load_results(args.results).get("pretrain", {})
        if key in done and os.path.isfile(_abs_path(done[key]["weights"])):
            return _abs_path(done[key]["weights"])  # finished by another process meanwhile
        max_iter = args.base_iters * spec["scale"]
        opts = [*spec["opts"], "SEED", str(seed)]
        opts += scaled_schedule_opts(args.base_iters, spec["scale"])
        opts += ["TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", str(args.base_iters)]
        opts += ["DATASETS.TEST", f"('{spec['test_set']}',)"]
        start = time.perf_counter()
        results, weights = train_run(spec["config"], opts, out)
        entry = {
            "name": name,
            "summary": spec["summary"],
            "scale": spec["scale"],
            "base_iters": args.base_iters,
            "max_iter": max_iter,
            "seed": seed,
            "config": spec["config"],
            "opts": opts,
            "test_set": spec["test_set"],
            "bbox": _bbox(results),
            "weights": _shown_path(weights),
            "s_per_iter": seconds_per_iter(out),
            "wall_s": time.perf_counter() - start,
            **_machine(),
        }
        update_results_json(args.results, "pretrain", key, entry)
        print(f"pretrain/{key}: {spec['test_set']} AP {entry['bbox'].get('AP', math.nan):.2f}")
        return weights


def _recipe_opts(args, recipe: str, detector: str, seed: int) -> tuple[list[str], str | None]:
    """The recipe's overrides for ``detector`` and the pretraining weights (Faster R-CNN only);
    None for the weights while another process pretrains them."""
    spec = RECIPES[recipe]
    opts = list(spec["opts"])
    if detector != "faster" or spec["init_from"] is None:
        return opts, ""
    weights = _ensure_pretrained(args, spec["init_from"], seed)
    if weights is None:
        return opts, None
    return [*opts, "MODEL.WEIGHTS", weights], weights


def _finished_meanwhile(args, section: str, key: str) -> bool:
    """After claiming a run: whether another process finished it since this one looked."""
    if key in load_results(args.results).get(section, {}):
        print(f"skip {section}/{key}: finished by another process")
        return True
    return False


def _train(args, recipe: str, scale: int, arm: str, seed: int, section: str, key: str):
    """Train one arm (the recipe search's run when ``arm`` is the baseline) and return the
    entry to store as ``section``/``key``; None if another process has it or its pretraining,
    or finished it."""
    spec = ARMS[arm]
    out = _run_dir(args.out_dir, recipe, scale, arm, seed)
    with claim_run(out) as mine:
        if not mine:
            print(f"skip {recipe}/x{scale}/{arm}/s{seed}: another process runs it")
            return None
        if _finished_meanwhile(args, section, key):
            return None
        recipe_opts, pretrained = _recipe_opts(args, recipe, spec["detector"], seed)
        if pretrained is None:
            return None
        max_iter = args.base_iters * scale
        opts = [*recipe_opts, *spec["opts"], "SEED", str(seed)]
        opts += scaled_schedule_opts(args.base_iters, scale) + _periods(args, max_iter)
        config = CONFIGS[spec["detector"]]
        start = time.perf_counter()
        results, weights = train_run(config, opts, out)
        wall_s = time.perf_counter() - start
        metric = SETS["val"] + "/bbox/"
        entry = {
            "recipe": recipe,
            "arm": arm,
            "label": spec["label"],
            "detector": spec["detector"],
            "scale": scale,
            "base_iters": args.base_iters,
            "max_iter": max_iter,
            "seed": seed,
            "config": config,
            "opts": opts,
            "eval_of": None,
            **_per_set(results),
            "curve": {m: learning_curve(out, max_iter, metric + m) for m in CURVE_METRICS},
            "s_per_iter": seconds_per_iter(out),
            "wall_s": wall_s,
            "weights": _shown_path(weights),
            **_machine(),
        }
        if pretrained:
            name = RECIPES[recipe]["init_from"]
            source = "pretrain/" + _pretrain_key(name, PRETRAINING[name]["scale"], seed)
            entry["init"] = _init_report(pretrained, weights, source)
        return entry


def _evaluate(args, recipe: str, scale: int, arm: str, seed: int, base: dict, key: str):
    """Evaluate the baseline entry ``base``'s weights with ``arm``'s inference; the entry to
    store as methods/``key``, or None (see :func:`_train`)."""
    spec = ARMS[arm]
    weights = _abs_path(base["weights"])
    out = _run_dir(args.out_dir, recipe, scale, arm, seed)
    with claim_run(out) as mine:
        if not mine:
            print(f"skip {recipe}/x{scale}/{arm}/s{seed}: another process runs it")
            return None
        if _finished_meanwhile(args, "methods", key):
            return None
        # the baseline's own overrides (recipe, seed; the schedule is moot) + the inference's
        opts = [*base["opts"], *spec["opts"]]
        config = CONFIGS[spec["detector"]]
        start = time.perf_counter()
        results = evaluate_run(config, opts, weights, out)
        return {
            "recipe": recipe,
            "arm": arm,
            "label": spec["label"],
            "detector": spec["detector"],
            "scale": scale,
            "base_iters": base["base_iters"],
            "max_iter": base["max_iter"],
            "seed": seed,
            "config": config,
            "opts": opts,
            "eval_of": spec["eval_of"],
            **_per_set(results),
            "weights": base["weights"],
            "wall_s": time.perf_counter() - start,
            **_machine(),
        }


def _search_run(args, recipe: str, scale: int, seed: int) -> dict | None:
    """The recipe search's entry (the Faster R-CNN baseline), trained unless already there."""
    key = _search_key(recipe, scale, seed)
    done = load_results(args.results).get("search", {})
    if key in done:
        print(f"search/{key}: in {args.results} already")
        return done[key]
    entry = _train(args, recipe, scale, "baseline", seed, "search", key)
    if entry is not None:
        update_results_json(args.results, "search", key, entry)
        _print_done("search/" + key, entry)
    return entry


def _print_done(key: str, entry: dict) -> None:
    cells = [
        f"{s} AP {entry[s].get('AP', math.nan):.2f} AP50 {entry[s].get('AP50', math.nan):.2f} "
        f"P/R@0.4 {entry[s].get('P@0.4', math.nan):.1f}/{entry[s].get('R@0.4', math.nan):.1f}"
        for s in SETS
    ]
    took = (
        f"same run as {entry['same_as']}"
        if "same_as" in entry
        else f"{entry['wall_s'] / 60:.1f} min"
    )
    print(f"{key}: " + "; ".join(cells) + f" ({took})")


def cmd_search(args) -> None:
    _check_base_iters(args.results, args.base_iters)
    recipes = args.recipes or list(RECIPES)
    for seed in args.seeds:
        for recipe in recipes:
            for scale in args.scales or [RECIPES[recipe]["scale"]]:
                _search_run(args, recipe, scale, seed)


def _values_by_scale(search: dict, recipe: str, metric: str, split="val") -> dict:
    by_scale: dict[int, list[float]] = {}
    for e in search.values():
        if e["recipe"] == recipe:
            by_scale.setdefault(e["scale"], []).append(e[split].get(metric, math.nan))
    return by_scale


def choose_recipe(search: dict) -> tuple[str, int] | None:
    """Among the recipes whose baseline converged (:func:`converged_scale` on val AP), the one
    with the best mean val AP50 at its converged scale: ``(recipe, scale)``; None if none
    converged."""
    best = None
    for recipe in sorted({e["recipe"] for e in search.values()}):
        scale, _ = converged_scale(_values_by_scale(search, recipe, CONVERGE_METRIC))
        if scale is None:
            continue
        value = statistics.mean(_values_by_scale(search, recipe, SELECT_METRIC)[scale])
        if best is None or value > best[0]:
            best = (value, recipe, scale)
    return None if best is None else (best[1], best[2])


def _chosen(args) -> tuple[str, int]:
    if args.recipe and args.scale:
        return args.recipe, args.scale
    search = load_results(args.results).get("search", {})
    if args.recipe:
        scale, _ = converged_scale(_values_by_scale(search, args.recipe, CONVERGE_METRIC))
        if scale is None:
            raise SystemExit(
                f"{args.recipe} has no converged schedule in {args.results} yet: run `python "
                f"benchmarks/neon_trees.py search --recipes {args.recipe} --scales 1 2 4` "
                "(at least 2 seeds per scale), or pass --scale"
            )
        return args.recipe, scale
    chosen = choose_recipe(search)
    if chosen is None:
        raise SystemExit(
            f"no recipe has a converged schedule in {args.results} yet: run `python "
            "benchmarks/neon_trees.py search` and then, for the promising recipes, `search "
            "--recipes <recipe> --scales 1 2 4` (at least 2 seeds per scale); or pass --recipe "
            "and --scale"
        )
    return chosen


def cmd_train(args) -> None:
    _check_base_iters(args.results, args.base_iters)
    recipe, scale = _chosen(args)
    # in the order of ARMS, where an arm that evaluates another's weights comes after it
    arms = [arm for arm in ARMS if arm in (args.arms or ARMS)]
    print(f"methods at {recipe}, {scale}x ({args.base_iters * scale} iterations): {arms}")
    for seed in args.seeds:
        for arm in arms:
            key = _methods_key(recipe, scale, arm, seed)
            done = load_results(args.results).get("methods", {})
            if key in done:
                continue
            spec = ARMS[arm]
            if arm == "baseline":
                entry = _search_run(args, recipe, scale, seed)
                if entry is not None:
                    entry = dict(entry, same_as="search/" + _search_key(recipe, scale, seed))
            elif spec["eval_of"] is not None:
                base = done.get(_methods_key(recipe, scale, spec["eval_of"], seed))
                if spec["eval_of"] == "baseline" and base is None:
                    base = (
                        load_results(args.results)
                        .get("search", {})
                        .get(_search_key(recipe, scale, seed))
                    )
                if base is None or not os.path.isfile(_abs_path(base["weights"])):
                    print(f"skip methods/{key}: train {spec['eval_of']} first")
                    continue
                entry = _evaluate(args, recipe, scale, arm, seed, base, key)
            else:
                entry = _train(args, recipe, scale, arm, seed, "methods", key)
            if entry is not None:
                update_results_json(args.results, "methods", key, entry)
                _print_done("methods/" + key, entry)


# ------------------------------------------------------------------------------ report


def _fmt(values) -> str:
    mean, std = mean_std([v for v in values if not math.isnan(v)])
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _mean(values) -> str:
    values = [v for v in values if not math.isnan(v)]
    return f"{statistics.mean(values):.1f}" if values else "n/a"


def _pr(rows, split) -> str:
    p = _mean([e[split].get(PR[0], math.nan) for e in rows])
    r = _mean([e[split].get(PR[1], math.nan) for e in rows])
    return f"{p} / {r}"


def _seeds(rows) -> str:
    return ",".join(str(e["seed"]) for e in sorted(rows, key=lambda e: e["seed"]))


def report_search(search: dict, chosen) -> None:
    print("## Recipe search: Faster R-CNN R-18-FPN on NEON tree crowns (real data)\n")
    print(
        "Val: 12 held-out tiles of the training site; test: OSBS_029 + SOAP_061 (other sites). "
        "AP columns: mean ± std over seeds; P / R @0.4: box precision / recall at IoU 0.4, "
        "score >= 0.3, pooled (mean over seeds).\n"
    )
    header = [
        "recipe",
        "what it changes",
        "scale (its)",
        "seeds",
        "val AP",
        "val AP50",
        "val AP75",
        "test AP50",
        "val P / R @0.4",
        "test P / R @0.4",
        "s/iter",
        "wall min / run",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    groups: dict[tuple[str, int], list] = {}
    for e in search.values():
        groups.setdefault((e["recipe"], e["scale"]), []).append(e)
    order = {r: i for i, r in enumerate(RECIPES)}
    for (recipe, scale), rows in sorted(
        groups.items(), key=lambda g: (order.get(g[0][0], 99), g[0][1])
    ):
        mark = " **(chosen)**" if chosen == (recipe, scale) else ""
        spi = [e["s_per_iter"] for e in rows if not math.isnan(e.get("s_per_iter", math.nan))]
        cells = [
            recipe + mark,
            RECIPES.get(recipe, {}).get("summary", "?"),
            f"{scale}x ({rows[0]['max_iter']})",
            _seeds(rows),
            *[_fmt([e["val"].get(m, math.nan) for e in rows]) for m in ("AP", "AP50", "AP75")],
            _fmt([e["test"].get("AP50", math.nan) for e in rows]),
            _pr(rows, "val"),
            _pr(rows, "test"),
            f"{statistics.mean(spi):.2f}" if spi else "—",
            f"{statistics.mean(e['wall_s'] for e in rows) / 60:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print("\nOverrides of the NEON quick config per recipe:")
    for recipe in sorted({r for r, _ in groups}, key=lambda r: order.get(r, 99)):
        spec = RECIPES.get(recipe)
        if spec is None:
            continue
        opts = " ".join(f'"{o}"' if " " in o or not o else o for o in spec["opts"]) or "none"
        init = ""
        if spec["init_from"]:
            pre = PRETRAINING[spec["init_from"]]
            init = (
                f"; MODEL.WEIGHTS: model_final.pth of {spec['init_from']} ({pre['config']} "
                f"{' '.join(pre['opts'])}, {pre['scale']}x)"
            )
        print(f"- {recipe}: {opts}{init}")
    print()


def report_convergence(search: dict, chosen) -> None:
    print(f"### Convergence (mean val {CONVERGE_METRIC}; doubling the schedule)\n")
    any_row = False
    for recipe in RECIPES:
        found, rows = converged_scale(_values_by_scale(search, recipe, CONVERGE_METRIC))
        for r in rows:
            any_row = True
            state = "converged" if r["converged"] else "still improving"
            print(
                f"- {recipe}{' (chosen)' if chosen and chosen[0] == recipe else ''}: "
                f"{r['scale']}x -> {r['doubled']}x: {r['delta']:+.2f} AP, seed std "
                f"{r['std']:.2f}: {state}"
            )
    if not any_row:
        print("- no recipe measured at two scales k and 2k with >= 2 seeds each yet")
    print()


def _by_seed(rows, split, metric) -> dict[int, float]:
    return {e["seed"]: e[split].get(metric, math.nan) for e in rows}


def _diff_cell(rows, base, split, metric) -> str:
    mean, std, n = paired_difference(_by_seed(rows, split, metric), _by_seed(base, split, metric))
    if n == 0:
        return "n/a"
    if n < 2:
        return f"{mean:+.2f} (1 seed: undecided)"
    return f"{mean:+.2f} ± {std:.2f} ({paired_verdict(mean, std, n)})"


def report_methods(methods: dict, search: dict, recipe: str, scale: int) -> None:
    at: dict[str, list] = {}
    for e in methods.values():
        if e["recipe"] == recipe and e["scale"] == scale:
            at.setdefault(e["arm"], []).append(e)
    if not at:
        return
    converged, _ = converged_scale(_values_by_scale(search, recipe, CONVERGE_METRIC))
    label = "converged" if converged == scale else "NOT converged: a comparison of training speed"
    max_iter = next(iter(at.values()))[0]["max_iter"]
    print(f"## Methods at recipe {recipe}, {scale}x ({max_iter} iterations, {label})\n")
    for split, what in (("val", "neon_trees_val"), ("test", "neon_trees_test")):
        print(f"### {what} (mean ± std over seeds; differences paired by seed)\n")
        header = [
            "method",
            "seeds",
            "AP",
            "AP50",
            "AP75",
            "P / R @0.4",
            "P / R @0.4 per image",
            "AP vs baseline",
            "AP50 vs baseline",
        ]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for arm, spec in ARMS.items():
            rows = at.get(arm)
            if not rows:
                continue
            base = at.get(BASELINE_OF[spec["detector"]], [])
            p_img = _mean([e[split].get("P@0.4/img", math.nan) for e in rows])
            r_img = _mean([e[split].get("R@0.4/img", math.nan) for e in rows])
            cells = [
                spec["label"],
                _seeds(rows),
                *[_fmt([e[split].get(m, math.nan) for e in rows]) for m in ("AP", "AP50", "AP75")],
                _pr(rows, split),
                f"{p_img} / {r_img}",
            ]
            if arm in BASELINE_OF.values() or not base:
                cells += ["—", "—"]
            else:
                cells += [_diff_cell(rows, base, split, m) for m in ("AP", "AP50")]
            print("| " + " | ".join(cells) + " |")
        for combo, singles in COMBINES.items():
            if combo not in at:
                continue
            measured = {s: _by_seed(at[s], split, "AP") for s in singles if s in at}
            if not measured:
                continue
            best = max(measured, key=lambda s: statistics.mean(measured[s].values()))
            mean, std, n = paired_difference(_by_seed(at[combo], split, "AP"), measured[best])
            verdict = paired_verdict(mean, std, n) if n >= 2 else "undecided"
            missing = "" if len(measured) == len(singles) else " (not every single method measured)"
            print(
                f"\n{combo} against its best single method on {split} ({best}): AP "
                f"{mean:+.2f} ± {std:.2f} over {n} seeds: {verdict}{missing}"
            )
        print()
    wall = sum(e["wall_s"] for rows in at.values() for e in rows if "same_as" not in e) / 3600
    print(
        f"Wall time of these runs (training + evaluations, baseline counted in the search): "
        f"{wall:.1f} h\n"
    )


def _band(ax, curves, label) -> None:
    iters = sorted(set.intersection(*[{it for it, _ in c} for c in curves]))
    if not iters:
        return
    values = [[dict(map(tuple, c))[it] for c in curves] for it in iters]
    means = [statistics.mean(v) for v in values]
    (line,) = ax.plot(iters, means, lw=1.3, marker="o", ms=2, label=f"{label} ({len(curves)})")
    if len(curves) > 1:
        lo, hi = [min(v) for v in values], [max(v) for v in values]
        ax.fill_between(iters, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def plot_curves(search: dict, methods: dict, chosen, path: str) -> None:
    """Val AP against iteration, mean and min-max band over seeds: the recipes (each at its
    converged scale, else its longest) and the trained methods at ``chosen``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    recipe_curves = {}
    for recipe in RECIPES:
        by_scale = _values_by_scale(search, recipe, CONVERGE_METRIC)
        if not by_scale:
            continue
        scale = converged_scale(by_scale)[0] or max(by_scale)
        curves = [
            e["curve"]["AP"]
            for e in search.values()
            if e["recipe"] == recipe and e["scale"] == scale and e["curve"]["AP"]
        ]
        if curves:
            recipe_curves[f"{recipe} {scale}x"] = curves
    if recipe_curves:
        panels.append(("Faster R-CNN recipes", recipe_curves))
    if chosen:
        method_curves = {}
        for arm, spec in ARMS.items():
            curves = [
                e["curve"]["AP"]
                for e in methods.values()
                if (e["recipe"], e["scale"]) == chosen
                and e["arm"] == arm
                and e.get("curve", {}).get("AP")
            ]
            if curves:
                method_curves[spec["label"]] = curves
        if method_curves:
            panels.append((f"methods at {chosen[0]} {chosen[1]}x", method_curves))
    if not panels:
        print("no learning curves in the results file yet")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, curves_by_label) in zip(axes[0], panels):
        for label, curves in curves_by_label.items():
            _band(ax, curves, label)
        ax.set_title(f"NEON trees, val: {title}", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("box AP (val)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5.5, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def cmd_report(args) -> None:
    table = load_results(args.results)
    search, methods = table.get("search", {}), table.get("methods", {})
    if not search and not methods:
        raise SystemExit(f"no results at {args.results}; run `search` first")
    asked = bool(args.recipe and args.scale)
    chosen = (args.recipe, args.scale) if asked else choose_recipe(search)
    report_search(search, chosen)
    if chosen is None:
        print("No recipe has converged yet (see below): `train` needs --recipe and --scale.\n")
    elif asked:
        print(f"Methods reported at {chosen[0]}, {chosen[1]}x (as asked).\n")
    else:
        print(
            f"Chosen for the methods: {chosen[0]} at {chosen[1]}x (the best mean val "
            f"{SELECT_METRIC} among the recipes whose baseline converged).\n"
        )
    report_convergence(search, chosen)
    for pre_key, e in sorted(table.get("pretrain", {}).items()):
        print(
            f"Pretraining {pre_key}: {e['test_set']} AP {e['bbox'].get('AP', math.nan):.2f} "
            f"({e['wall_s'] / 60:.0f} min)"
        )
    if table.get("pretrain"):
        print()
    pairs = sorted({(e["recipe"], e["scale"]) for e in methods.values()})
    if args.recipe and args.scale:
        pairs = [(args.recipe, args.scale)]
    for recipe, scale in pairs:
        report_methods(methods, search, recipe, scale)
    print(
        "Paired by seed: mean ± std of the per-seed differences; a gain or a loss only when it "
        "exceeds that std, else no difference. Real data, but small: 12 val tiles, 2 test images."
    )
    if args.plot:
        methods_at = chosen if chosen in pairs else (pairs[0] if pairs else None)
        plot_curves(search, methods, methods_at, args.plot_path)


# ------------------------------------------------------------------------------ picture


def cmd_predict_picture(args) -> None:
    """Draw the best baseline's detections (highest val AP50 of the search runs whose weights
    exist, or ``--key``) on OSBS_029 with d2kit.predict."""
    from PIL import Image

    from d2kit.data.neon import fetch_neon_trees
    from d2kit.predict import main as predict_main

    search = load_results(args.results).get("search", {})
    candidates = {k: e for k, e in search.items() if os.path.isfile(_abs_path(e["weights"]))}
    if args.key:
        if args.key not in candidates:
            raise SystemExit(f"no search run {args.key} with weights on disk in {args.results}")
        key = args.key
    elif candidates:
        key = max(candidates, key=lambda k: candidates[k]["val"].get("AP50", -1.0))
    else:
        raise SystemExit(f"no search run with weights on disk in {args.results}; run `search`")
    entry = candidates[key]
    image = os.path.join(fetch_neon_trees(), "OSBS_029.png")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--config-file", entry["config"], "--input", image, "--output", tmp]
        argv += ["--score-threshold", str(args.score_threshold)]
        argv += [*entry["opts"], "MODEL.WEIGHTS", _abs_path(entry["weights"])]
        predict_main(argv)
        with Image.open(os.path.join(tmp, "OSBS_029.png")) as drawn:
            drawn = drawn.convert("RGB")
            drawn.thumbnail((600, 600))
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            # a 256-colour palette: a third of the bytes, the boxes and labels unchanged
            drawn.quantize(256).save(args.output, optimize=True)
    print(
        f"wrote {args.output} (search/{key}: val AP50 {entry['val'].get('AP50', math.nan):.2f}, "
        f"score >= {args.score_threshold:g})"
    )


# ------------------------------------------------------------------------------ command line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    search = sub.add_parser("search", help="train the recipes of the Faster R-CNN baseline")
    search.add_argument("--recipes", nargs="+", choices=list(RECIPES))
    search.add_argument(
        "--scales", nargs="+", type=int, help="schedule scales (default: each recipe's own)"
    )
    train = sub.add_parser("train", help="train and evaluate the methods at one recipe")
    train.add_argument("--recipe", choices=list(RECIPES), help="default: the chosen recipe")
    train.add_argument("--scale", type=int, help="default: the recipe's converged scale")
    train.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: all, in order")
    for p in (search, train):
        p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
        p.add_argument(
            "--base-iters",
            type=int,
            default=BASE_ITERS,
            help="iterations of scale 1 (default %(default)s; smaller for smoke tests only)",
        )
        p.add_argument("--eval-period", type=int, help="TEST.EVAL_PERIOD (default base/4)")
        p.add_argument("--checkpoint-period", type=int, help="default: the base iterations")
    report = sub.add_parser("report", help="print the tables from the results file")
    report.add_argument("--recipe", choices=list(RECIPES), help="methods at this recipe ...")
    report.add_argument("--scale", type=int, help="... and scale (with --recipe)")
    report.add_argument("--plot", action="store_true", help=f"write {CURVES_PNG}")
    report.add_argument("--plot-path", default=CURVES_PNG)
    picture = sub.add_parser("predict-picture", help="the best baseline on OSBS_029")
    picture.add_argument("--key", help="a search run <recipe>/x<scale>/s<seed> (default: best)")
    picture.add_argument("--score-threshold", type=float, default=0.3)
    picture.add_argument("--output", default=PICTURE_PNG)
    for p in (search, train, report, picture):
        p.add_argument("--results", default=OUT_JSON, help="results JSON (default: %(default)s)")
        p.add_argument("--out-dir", default=RUNS_DIR, help="run folders (default: %(default)s)")
    args = parser.parse_args(argv)
    commands = {"search": cmd_search, "train": cmd_train, "report": cmd_report}
    commands["predict-picture"] = cmd_predict_picture
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
