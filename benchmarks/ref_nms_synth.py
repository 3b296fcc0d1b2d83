"""Ref-NMS on the synthetic referring data: the paper's Table 1 (recall of the referent and of the
context objects by each expression's proposals) over seeds, BCE and ranking loss, on a
deliberately weak first stage, and what the relatedness module costs per expression next to the
detector's time per image. Synthetic-data numbers, not RefCOCO.

    python benchmarks/ref_nms_synth.py detector [--max-iter 300] [--period 25]  # once, seed fixed
    python benchmarks/ref_nms_synth.py probe [--choose N]     # box AP + baseline recall per ckpt
    python benchmarks/ref_nms_synth.py train [--losses bce rank] [--seeds 1 2 3] [--max-iter N]
    python benchmarks/ref_nms_synth.py cost [--repeat 5] [--images 20] [--threads 1]
    python benchmarks/ref_nms_synth.py diagnose [--variants bce rank]  # r of the referents
    python benchmarks/ref_nms_synth.py grounding [--seeds 1 2 3]  # Table 2 (needs `train`)
    python benchmarks/ref_nms_synth.py report [--markdown]    # tables + plot from the JSON

Why a weak first stage: the quick detector (600 iterations, AP50 99.9) already puts every referent
of ``synth_referring_val`` among its score >= 0.65 boxes, so no proposal method can gain there.
``detector`` trains the quick detector config once (one seed) with a checkpoint every
``--period`` iterations; a checkpoint after N iterations is the quick config run with
``SOLVER.MAX_ITER N`` (warm-up 100 iterations, then the constant LR 0.02: its steps at 480/570 are
not reached). ``probe`` scores each checkpoint (box AP, and the baseline's referent recall in the
"real" case on val) and picks the most-trained one whose real-case referent recall lies in
[80, 95] % (the paper's RefCOCO baseline: 80.8-94.0 %) while its top-100 still recalls >= 97 %
(the referent is among the candidates, so a better selection can find it); ``--choose N``
overrides. That checkpoint is frozen: every Ref-NMS run shares it and its candidate cache.

``train`` trains the relatedness module (the quick BCE / ranking configs, only ``SEED``,
``OUTPUT_DIR``, the detector weights, the cache folder, the test sets and a denser selection
sweep changed) and evaluates Table 1 on ``synth_referring_{val,testA,testB}``: for Ref-NMS and
the baseline (NMS on c, c >= 0.65), ``top100`` (N = 100), ``real`` (threshold selection) and
``matched`` (Ref-NMS at the sweep threshold whose proposals per expression are closest to the
baseline's real case). ``probe`` also sweeps the detector's score threshold on the chosen
detector (NMS on c, top-1 + c > t: the evaluator with r = 1), the baseline's recall curve.

``cost`` times, in one process on one thread, the frozen detector per image (full Detectron2
inference, and the candidate extraction Ref-NMS uses instead of its post-processing) and the
relatedness module per expression (e_q + Eqs. 1-2 over the image's candidates), fusion + NMS +
selection per expression, median of repeats.

``grounding`` is Table 2: per seed, the built-in second-stage listener (``ref_nms.grounding``,
a small MAttNet-style model) is trained on the ground-truth regions of
``synth_referring_train`` and its top-1 accuracy (IoU > 0.5) is measured on val/testA/testB
with the ground-truth boxes (upper bound), the baseline's proposals, and the proposals of the
``train`` runs of the same seed (BCE and ranking: the real selection at conf 0.1, the matched
budget, and as a control the baseline's NMS-on-c list cut to each expression's Ref-NMS length).

Everything goes into ``benchmarks/results/ref_nms_synth.json`` (every run kept; ``report``
prints mean ± std over seeds) and ``benchmarks/results/ref_nms_{recall,grounding}.png``;
checkpoints and caches go to ``output/ref_nms_synth/``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import default_argument_parser

import ref_nms
from d2kit.benchmarking import difference_verdict, update_results_json
from d2kit.engine import train_net
from ref_nms.evaluation import RefNMSEvaluator
from ref_nms.expressions import TestImageMapper
from ref_nms.first_stage import build_detector, first_stage_candidates
from ref_nms.selection import baseline_proposals, select_proposals
from ref_nms.trainer import RefNMSTrainer, build_test_items

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
OUT_JSON = os.path.join(RESULTS, "ref_nms_synth.json")
OUT_PNG = os.path.join(RESULTS, "ref_nms_recall.png")
OUT_PNG_GROUNDING = os.path.join(RESULTS, "ref_nms_grounding.png")
RUNS_DIR = os.path.join(REPO, "output", "ref_nms_synth")
DET_DIR = os.path.join(RUNS_DIR, "detector")
CACHE_DIR = os.path.join(RUNS_DIR, "first_stage_cache")

DETECTOR = "configs/RefNMS/quick_schedules/detector_faster_rcnn_R_18_FPN_quick_synth_referring.yaml"
CONFIGS = {
    "bce": "configs/RefNMS/quick_schedules/ref_nms_bce_synth_referring.yaml",
    "rank": "configs/RefNMS/quick_schedules/ref_nms_rank_synth_referring.yaml",
}
LABELS = {"bce": "Ref-NMS B (BCE)", "rank": "Ref-NMS R (rank)"}
VAL = "synth_referring_val"
TESTS = (VAL, "synth_referring_testA", "synth_referring_testB")
#: Ref-NMS selection thresholds conf (denser than the quick configs' so that ``matched`` lands
#: close to the baseline's number of proposals).
SWEEP = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
#: Detector score thresholds of the baseline's curve (NMS on c, top-1 + c > t).
SCORE_SWEEP = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95)
#: The weak-detector rule of ``probe``: real-case referent recall (%) range, top-100 minimum.
REAL_RANGE, TOP100_MIN = (80.0, 95.0), 97.0
METRICS = ("referent", "context", "context_true", "proposals")
MR = "MODEL.REF_NMS."


def _use_smoke_paths() -> None:
    global OUT_JSON, OUT_PNG, OUT_PNG_GROUNDING, RUNS_DIR, DET_DIR, CACHE_DIR
    RUNS_DIR = os.path.join(REPO, "output", "ref_nms_synth_smoke")
    OUT_JSON = os.path.join(RUNS_DIR, "ref_nms_synth.json")
    OUT_PNG = os.path.join(RUNS_DIR, "ref_nms_recall.png")
    OUT_PNG_GROUNDING = os.path.join(RUNS_DIR, "ref_nms_grounding.png")
    DET_DIR = os.path.join(RUNS_DIR, "detector")
    CACHE_DIR = os.path.join(RUNS_DIR, "first_stage_cache")


# ---------------------------------------------------------------------------------------------
# JSON with a lock (every run kept)
# ---------------------------------------------------------------------------------------------
def _load() -> dict:
    if os.path.exists(OUT_JSON):
        with open(OUT_JSON) as f:
            return json.load(f)
    return {}


def _save(section: str, key: str | None, value) -> None:
    """Merge one entry into the JSON (``key`` None: the whole section)."""
    update_results_json(OUT_JSON, section, key, value, default=_jsonable, compact_digits=8)


def _jsonable(obj):
    if hasattr(obj, "__float__"):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO) if str(path).startswith(REPO) else path


def _command(script: str, config: str, opts, eval_only: bool = False) -> str:
    quoted = [f'"{o}"' if (" " in str(o) or "(" in str(o)) else str(o) for o in opts]
    flags = " --eval-only" if eval_only else ""
    return f"python {script} --config-file {config}{flags} " + " ".join(quoted)


def _launch(cli: list[str], out_dir: str) -> dict:
    """Run ``python <cli>`` from the repository root in its own process (clean logs per run, one
    process at a time), its console in ``<out_dir>/console.log``; return its
    ``OUTPUT_DIR/final_results.json``."""
    os.makedirs(out_dir, exist_ok=True)
    results = os.path.join(out_dir, train_net.RESULTS_FILE)
    if os.path.exists(results):
        os.remove(results)
    console = os.path.join(out_dir, "console.log")
    print(f"$ python {' '.join(cli)}  (console: {_rel(console)})", flush=True)
    with open(console, "w") as f:
        proc = subprocess.run([sys.executable, *cli], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        with open(console) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{tail}\nfailed ({proc.returncode}): python {' '.join(cli)}")
    with open(results) as f:
        return json.load(f)


def _this_command() -> str:
    return "python benchmarks/ref_nms_synth.py " + " ".join(sys.argv[1:])


def _tuple_opt(values) -> str:
    return "(" + ", ".join(repr(v) for v in values) + ("," if len(values) == 1 else "") + ")"


# ---------------------------------------------------------------------------------------------
# The weak first stage: trained once, probed per checkpoint
# ---------------------------------------------------------------------------------------------
def _ckpt(iteration: int) -> str:
    """Detectron2's checkpoint after ``iteration`` iterations (saved at iter index N - 1)."""
    return os.path.join(DET_DIR, f"model_{iteration - 1:07d}.pth")


def _ckpt_iterations() -> list[int]:
    its = []
    for f in glob.glob(os.path.join(DET_DIR, "model_*.pth")):
        m = re.match(r"model_(\d{7})\.pth$", os.path.basename(f))
        if m:
            its.append(int(m.group(1)) + 1)
    return sorted(its)


def cmd_detector(args) -> None:
    opts = [
        "SEED", str(args.seed), "SOLVER.MAX_ITER", str(args.max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(args.period), "OUTPUT_DIR", _rel(DET_DIR),
    ]  # fmt: skip
    start = time.perf_counter()
    cli = ["-m", "d2kit.engine.train_net", "--config-file", DETECTOR, *opts]
    res = _launch(cli, DET_DIR)
    _save(
        "detector",
        None,
        {
            "config": DETECTOR,
            "opts": opts,
            "command": _command("-m d2kit.engine.train_net", DETECTOR, opts),
            "seed": args.seed,
            "max_iter": args.max_iter,
            "checkpoint_period": args.period,
            "bbox_at_max_iter": {k: float(v) for k, v in res.get("bbox", {}).items()},
            "wall_s": time.perf_counter() - start,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "note": "a checkpoint after N iterations = the quick detector config with "
            "SOLVER.MAX_ITER N (warm-up 100, then LR 0.02; steps 480/570 not reached)",
        },
    )


def _ref_cfg(loss: str, weights: str, out: str, extra=()):
    opts = [
        MR + "DETECTOR_WEIGHTS", _rel(weights), MR + "CACHE_DIR", _rel(CACHE_DIR),
        "OUTPUT_DIR", _rel(out), MR + "EVAL_SELECTION_THRESHS", _tuple_opt(SWEEP), *extra,
    ]  # fmt: skip
    args = default_argument_parser().parse_args(["--config-file", CONFIGS[loss], *opts])
    return train_net.setup(args, [ref_nms.add_ref_nms_config])


def _score_threshold_eval(weights: str, datasets) -> dict:
    """Table 1's baseline rows of the detector ``weights`` plus its score-threshold sweep: the
    evaluator fed r = 1, so that Ref-NMS's selection becomes NMS on c, top-1 + c > t.

    Returns ``{dataset: {"baseline": {...}, "score_sweep": {t: {metric: value}},
    "top100": {...}, "pseudo_gt": {...}}}``.
    """
    cfg = _ref_cfg("bce", weights, os.path.join(RUNS_DIR, "probe_eval"))
    out = {}
    for name in datasets:
        items = build_test_items(cfg, name)
        evaluator = RefNMSEvaluator.from_cfg(cfg, name)
        evaluator.sweep = tuple(float(t) for t in SCORE_SWEEP)
        evaluator.distributed = False
        evaluator.reset()
        mapper = TestImageMapper()
        for item in items:
            x = mapper(item)
            ones = torch.ones(len(x["expressions"]), x["candidates"]["scores"].numel())
            evaluator.process([x], [{"relatedness": ones}])
        res = evaluator.evaluate()
        sweep = {}
        for t in SCORE_SWEEP:
            sweep[f"{t:g}"] = {
                m: res["ref_nms"][f"real@{t:g}/{m}"]
                for m in METRICS
                if f"real@{t:g}/{m}" in res["ref_nms"]
            }
        out[name] = {
            "baseline": dict(res["baseline"]),
            "score_sweep": sweep,
            "pseudo_gt": dict(res.get("pseudo_gt", {})),
            "candidates_per_image": float(
                np.mean([torch.load(i["candidates_file"])["scores"].numel() for i in items])
            ),
        }
    return out


def _detector_ap(weights: str, iteration: int) -> dict:
    out = os.path.join(RUNS_DIR, "probe", f"it{iteration}")
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", out]
    cli = ["-m", "d2kit.engine.train_net", "--config-file", DETECTOR, "--eval-only", *opts]
    res = _launch([*cli, "DATASETS.TEST", f"('{VAL}',)"], out)
    return {k: float(v) for k, v in res["bbox"].items()}


def _choose(probe: dict) -> int | None:
    ok = [
        int(k[2:])
        for k, row in probe.items()
        if REAL_RANGE[0] <= row["baseline"]["real/referent"] <= REAL_RANGE[1]
        and row["baseline"]["top100/referent"] >= TOP100_MIN
    ]
    return max(ok) if ok else None


def cmd_probe(args) -> None:
    its = args.iters or _ckpt_iterations()
    if not its:
        raise SystemExit(f"no checkpoint under {DET_DIR}: run `detector` first")
    table = _load().get("probe", {})
    for it in its:
        if f"it{it}" in table and not args.redo:
            continue
        weights = _ckpt(it)
        row = {
            "iteration": it,
            "weights": _rel(weights),
            "bbox": _detector_ap(weights, it),
            **_score_threshold_eval(weights, [VAL])[VAL],
        }
        row.pop("score_sweep")
        _save("probe", f"it{it}", row)
        table[f"it{it}"] = row
        b = row["baseline"]
        print(
            f"it {it:4d}: AP {row['bbox']['AP']:5.1f} AP50 {row['bbox']['AP50']:5.1f}  baseline "
            f"real referent {b['real/referent']:5.1f} ({b['real/proposals']:.2f} / expr), top100 "
            f"{b['top100/referent']:5.1f} ({b['top100/proposals']:.2f} / expr)"
        )
    chosen = args.choose or _choose(table)
    if chosen is None:
        raise SystemExit(
            f"no checkpoint has a real-case referent recall in {REAL_RANGE} with top-100 >= "
            f"{TOP100_MIN}: train more or fewer iterations, or pass --choose N"
        )
    weights = _ckpt(chosen)
    evals = _score_threshold_eval(weights, TESTS)
    _save(
        "chosen",
        None,
        {
            "iteration": chosen,
            "weights": _rel(weights),
            "rule": "manual (--choose)"
            if args.choose
            else f"most iterations with val real-case referent recall in {list(REAL_RANGE)} % "
            f"and top-100 referent recall >= {TOP100_MIN} %",
            "bbox": table[f"it{chosen}"]["bbox"],
            "evals": evals,
            "command": _this_command(),
        },
    )
    print(f"chosen detector: {chosen} iterations ({_rel(weights)})")


# ---------------------------------------------------------------------------------------------
# Ref-NMS runs
# ---------------------------------------------------------------------------------------------
def _chosen() -> dict:
    chosen = _load().get("chosen")
    if not chosen:
        raise SystemExit("no detector chosen yet: run `detector`, then `probe`")
    return chosen


def _run_dir(loss: str, seed: int) -> str:
    return os.path.join(RUNS_DIR, f"{loss}_s{seed}")


def cmd_train(args) -> None:
    chosen = _chosen()
    weights = os.path.join(REPO, chosen["weights"])
    for seed in args.seeds:
        for loss in args.losses:
            variant = f"{loss}_{args.tag}" if args.tag else loss
            out = _run_dir(variant, seed)
            opts = [
                "SEED", str(seed), "OUTPUT_DIR", _rel(out),
                MR + "DETECTOR_WEIGHTS", chosen["weights"], MR + "CACHE_DIR", _rel(CACHE_DIR),
                "DATASETS.TEST", _tuple_opt(TESTS), MR + "EVAL_SELECTION_THRESHS",
                _tuple_opt(SWEEP),
            ]  # fmt: skip
            if args.max_iter:
                opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
            if args.max_train_images:
                opts += [MR + "MAX_TRAIN_IMAGES", str(args.max_train_images)]
            if args.max_test_images:
                opts += [MR + "MAX_TEST_IMAGES", str(args.max_test_images)]
            opts += list(args.opts)
            assert os.path.isfile(weights), weights
            start = time.perf_counter()
            cli = ["projects/RefNMS/train_net.py", "--config-file", CONFIGS[loss], *opts]
            res = _launch(cli, out)
            if len(TESTS) == 1:
                res = {TESTS[0]: res}
            _save(
                "runs",
                f"{variant}/s{seed}",
                {
                    "loss": loss,
                    "variant": variant,
                    "tag": args.tag,
                    "seed": seed,
                    "config": CONFIGS[loss],
                    "opts": opts,
                    "command": _command("projects/RefNMS/train_net.py", CONFIGS[loss], opts),
                    "detector_iteration": chosen["iteration"],
                    "results": {d: {k: dict(v) for k, v in r.items()} for d, r in res.items()},
                    "wall_s": time.perf_counter() - start,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                },
            )


# ---------------------------------------------------------------------------------------------
# Cost: relatedness module per expression vs detector per image
# ---------------------------------------------------------------------------------------------
def _time(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def cmd_cost(args) -> None:
    torch.set_num_threads(args.threads)
    chosen = _chosen()
    weights = os.path.join(_run_dir(args.loss, args.seed), "model_final.pth")
    if not os.path.isfile(weights):
        raise SystemExit(f"no {weights}: run `train` first")
    cfg = _ref_cfg(
        args.loss, os.path.join(REPO, chosen["weights"]), os.path.join(RUNS_DIR, "cost"),
        ["MODEL.WEIGHTS", _rel(weights)],
    )  # fmt: skip
    c = cfg.MODEL.REF_NMS
    detector, det_cfg = build_detector(cfg)
    model = RefNMSTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    items = build_test_items(cfg, VAL)[: args.images]
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(VAL)}
    mapper = DatasetMapper(det_cfg, is_train=False)
    det_inputs = [mapper(dict(by_id[i["image_id"]])) for i in items]
    items = [TestImageMapper()(i) for i in items]

    def detector_full(x):
        return detector([x])

    def candidates(x):
        return first_stage_candidates(
            detector, [x], c.CANDIDATE_SCORE_THRESH, c.MIN_CANDIDATES_TEST, c.CANDIDATE_THRESH_STEP
        )

    times = {k: [] for k in ("detector", "first_stage", "relatedness", "relatedness_image",
                             "selection", "baseline_selection")}  # fmt: skip
    with torch.no_grad():
        for rep in range(args.repeat + 1):  # the first pass warms up
            sample = {k: [] for k in times}
            for x, item in zip(det_inputs, items):
                sample["detector"].append(_time(detector_full, x)[0])
                sample["first_stage"].append(_time(candidates, x)[0])
                cand, exprs = item["candidates"], item["expressions"]
                t, out = _time(model.inference, [item])
                sample["relatedness_image"].append(t / max(1, len(exprs)))
                for e, expr in enumerate(exprs):
                    t, _ = _time(model.inference, [{"candidates": cand, "expressions": [expr]}])
                    sample["relatedness"].append(t)
                    t, _ = _time(
                        select_proposals, cand["boxes"], cand["classes"], cand["scores"],
                        out[0]["relatedness"][e], c.NMS_THRESH, c.SELECTION_THRESH,
                    )  # fmt: skip
                    sample["selection"].append(t)
                t, _ = _time(
                    baseline_proposals, cand["boxes"], cand["classes"], cand["scores"],
                    c.NMS_THRESH, c.BASELINE_SCORE_THRESH, c.BASELINE_THRESH_STEP,
                )  # fmt: skip
                sample["baseline_selection"].append(t)
            if rep:
                for k in times:
                    times[k] += sample[k]
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    n_expr = [len(i["expressions"]) for i in items]
    n_cand = [i["candidates"]["scores"].numel() for i in items]
    row = {
        "ms_median": ms,
        "relatedness_per_expr_over_detector_per_image": ms["relatedness"] / ms["detector"],
        "relatedness_per_image_over_detector_per_image": ms["relatedness"]
        * float(np.mean(n_expr))
        / ms["detector"],
        "expressions_per_image": float(np.mean(n_expr)),
        "candidates_per_image": float(np.mean(n_cand)),
        "images": len(items),
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "weights": _rel(weights),
        "detector_weights": chosen["weights"],
        "relatedness_params": sum(p.numel() for p in model.parameters()),
        "detector_params": sum(p.numel() for p in detector.parameters()),
        "command": _this_command(),
        "what": {
            "detector": "frozen detector, full Detectron2 inference per image (batch 1, 128 px)",
            "first_stage": "candidate extraction per image (backbone, RPN, box head, "
            "predictor; no post-processing), what Ref-NMS runs instead",
            "relatedness": "e_q + relatedness module (Eqs. 1-2) for one expression over its "
            "image's cached candidates, one call per expression",
            "relatedness_image": "the same with all of an image's expressions in one call, "
            "per expression",
            "selection": "fusion r*c + per-class NMS 0.3 + threshold selection, per expression",
            "baseline_selection": "NMS on c + c >= 0.65, per image",
        },
    }
    _save("cost", None, row)
    for k, v in ms.items():
        print(f"{k:20s} {v:8.3f} ms")
    print(
        f"relatedness per expression / detector per image = "
        f"{row['relatedness_per_expr_over_detector_per_image']:.3f}; "
        f"x {row['expressions_per_image']:.2f} expressions per image = "
        f"{row['relatedness_per_image_over_detector_per_image']:.3f}"
    )


def cmd_diagnose(args) -> None:
    """Mean relatedness r of each expression's referent (its best-scoring candidate with IoU > 0.5)
    and of its pseudo context, split by whether the expression's nouns name the referent's
    category (:func:`ref_nms.matching_categories`, γ): where a BCE-trained module ranks an
    unnamed referent below named distractors, a tight selection drops it."""
    from detectron2.data import MetadataCatalog

    from ref_nms.expressions import word_vectors_from_cfg
    from ref_nms.losses import box_iou

    chosen = _chosen()
    out = {}
    for variant in args.variants:
        weights = os.path.join(_run_dir(variant, args.seed), "model_final.pth")
        cfg = _ref_cfg(
            variant.split("_")[0], os.path.join(REPO, chosen["weights"]),
            os.path.join(RUNS_DIR, "diagnose"), ["MODEL.WEIGHTS", _rel(weights)],
        )  # fmt: skip
        wv, classes = word_vectors_from_cfg(cfg), MetadataCatalog.get(VAL).thing_classes
        model = RefNMSTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        model.eval()
        r_of = {"named": [], "unnamed": [], "context": []}
        for item in build_test_items(cfg, VAL):
            item = TestImageMapper()(item)
            cand, rel = item["candidates"], model.inference([item])[0]["relatedness"]

            def best(box, cand=cand):
                iou = box_iou(torch.tensor([box], dtype=torch.float32), cand["boxes"])[0]
                score = torch.where(iou > 0.5, cand["scores"], torch.zeros_like(cand["scores"]))
                return int(score.argmax()) if bool((iou > 0.5).any()) else None

            for e, expr in enumerate(item["expressions"]):
                named = classes[expr["category_id"]] in ref_nms.matching_categories(
                    expr["nouns"], classes, wv, cfg.MODEL.REF_NMS.GAMMA
                )
                j = best(expr["referent_box"])
                if j is not None:
                    r_of["named" if named else "unnamed"].append(float(rel[e, j]))
                for box in expr["pseudo_context_boxes"]:
                    j = best(box)
                    if j is not None:
                        r_of["context"].append(float(rel[e, j]))
        out[variant] = {
            f"{k}_mean_r": float(np.mean(v)) if v else math.nan for k, v in r_of.items()
        } | {f"{k}_count": len(v) for k, v in r_of.items()}
        print(variant, out[variant])
    _save("diagnose", None, {"seed": args.seed, "dataset": VAL, "variants": out,
                             "command": _this_command()})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Table 2: a second-stage listener fed each proposal set
# ---------------------------------------------------------------------------------------------
#: Table 2's REC rows the synthetic ones stand beside: RefCOCO val/testA/testB top-1 accuracy
#: (%) of MAttNet as re-implemented by the authors (†), with the baseline's and Ref-NMS's
#: proposals. The paper reports no ground-truth-box row.
PAPER_TABLE2 = {
    "baseline": (76.92, 81.19, 69.58),
    "bce/real": (78.82, 82.71, 73.94),
    "rank/real": (77.98, 82.02, 71.64),
}
GROUNDING_ROWS = (
    ("ground_truth", "ground-truth boxes (upper bound)"),
    ("baseline", "baseline proposals (NMS on c, c ≥ 0.65)"),
    ("bce/real", "+ Ref-NMS B (top-1 + s > 0.1)"),
    ("rank/real", "+ Ref-NMS R (top-1 + s > 0.1)"),
    ("bce/matched", "+ Ref-NMS B, matched budget"),
    ("rank/matched", "+ Ref-NMS R, matched budget"),
    ("bce/baseline_at_budget", "baseline, NMS on c, top-k of B's real lists"),
    ("rank/baseline_at_budget", "baseline, NMS on c, top-k of R's real lists"),
)


def _relatedness(run: dict, images: dict) -> dict:
    """r of every candidate for every expression, per dataset and image, from a trained Ref-NMS
    run (its config and options, ``model_final.pth``), on the run's own first-stage cache (a
    ``box_head`` run reads the pooled maps)."""
    out_dir = os.path.join(RUNS_DIR, "grounding")
    path = os.path.join(REPO, run["opts"][run["opts"].index("OUTPUT_DIR") + 1], "model_final.pth")
    cli = ["--config-file", run["config"], *run["opts"], "MODEL.WEIGHTS", _rel(path),
           "OUTPUT_DIR", _rel(out_dir)]  # fmt: skip
    cfg = train_net.setup(default_argument_parser().parse_args(cli), [ref_nms.add_ref_nms_config])
    model = RefNMSTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(path)
    model.eval()
    mapper, out = TestImageMapper(), {}
    for name, imgs in images.items():
        items = build_test_items(cfg, name)
        if [i["image_id"] for i in items] != [im["image_id"] for im in imgs]:
            raise SystemExit(f"{name}: the run's test images differ from the listener's")
        out[name] = []
        for item, im in zip(items, imgs):
            x = mapper(item)
            if not torch.equal(x["candidates"]["boxes"], im["candidates"]["boxes"]):
                raise SystemExit(f"{name} image {im['image_id']}: the run's candidates differ")
            out[name].append(model.inference([x])[0]["relatedness"])
    return out


def cmd_grounding(args) -> None:
    """Table 2 on the synthetic data: for each seed, train the listener (ref_nms.grounding) on
    the ground-truth regions of synth_referring_train, then its top-1 accuracy on val/testA/testB
    with the ground-truth boxes, the baseline's proposals and the proposals of the Ref-NMS runs
    of the same seed (``train``'s BCE and ranking models; real selection at conf 0.1 and the
    matched budget), plus the baseline's NMS-on-c list cut to each expression's Ref-NMS length."""
    from ref_nms.expressions import word_lookup_from_cfg
    from ref_nms.grounding import (
        build_listener,
        build_listener_images,
        evaluate_listener,
        expression_proposals,
        listener_settings,
        train_listener,
    )

    chosen = _chosen()
    weights = os.path.join(REPO, chosen["weights"])
    runs = _load().get("runs", {})
    missing = [
        f"{v}_s{seed}" for v in args.variants for seed in args.seeds
        if f"{v}/s{seed}" not in runs
        or not os.path.isfile(os.path.join(_run_dir(v, seed), "model_final.pth"))
    ]  # fmt: skip
    if missing:
        losses = sorted({v.split("_")[0] for v in args.variants})
        tags = sorted({v.partition("_")[2] for v in args.variants} - {""})
        raise SystemExit(
            f"missing Ref-NMS runs {missing} (model_final.pth under {_rel(RUNS_DIR)}/ and their "
            f"entries in {_rel(OUT_JSON)}): produce them with `python benchmarks/ref_nms_synth.py "
            f"train --losses {' '.join(losses)} --seeds {' '.join(map(str, args.seeds))}"
            + (f" --tag {tags[0]}" if tags else "")
            + "`"
        )
    out_dir = os.path.join(RUNS_DIR, "grounding")
    cfg = _ref_cfg("bce", weights, out_dir, args.opts)
    c, s = cfg.MODEL.REF_NMS, listener_settings(cfg)
    lookup = word_lookup_from_cfg(cfg)
    start = time.perf_counter()
    train = [
        im for name in (s["train_datasets"] or cfg.DATASETS.TRAIN)
        for im in build_listener_images(cfg, name, with_candidates=False)
    ]  # fmt: skip
    tests = {name: build_listener_images(cfg, name) for name in TESTS}
    data_s = time.perf_counter() - start
    rule = dict(nms_thresh=c.NMS_THRESH, keep_top1=c.KEEP_TOP1,
                baseline_score_thresh=c.BASELINE_SCORE_THRESH,
                baseline_step=c.BASELINE_THRESH_STEP)  # fmt: skip
    baseline = {name: [expression_proposals(im["candidates"], **rule) for im in imgs]
                for name, imgs in tests.items()}  # fmt: skip
    ones = {name: [torch.ones_like(im["candidates"]["scores"]) for im in imgs]
            for name, imgs in tests.items()}  # fmt: skip
    nms_on_c = {
        name: [expression_proposals(im["candidates"], ones[name][i], selection_thresh=None,
                                    **rule) for i, im in enumerate(imgs)]
        for name, imgs in tests.items()
    }  # fmt: skip
    for seed in args.seeds:
        t0 = time.perf_counter()
        sets = {name: {"ground_truth": None,
                       "baseline": (lambda i, e, n=name: baseline[n][i])}
                for name in TESTS}  # fmt: skip
        confs = {}
        for variant in args.variants:
            rel = _relatedness(runs[f"{variant}/s{seed}"], tests)
            for name, imgs in tests.items():
                res = runs[f"{variant}/s{seed}"]["results"][name]["ref_nms"]
                matched = float(res["matched/conf"])
                confs[f"{variant}/{name}"] = matched
                lists = {
                    setting: [
                        [expression_proposals(im["candidates"], rel[name][i][e],
                                              selection_thresh=conf, **rule)
                         for e in range(len(im["expressions"]))]
                        for i, im in enumerate(imgs)
                    ]
                    for setting, conf in (("real", c.SELECTION_THRESH), ("matched", matched))
                }  # fmt: skip
                lists["baseline_at_budget"] = [
                    [nms_on_c[name][i][: len(keep)] for keep in per_expr]
                    for i, per_expr in enumerate(lists["real"])
                ]
                for setting, per_image in lists.items():
                    sets[name][f"{variant}/{setting}"] = lambda i, e, p=per_image: p[i][e]
        ref_s = time.perf_counter() - t0
        torch.manual_seed(seed)
        listener = build_listener(cfg, lookup)
        t0 = time.perf_counter()
        history = train_listener(
            listener, train, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["base_lr"],
            weight_decay=s["weight_decay"], seed=seed,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        results = {
            name: {key: evaluate_listener(listener, tests[name], fn, s["hit_iou"])
                   for key, fn in sets[name].items()}
            for name in TESTS
        }  # fmt: skip
        for name in TESTS:
            row = " ".join(f"{k} {v['accuracy']:.1f}" for k, v in results[name].items())
            print(f"seed {seed} {name}: {row}", flush=True)
        _save(
            "grounding",
            f"s{seed}",
            {
                "seed": seed,
                "results": results,
                "variants": list(args.variants),
                "matched_conf": confs,
                "selection_thresh": c.SELECTION_THRESH,
                "listener": {k: v for k, v in s.items()},
                "opts": list(args.opts),
                "train_loss_per_epoch": history,
                "train_expressions": sum(len(im["expressions"]) for im in train),
                "listener_params": sum(p.numel() for p in listener.parameters()),
                "train_s": train_s,
                "ref_nms_proposals_s": ref_s,
                "data_s": data_s,
                "detector_iteration": chosen["iteration"],
                "ref_nms_runs": {v: _rel(_run_dir(v, seed)) for v in args.variants},
                "command": _this_command(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            },
        )


def _print_grounding(table, markdown: bool) -> None:
    runs = sorted(table.get("grounding", {}).values(), key=lambda r: r["seed"])
    if not runs:
        return
    seeds = [r["seed"] for r in runs]
    print(f"\nTable 2 on the synthetic data: top-1 accuracy (%) of the built-in listener "
          f"(ref_nms.grounding), mean ± std over seeds {seeds}; [proposals / expression, "
          "referent recall of the list]; paper: RefCOCO, MAttNet† and + Ref-NMS")  # fmt: skip
    heads = [d.split("_")[-1] for d in TESTS] + ["paper val", "testA", "testB"]
    if markdown:
        print("| | " + " | ".join(heads) + " |")
        print("|---" * (len(heads) + 1) + "|")
    else:
        print(f"{'':46s}" + "".join(f"{h:>29s}" for h in heads[:3]) + "".join(
            f"{h:>10s}" for h in heads[3:]))  # fmt: skip
    vals = {}
    for key, label in GROUNDING_ROWS:
        cells, any_run = [], False
        for d in TESTS:
            rows = [r["results"][d][key] for r in runs if key in r["results"].get(d, {})]
            any_run |= bool(rows)
            vals[(key, d)] = [x["accuracy"] for x in rows]
            if not rows:
                cells.append("–")
                continue
            prop = np.mean([x["proposals"] for x in rows])
            rec = np.mean([x["referent_recall"] for x in rows])
            cells.append(f"{_cell(vals[(key, d)])} [{prop:.2f}, {rec:.1f}]")
        if not any_run:
            continue
        paper = [f"{v:.2f}" for v in PAPER_TABLE2[key]] if key in PAPER_TABLE2 else ["–"] * 3
        if markdown:
            print(f"| {label} | " + " | ".join(cells + paper) + " |")
        else:
            print(f"{label[:46]:46s}" + "".join(f"{x:>29s}" for x in cells)
                  + "".join(f"{x:>10s}" for x in paper))  # fmt: skip
    print("\n  Δ accuracy (a gain only if |Δ| > the seed spread, max − min over seeds):")
    pairs = [(f"{v}/{st}", ref) for v in ("bce", "rank") for st in ("real", "matched")
             for ref in ("baseline",)]  # fmt: skip
    pairs += [(f"{v}/real", f"{v}/baseline_at_budget") for v in ("bce", "rank")]
    pairs += [("rank/real", "bce/real"), ("rank/matched", "bce/matched")]
    for a, ref in pairs:
        if not vals.get((a, TESTS[0])) or not vals.get((ref, TESTS[0])):
            continue
        cells = [f"{d.split('_')[-1]} " + _verdict(vals[(ref, d)], vals[(a, d)]) for d in TESTS]
        print(f"  {a} − {ref}: " + "; ".join(cells))
    r0 = runs[0]
    print(f"  listener: {r0['listener_params']} parameters, {r0['train_expressions']} training "
          f"expressions, {r0['listener']['epochs']} epochs, trained in "
          + "/".join(f"{r['train_s']:.0f}" for r in runs) + " s")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _mean_std(values) -> tuple[float, float, float]:
    """Mean, std (population, as the other benchmarks) and range (max - min)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan, math.nan
    return float(np.mean(v)), float(np.std(v)), float(max(v) - min(v))


def _label(variant: str) -> str:
    loss, _, tag = variant.partition("_")
    return LABELS[loss] + (f" [{tag}]" if tag else "")


def _runs_by_variant(table) -> dict:
    """``{variant: [run rows by seed]}``, the quick-config runs (``bce``, ``rank``) first."""
    groups = {}
    for row in table.get("runs", {}).values():
        groups.setdefault(row.get("variant", row["loss"]), []).append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: r["seed"])
    return dict(sorted(groups.items(), key=lambda kv: ("_" in kv[0], kv[0])))


def _curve(res: dict, metric: str, prefix: str = "real@") -> tuple[np.ndarray, np.ndarray]:
    """(proposals, metric) points of a threshold sweep, by increasing proposals."""
    pts = sorted(
        (v, res[k.replace("/proposals", f"/{metric}")])
        for k, v in res.items()
        if k.startswith(prefix) and k.endswith("/proposals")
    )
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _interp(res: dict, budget: float, metric: str, prefix: str = "real@") -> float:
    """``metric`` of a sweep linearly interpolated at ``budget`` proposals per expression."""
    xs, ys = _curve(res, metric, prefix)
    return float(np.interp(budget, xs, ys)) if xs.size else math.nan


def _baseline_curve(table, dataset) -> dict:
    """The chosen detector's score-threshold sweep as ``real@<t>/<metric>`` keys."""
    sweep = table.get("chosen", {}).get("evals", {}).get(dataset, {}).get("score_sweep", {})
    return {f"real@{t}/{m}": v for t, row in sweep.items() for m, v in row.items()}


def _rows_of(table, dataset):
    """Table 1 rows: (label, key, {metric: [values over runs]})."""
    groups = _runs_by_variant(table)
    runs = [r for rows in groups.values() for r in rows if dataset in r["results"]]
    if not runs:
        return []
    base = runs[0]["results"][dataset]["baseline"]
    out = [
        ("baseline, N=100", "baseline:top100",
         {m: [r["results"][dataset]["baseline"].get(f"top100/{m}") for r in runs]
          for m in METRICS}),
        ("baseline, real (NMS on c, c ≥ 0.65)", "baseline:real",
         {m: [r["results"][dataset]["baseline"].get(f"real/{m}") for r in runs] for m in METRICS}),
    ]  # fmt: skip
    curve = _baseline_curve(table, dataset)
    for variant, rows in groups.items():
        rows = [r for r in rows if dataset in r["results"]]
        res = [r["results"][dataset]["ref_nms"] for r in rows]
        label = _label(variant)
        for setting, name in (("top100", "N=100"), ("real", "real (top-1 + s > 0.1)")):
            vals = {m: [x.get(f"{setting}/{m}") for x in res] for m in METRICS}
            out.append((f"{label}, {name}", f"{variant}:{setting}", vals))
        confs = "/".join(f"{x['matched/conf']:g}" for x in res)
        vals = {m: [x.get(f"matched/{m}") for x in res] for m in METRICS}
        out.append((f"{label}, matched (conf {confs})", f"{variant}:matched", vals))
        budget = base["real/proposals"]
        vals = {m: [_interp(x, budget, m) for x in res] for m in METRICS}
        out.append((f"{label}, at the baseline's budget (interp.)", f"{variant}:interp", vals))
        if curve:
            vals = {m: [_interp(curve, x["real/proposals"], m) for x in res] for m in METRICS}
            out.append(
                (f"baseline at {label}'s real budget (interp.)", f"{variant}:base_at_real", vals)
            )
    return out


def _cell(values, digits=2) -> str:
    mean, std, _ = _mean_std(values)
    if math.isnan(mean):
        return "–"
    if std < 10 ** (-digits) / 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _verdict(a_vals, b_vals) -> str:
    """b − a with the rule: a gain (loss) only when |Δ mean| exceeds the seed spread (the larger
    max − min range over seeds of the two)."""
    ma, _, ra = _mean_std(a_vals)
    mb, _, rb = _mean_std(b_vals)
    if math.isnan(ma) or math.isnan(mb):
        return "–"
    d, spread = mb - ma, max(ra, rb)
    return f"{d:+.2f} (spread {spread:.2f}): {difference_verdict(d, spread)}"


def _print_tables(table, markdown: bool) -> None:
    groups = _runs_by_variant(table)
    if not groups:
        print("no Ref-NMS run yet")
        return
    heads = ("referent", "context (pseudo)", "context (true)", "proposals / expr")
    recall = ("referent", "context", "context_true")
    for dataset in TESTS:
        rows = _rows_of(table, dataset)
        if not rows:
            continue
        n = {k: len(v) for k, v in groups.items()}
        print(f"\nTable 1 on {dataset} (synthetic data), mean ± std over seeds {n}")
        if markdown:
            print("| | " + " | ".join(heads) + " |")
            print("|---" * (len(heads) + 1) + "|")
        else:
            print(f"{'':58s}" + "".join(f"{h:>18s}" for h in heads))
        for label, _, vals in rows:
            cells = [_cell(vals[m]) for m in METRICS]
            if markdown:
                print(f"| {label} | " + " | ".join(cells) + " |")
            else:
                print(f"{label[:58]:58s}" + "".join(f"{c:>18s}" for c in cells))
        by_key = {key: vals for _, key, vals in rows}
        print("\n  Δ (a gain only if |Δ| > the seed spread, max − min over seeds):")
        for variant in groups:
            if f"{variant}:real" not in by_key:
                continue
            pairs = (
                ("matched", "baseline:real"), ("interp", "baseline:real"),
                ("real", f"{variant}:base_at_real"), ("real", "baseline:real"),
                ("top100", "baseline:top100"),
            )  # fmt: skip
            for setting, ref in pairs:
                if ref not in by_key:
                    continue
                cells = [
                    f"{m} " + _verdict(by_key[ref][m], by_key[f"{variant}:{setting}"][m])
                    for m in recall
                ]
                ref_name = ref.replace(f"{variant}:", "").replace("baseline:", "baseline ")
                print(f"  {variant} {setting} − {ref_name}: " + "; ".join(cells))
        for variant in groups:
            if not variant.startswith("bce"):
                continue
            other = "rank" + variant[3:]
            if f"{other}:matched" not in by_key:
                continue
            for setting in ("matched", "interp", "real"):
                cells = [
                    f"{m} "
                    + _verdict(by_key[f"{variant}:{setting}"][m], by_key[f"{other}:{setting}"][m])
                    for m in (*recall, "proposals")
                ]
                print(f"  {other} − {variant}, {setting}: " + "; ".join(cells))
    print("\nEvery run (referent recall: real (proposals), matched (proposals, conf), N=100)")
    for variant, rows in groups.items():
        for r in rows:
            cells = []
            for d in TESTS:
                if d not in r["results"]:
                    continue
                res = r["results"][d]["ref_nms"]
                cells.append(
                    f"{d.split('_')[-1]}: real {res['real/referent']:.2f} "
                    f"({res['real/proposals']:.2f}), matched {res['matched/referent']:.2f} "
                    f"({res['matched/proposals']:.2f}, {res['matched/conf']:g}), "
                    f"N=100 {res['top100/referent']:.2f}"
                )
            print(f"  {variant} s{r['seed']} ({r['wall_s']:.0f} s): " + "; ".join(cells))
    if markdown:
        print("\n| run | dataset | " + " | ".join(
            f"{s} {m}" for s in ("real", "matched") for m in ("ref", "ctx", "ctx true", "prop")
        ) + " | matched conf |")  # fmt: skip
        print("|---" * 11 + "|")
        for variant, rows in groups.items():
            for r in rows:
                for d in TESTS:
                    if d not in r["results"]:
                        continue
                    res = r["results"][d]["ref_nms"]
                    cells = [f"{res[f'{s}/{m}']:.2f}" for s in ("real", "matched") for m in METRICS]
                    print(
                        f"| {variant} s{r['seed']} | {d.split('_')[-1]} | " + " | ".join(cells)
                        + f" | {res['matched/conf']:g} |"
                    )  # fmt: skip


def _plot(table) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _runs_by_variant(table)
    chosen = table.get("chosen", {})
    curve = chosen.get("evals", {}).get(VAL, {}).get("score_sweep", {})
    if not groups and not curve:
        return
    panels = (("referent", "referent recall (%)"), ("context", "context recall, pseudo (%)"),
              ("context_true", "context recall, true (%)"))  # fmt: skip
    base_real = chosen.get("evals", {}).get(VAL, {}).get("baseline", {}).get("real/proposals", 6)
    xmax = max(10.0, 1.8 * base_real)
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.9))
    for ax, (metric, ylabel) in zip(axes, panels):
        if curve:
            pts = sorted((v["proposals"], v.get(metric, math.nan)) for v in curve.values())
            ax.plot(*zip(*pts), "k.-", lw=1, ms=4, label="baseline, score threshold sweep")
            b = chosen["evals"][VAL]["baseline"]
            ax.plot(b["real/proposals"], b.get(f"real/{metric}"), "k*", ms=10,
                    label="baseline real (c ≥ 0.65)")  # fmt: skip
        for variant, rows in groups.items():
            loss, _, tag = variant.partition("_")
            colour = {"bce": "tab:blue", "rank": "tab:orange"}[loss]
            xs, ys, es = [], [], []
            for t in SWEEP:
                key = f"real@{t:g}"
                x = [r["results"][VAL]["ref_nms"][f"{key}/proposals"] for r in rows]
                y = [r["results"][VAL]["ref_nms"].get(f"{key}/{metric}", math.nan) for r in rows]
                xs.append(np.mean(x))
                ys.append(_mean_std(y)[0])
                es.append(_mean_std(y)[1])
            label = f"{_label(variant)}, conf sweep ({len(rows)} seeds)"
            ax.errorbar(xs, ys, yerr=es, color=colour, marker=".", ms=4, lw=1, capsize=2,
                        ls="--" if tag else "-", alpha=0.6 if tag else 1.0,
                        label=label)  # fmt: skip
        ax.set_xlabel("proposals per expression", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(0, xmax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, loc="lower center", ncol=3)  # below the panels
    it = chosen.get("iteration", "?")
    fig.suptitle(
        f"Ref-NMS on synth_referring_val (synthetic), weak quick detector ({it} it.)", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.03 + 0.045 * ((len(labels) + 2) // 3), 1, 1))
    fig.savefig(OUT_PNG, dpi=90)
    print(f"wrote {_rel(OUT_PNG)}")


def _plot_grounding(table) -> None:
    """Table 2 as grouped bars: accuracy per proposal set and split, mean ± std over seeds, with
    each list's referent recall (the accuracy's ceiling) as a tick."""
    runs = list(table.get("grounding", {}).values())
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, label) for k, label in GROUNDING_ROWS if k in runs[0]["results"][TESTS[0]]]
    fig, ax = plt.subplots(figsize=(9.6, 3.4))
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab10")
    for r, (key, label) in enumerate(rows):
        xs = np.arange(len(TESTS)) + (r - (len(rows) - 1) / 2) * width
        acc = [[run["results"][d][key]["accuracy"] for run in runs] for d in TESTS]
        rec = [np.mean([run["results"][d][key]["referent_recall"] for run in runs]) for d in TESTS]
        ax.bar(xs, [np.mean(a) for a in acc], width, yerr=[np.std(a) for a in acc], capsize=2,
               color=colours(r), label=label)  # fmt: skip
        ax.plot(xs, rec, "k_", ms=8)
    ax.set_xticks(np.arange(len(TESTS)), [d.split("_")[-1] for d in TESTS])
    ax.set_ylabel("top-1 accuracy (%); tick: referent recall", fontsize=8)
    ax.set_ylim(30, 101)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Table 2 on synthetic data: the built-in listener with each proposal set "
                 f"({len(runs)} seeds)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(OUT_PNG_GROUNDING, dpi=90)
    print(f"wrote {_rel(OUT_PNG_GROUNDING)}")


def cmd_report(args) -> None:
    table = _load()
    probe = table.get("probe", {})
    if probe:
        print("Detector checkpoints (one training run), synth_referring_val")
        print(f"{'iter':>6s} {'AP':>6s} {'AP50':>6s} {'base real ref':>14s} {'prop':>6s} "
              f"{'top100 ref':>11s} {'cand/img':>9s}")  # fmt: skip
        for k in sorted(probe, key=lambda k: int(k[2:])):
            r = probe[k]
            b = r["baseline"]
            print(
                f"{r['iteration']:6d} {r['bbox']['AP']:6.1f} {r['bbox']['AP50']:6.1f} "
                f"{b['real/referent']:14.2f} {b['real/proposals']:6.2f} "
                f"{b['top100/referent']:11.2f} {r['candidates_per_image']:9.1f}"
            )
    chosen = table.get("chosen")
    if chosen:
        print(f"\nchosen: {chosen['iteration']} iterations, AP {chosen['bbox']['AP']:.1f}, AP50 "
              f"{chosen['bbox']['AP50']:.1f} ({chosen['rule']})")  # fmt: skip
        for d, ev in chosen["evals"].items():
            b = ev["baseline"]
            print(
                f"  {d}: baseline real referent {b['real/referent']:.2f} "
                f"({b['real/proposals']:.2f} / expr), top100 {b['top100/referent']:.2f}; "
                f"pseudo GT precision {ev['pseudo_gt'].get('precision', math.nan):.1f} recall "
                f"{ev['pseudo_gt'].get('recall', math.nan):.1f}; "
                f"{ev['candidates_per_image']:.0f} candidates / image"
            )
    _print_tables(table, args.markdown)
    _print_grounding(table, args.markdown)
    cost = table.get("cost")
    if cost:
        ms = cost["ms_median"]
        print(f"\nCost (median ms, {cost['threads']} thread, {cost['images']} val images × "
              f"{cost['repeat']} repeats)")  # fmt: skip
        for k, v in ms.items():
            print(f"  {k:20s} {v:8.3f}  {cost['what'][k]}")
        print(
            f"  relatedness per expression / detector per image = "
            f"{cost['relatedness_per_expr_over_detector_per_image']:.3f}; per image "
            f"({cost['expressions_per_image']:.2f} expressions) = "
            f"{cost['relatedness_per_image_over_detector_per_image']:.3f}"
        )
    diag = table.get("diagnose")
    if diag:
        print(f"\nMean r on {diag['dataset']} (seed {diag['seed']}): referent when the sentence "
              "names its category / when it does not; pseudo-context objects")  # fmt: skip
        for variant, row in diag["variants"].items():
            print(
                f"  {variant:10s} named {row['named_mean_r']:.3f} ({row['named_count']}), unnamed "
                f"{row['unnamed_mean_r']:.3f} ({row['unnamed_count']}), context "
                f"{row['context_mean_r']:.3f} ({row['context_count']})"
            )
    _plot(table)
    _plot_grounding(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny trials: output/ref_nms_synth_smoke/, own JSON"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("detector")
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--period", type=int, default=25, help="checkpoint every N iterations")
    p.add_argument("--seed", type=int, default=42, help="the quick config's seed")
    p = sub.add_parser("probe")
    p.add_argument("--iters", nargs="+", type=int, default=None, help="default: every checkpoint")
    p.add_argument("--choose", type=int, default=None, help="iterations of the frozen detector")
    p.add_argument("--redo", action="store_true", help="probe checkpoints already in the JSON")
    p = sub.add_parser("train")
    p.add_argument("--losses", nargs="+", default=["bce", "rank"], choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--max-iter", type=int, default=None, help="default: the config's (300)")
    p.add_argument("--tag", default="", help="a variant's name (runs <loss>_<tag>), e.g. 5ep")
    p.add_argument("--max-train-images", type=int, default=0, help="smoke runs only")
    p.add_argument("--max-test-images", type=int, default=0, help="smoke runs only")
    p.add_argument(
        "--opts", nargs="*", default=[],
        help="more KEY VALUE config overrides (give the variant a --tag), e.g. "
        "MODEL.REF_NMS.REGION_ENCODER.NAME mlp",
    )  # fmt: skip
    p = sub.add_parser("cost")
    p.add_argument("--loss", default="bce", choices=list(CONFIGS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("diagnose")
    p.add_argument("--variants", nargs="+", default=["bce", "rank"])
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("grounding", help="Table 2: the listener with each proposal set")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=["bce", "rank"],
                   help="Ref-NMS runs (<variant>_s<seed>) whose proposals are fed")  # fmt: skip
    p.add_argument(
        "--opts", nargs="*", default=[],
        help="KEY VALUE config overrides, e.g. MODEL.REF_NMS.LISTENER.EPOCHS 20",
    )  # fmt: skip
    p = sub.add_parser("report")
    p.add_argument("--markdown", action="store_true", help="Table 1 as markdown")
    args = parser.parse_args()
    if args.smoke:
        _use_smoke_paths()
    cmds = {"detector": cmd_detector, "probe": cmd_probe, "train": cmd_train, "cost": cmd_cost}
    cmds |= {"diagnose": cmd_diagnose, "grounding": cmd_grounding, "report": cmd_report}
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
