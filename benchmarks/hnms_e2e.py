"""End to end on synth_crowd: HashRPN vs the RPN in Faster R-CNN, and RetinaNet with vs without
the HNMS pre-filter, with the same seed, data and schedule (synthetic data, not the paper's).

    python benchmarks/hnms_e2e.py [--iters 300] [--only rcnn retina] [--reuse]
    python benchmarks/hnms_e2e.py --only rcnn --seeds 42 1 2 --rpn-k 1 2 --reuse
    python benchmarks/hnms_e2e.py --only retina --reuse          # RetinaNet: 1200 iterations
    python benchmarks/hnms_e2e.py --only retina --retina-iters 3000 --retina-k 1 2 4 \
        --retina-alpha 0.73 0.5 0.4 0.3 --repeat 5 --threads 1 --reuse   # README's RetinaNet table
    python benchmarks/hnms_e2e.py --quick          # smoke run: 4 iterations, 8 images
    python benchmarks/hnms_e2e.py --results hnms_zoo_times --only rcnn --seeds 1 --rpn-k 1 2 \
        --threads 1 --no-plots                       # the model zoo's train and inference times

Faster R-CNN: the baseline and the HashRPN model are trained one after the other (same seed and
schedule), each evaluated with its own proposal generator; the baseline weights are also
evaluated with HashRPN swapped in at test time. RetinaNet: one model is trained and evaluated
with detectron2's post-processing and with the HNMS pre-filter (it only changes inference), and
with Soft-NMS alone and after the pre-filter (Appendix C.3; each compared with Soft-NMS alone).
Reported: box AP / AP50 on synth_crowd_val and the time of the suppression stage per image
(RPN: the NMS / HNMS call over all levels; RetinaNet: (HNMS +) NMS or Soft-NMS, and the whole
post-processing), measured during evaluation (median of ``--repeat`` evaluations). Rows made
since the model-zoo columns were added also carry the whole inference per image (the model's
forward at batch 1) and, for weights trained with the row's config, the training time per
iteration (median of the run's metrics.json). Writes benchmarks/results/hnms_e2e.json (or
``--results`` NAME.json; one row per model and seed; with several seeds the table ends with the
mean and standard deviation of each model's AP difference to the baseline of the same seed),
hnms_e2e.png (those differences) and hnms_e2e_retina.png (RetinaNet AP vs post-processing time
for every pre-filter α, K), the plots named after the results file; checkpoints go to
output/hnms_e2e/<run>_s<seed>_it<iters>/.
"""

import argparse
import json
import os
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling.meta_arch import retinanet as d2_retinanet
from detectron2.modeling.proposal_generator import proposal_utils

import hnms
import hnms.retinanet
import hnms.rpn
from d2kit.benchmarking import CallTimer, training_log
from d2kit.engine import Trainer
from d2kit.paths import resolve_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS_DIR = os.path.join(os.path.dirname(HERE), "output", "hnms_e2e")

RCNN_BASE = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_crowd.yaml"
RCNN_HASH = "HNMS/quick_schedules/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml"
RETINA_BASE = "quick_schedules/retinanet_R_18_FPN_quick_synth_crowd.yaml"
RETINA_HASH = "HNMS/quick_schedules/hnms_retinanet_R_18_FPN_quick_synth_crowd.yaml"


class patched:
    """Temporarily replace ``module.name`` with a CallTimer around it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __enter__(self):
        self.orig = getattr(self.module, self.name)
        self.timer = CallTimer(self.orig)
        setattr(self.module, self.name, self.timer)
        return self.timer

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.orig)


def build_cfg(config, run, args, seed, iters, *opts):
    cfg = get_cfg()
    hnms.add_hnms_config(cfg)
    cfg.merge_from_file(resolve_config_file(config))
    base_iters = cfg.SOLVER.MAX_ITER
    scale = iters / base_iters
    cfg.SOLVER.MAX_ITER = iters
    # the schedule's LR steps at the same fractions of the run (strictly increasing, < iters)
    steps = {min(iters - 1, max(1, int(s * scale))) for s in cfg.SOLVER.STEPS}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < iters))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, iters // 3))
    cfg.SEED = seed
    runs_dir = RUNS_DIR + ("_quick" if args.quick else "")
    cfg.OUTPUT_DIR = os.path.join(runs_dir, f"{run}_s{seed}_it{iters}")
    cfg.DATASETS.TEST = (args.test_set,)
    if args.quick:  # a few iterations score below 0.05: keep every detection for the evaluator
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def train(cfg, args):
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if args.reuse and os.path.isfile(weights):
        return weights
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    t = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    print(f"trained {cfg.OUTPUT_DIR} in {time.perf_counter() - t:.0f} s", flush=True)
    return weights


def train_s_per_iter(cfg):
    """Median training-iteration time of the run in ``cfg.OUTPUT_DIR`` from its metrics.json
    (detectron2 logs the median of the last 20 iterations every 20 iterations; the first log,
    warm-up included, is left out); None without the file."""
    times = [r["time"] for r in training_log(cfg.OUTPUT_DIR) if "time" in r]
    return statistics.median(times[1:] if len(times) > 1 else times) if times else None


def evaluate(cfg, weights, stage, model_name):
    """AP of ``weights`` under ``cfg`` and the mean time per image of each timed stage."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    forward = CallTimer(model.forward)  # the whole inference of one test image (batch 1)
    model.forward = forward
    with torch.no_grad():
        timers = {}
        contexts = [patched(m, n) for m, n in stage]
        for c in contexts:
            timers[c.name] = c.__enter__()
        post = None
        if hasattr(model, "inference_single_image"):
            post = CallTimer(model.inference_single_image)
            model.inference_single_image = post
        try:
            results = Trainer.test(cfg, model)
        finally:
            for c in contexts:
                c.__exit__()
    bbox = results.get("bbox", next(iter(results.values())).get("bbox", {}))
    row = {
        "model": model_name,
        "seed": cfg.SEED,
        "iters": cfg.SOLVER.MAX_ITER,
        "AP": bbox.get("AP"),
        "AP50": bbox.get("AP50"),
        "AP75": bbox.get("AP75"),
    }
    num_images = max(len(post.times) if post else 0, 1)
    for name, timer in timers.items():
        # per image: an RPN makes one call per image, a RetinaNet one per image too
        row[f"{name}_ms_per_call"] = timer.mean_ms()
        row[f"{name}_calls"] = len(timer.times)
    if post is not None:
        row["postprocess_ms_per_image"] = post.mean_ms()
        row["images"] = num_images
    row["inference_ms_per_image"] = forward.mean_ms()
    return row


def results_path(args):
    return os.path.join(RESULTS, f"{args.results}{'_quick' if args.quick else ''}.json")


def save(args, table):
    """Write ``table`` merged into the results file (rows of other runs, e.g. other seeds or a
    concurrent run of the other model, are kept; this run's rows replace theirs)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = results_path(args)
    merged = {}
    if os.path.isfile(path):
        with open(path) as f:
            merged = json.load(f)["table"]
    merged.update(table)
    with open(path, "w") as f:
        json.dump({"args": vars(args), "table": merged, "summary": summarize(merged)}, f, indent=1)
    return merged


def row_key(model_name, seed, iters):
    return f"{model_name} [seed {seed}, {iters} it]"


def record(args, table, cfg, weights, stage, model_name, trained_here=False):
    """Evaluate ``args.repeat`` times (the AP is the same every time); times are the median over
    the repeats (robust to a run disturbed by another process), with every repeat's value in
    ``*_runs`` and their standard deviation in ``*_std`` fields. ``trained_here``: ``weights``
    were trained with ``cfg`` (the row gets that training's ``train_s_per_iter``)."""
    key = row_key(model_name, cfg.SEED, cfg.SOLVER.MAX_ITER)
    if args.reuse and key in table:
        return
    runs = [evaluate(cfg, weights, stage, model_name) for _ in range(max(1, args.repeat))]
    row = dict(runs[0])
    for field in [f for f, v in row.items() if f.endswith("_ms_per_call") or f.endswith("_image")]:
        values = [r[field] for r in runs]
        row[field] = statistics.median(values)
        if len(values) > 1:
            row[field + "_std"] = statistics.stdev(values)
            row[field + "_runs"] = values
    row["repeats"] = len(runs)
    if trained_here:
        row["train_s_per_iter"] = train_s_per_iter(cfg)
    table[key] = row
    save(args, table)


RCNN_BASELINE = "Faster R-CNN, RPN + NMS@0.7 (baseline)"
RETINA_BASELINE = "RetinaNet, NMS@0.5 (baseline)"
RETINA_SOFT_BASELINE = "RetinaNet, Soft-NMS (baseline of App. C.3)"
BASELINES = (RCNN_BASELINE, RETINA_BASELINE, RETINA_SOFT_BASELINE)


def baseline_of(model):
    """The baseline a model's AP is compared with (same detector and suppression)."""
    if model.startswith("Faster"):
        return RCNN_BASELINE
    return RETINA_SOFT_BASELINE if "Soft-NMS" in model else RETINA_BASELINE


def run_rcnn(args, table, seed):
    rpn_nms = [(proposal_utils, "batched_nms")]
    hash_nms = [(hnms.rpn, "batched_hnms")]
    base_cfg = build_cfg(RCNN_BASE, "rcnn_baseline", args, seed, args.iters)
    base_w = train(base_cfg, args)
    record(args, table, base_cfg, base_w, rpn_nms, RCNN_BASELINE, trained_here=True)
    swap_cfg = build_cfg(RCNN_HASH, "rcnn_baseline", args, seed, args.iters)
    record(
        args,
        table,
        swap_cfg,
        base_w,
        hash_nms,
        "Faster R-CNN, baseline weights, HashRPN at test time",
    )
    if not args.train_hash:
        return
    for k in args.rpn_k:
        run = "rcnn_hashrpn" if k == 1 else f"rcnn_hashrpn_k{k}"
        opts = ("MODEL.HNMS.RPN.NUM_HASHES", str(k))
        hash_cfg = build_cfg(RCNN_HASH, run, args, seed, args.iters, *opts)
        hash_w = train(hash_cfg, args)
        name = f"Faster R-CNN, HashRPN α=0.7 K={k} (trained with it)"
        record(args, table, hash_cfg, hash_w, hash_nms, name, trained_here=True)


def run_retina(args, table, seed):
    iters = args.retina_iters or args.iters
    base_cfg = build_cfg(RETINA_BASE, "retina_baseline", args, seed, iters)
    w = train(base_cfg, args)
    stage = [(d2_retinanet, "batched_nms")]
    record(args, table, base_cfg, w, stage, RETINA_BASELINE, trained_here=True)
    prefilters = [(a, k) for a in args.retina_alpha for k in args.retina_k]
    for a, k in prefilters:
        opts = ("MODEL.HNMS.PREFILTER.NUM_HASHES", str(k), "MODEL.HNMS.PREFILTER.ALPHA", str(a))
        cfg = build_cfg(RETINA_HASH, "retina_baseline", args, seed, iters, *opts)
        name = f"RetinaNet, HNMS α={a} K={k} + NMS@0.5"
        record(args, table, cfg, w, [(hnms.retinanet, "nms_with_hash_prefilter")], name)
    if not args.soft_nms:
        return
    # Appendix C.3: Soft-NMS (MODEL.HNMS.SOFT_NMS defaults) alone and after the pre-filter
    soft = ("MODEL.HNMS.PREFILTER.SUPPRESSION", "soft_nms")
    off = ("MODEL.HNMS.PREFILTER.ENABLED", "False")
    cfg = build_cfg(RETINA_HASH, "retina_baseline", args, seed, iters, *soft, *off)
    stage = [(hnms.retinanet, "batched_soft_nms")]
    record(args, table, cfg, w, stage, RETINA_SOFT_BASELINE)
    for a, k in prefilters:
        opts = ("MODEL.HNMS.PREFILTER.NUM_HASHES", str(k), "MODEL.HNMS.PREFILTER.ALPHA", str(a))
        cfg = build_cfg(RETINA_HASH, "retina_baseline", args, seed, iters, *soft, *opts)
        name = f"RetinaNet, HNMS α={a} K={k} + Soft-NMS"
        record(args, table, cfg, w, [(hnms.retinanet, "soft_nms_with_hash_prefilter")], name)


def summarize(table):
    """Per model and schedule: AP over seeds, and the AP difference to the same seed's baseline."""
    groups = {}
    for row in table.values():
        groups.setdefault((row["model"], row["iters"]), {})[row["seed"]] = row["AP"]
    out = []
    for (model, iters), by_seed in groups.items():
        base = groups.get((baseline_of(model), iters), {})
        diffs = [ap - base[s] for s, ap in by_seed.items() if s in base]
        aps = list(by_seed.values())
        out.append(
            {
                "model": model,
                "iters": iters,
                "seeds": sorted(by_seed),
                "AP_mean": statistics.mean(aps),
                "AP_std": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                "dAP_mean": statistics.mean(diffs) if diffs else float("nan"),
                "dAP_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            }
        )
    return out


def plot(table, path):
    """AP difference to the same seed's baseline, one dot per seed, for every model and schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summarize(table) if r["model"] not in BASELINES]
    if not rows:
        return
    baselines = {
        (r["model"], r["iters"], r["seed"]): r["AP"]
        for r in table.values()
        if r["model"] in BASELINES
    }
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    for y, r in enumerate(rows):
        baseline = baseline_of(r["model"])
        diffs = [
            t["AP"] - baselines[(baseline, t["iters"], t["seed"])]
            for t in table.values()
            if t["model"] == r["model"]
            and t["iters"] == r["iters"]
            and (baseline, t["iters"], t["seed"]) in baselines
        ]
        ax.scatter(diffs, [y] * len(diffs), color="tab:blue", alpha=0.7)
        ax.scatter([r["dAP_mean"]], [y], color="black", marker="|", s=300)
    ax.axvline(0.0, color="gray", lw=1)
    ax.axvspan(-0.5, 0.5, color="tab:green", alpha=0.1)
    labels = [f"{r['model']} ({r['iters']} it, {len(r['seeds'])} seeds)" for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("AP minus the same seed's baseline AP (dots: seeds, bar: mean)")
    ax.set_title("HNMS end to end on synth_crowd_val")
    fig.tight_layout()
    fig.savefig(path, dpi=70)  # one row per model: keep the file small
    print(f"wrote {path}")


def plot_retina_tradeoff(table, path):
    """AP vs post-processing time of the RetinaNet rows of the schedule with the most of them,
    NMS and Soft-NMS, labelled with the pre-filter's α and K (as the paper's Figs. 6 and 9)."""
    import re
    from collections import Counter

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.values() if r["model"].startswith("RetinaNet")]
    if not rows:
        return
    (seed, iters), _ = Counter((r["seed"], r["iters"]) for r in rows).most_common(1)[0]
    rows = [r for r in rows if (r["seed"], r["iters"]) == (seed, iters)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for suppression, color in (("NMS@0.5", "tab:blue"), ("Soft-NMS", "tab:orange")):
        for r in [r for r in rows if suppression in r["model"]]:
            x, y = r["postprocess_ms_per_image"], r["AP"]
            found = re.search(r"α=([0-9.]+) K=(\d+)", r["model"])
            label = f"α={found.group(1)} K={found.group(2)}" if found else "alone"
            ax.scatter([x], [y], color=color, marker="o" if found else "*", s=40 if found else 160)
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.scatter([], [], color=color, label=f"HNMS + {suppression} (star: {suppression} alone)")
    ax.set_xlabel("post-processing ms per image (CPU, one thread)")
    ax.set_ylabel("box AP on synth_crowd_val")
    ax.set_title(f"RetinaNet R-18-FPN on synth_crowd ({iters} it, seed {seed}): HNMS pre-filter")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="training iterations")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 iterations, 8 test images, no HashRPN training, K=1 only",
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[42])
    parser.add_argument(
        "--rpn-k", type=int, nargs="*", default=[1], help="K of the HashRPN models trained"
    )
    parser.add_argument(
        "--retina-iters",
        type=int,
        default=1200,
        help="RetinaNet training iterations (0: --iters); 300 leave it barely trained (AP 3.5)",
    )
    parser.add_argument("--only", nargs="*", default=["rcnn", "retina"], help="rcnn retina")
    parser.add_argument("--retina-k", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--retina-alpha",
        type=float,
        nargs="*",
        default=[0.73],
        help="α of the RetinaNet pre-filter (§4.3: 0.73; smaller α: coarser cells, Fig. 4)",
    )
    parser.add_argument(
        "--no-soft-nms",
        dest="soft_nms",
        action="store_false",
        help="skip the RetinaNet Soft-NMS rows (Soft-NMS alone and after the pre-filter, App. C.3)",
    )
    parser.add_argument("--test-set", default="synth_crowd_val")
    parser.add_argument(
        "--results",
        default="hnms_e2e",
        help="results file name in benchmarks/results (without .json; the plots take its name)",
    )
    parser.add_argument(
        "--no-plots", dest="plots", action="store_false", help="tables only, no plot files"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse existing model_final.pth files and the rows of the existing results file",
    )
    parser.add_argument(
        "--no-train-hash",
        dest="train_hash",
        action="store_false",
        help="skip training a Faster R-CNN with HashRPN (only swap it in at test time)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="evaluations per model; times are their median (std and every run in the results)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="no training or evaluation: print the results file's tables and redraw its plots",
    )
    args = parser.parse_args()
    if args.report:
        with open(results_path(args)) as f:
            table = json.load(f)["table"]
        report(table, results_path(args), args.plots)
        return
    if args.quick:
        args.iters, args.retina_iters, args.test_set = 4, 4, "synth_crowd_val_mini"
        args.train_hash, args.retina_k = False, [1]
    if args.threads:
        torch.set_num_threads(args.threads)
    table = {}
    if args.reuse and os.path.isfile(results_path(args)):  # skip rows already measured
        with open(results_path(args)) as f:
            table = json.load(f)["table"]
    for seed in args.seeds:
        if "rcnn" in args.only:
            run_rcnn(args, table, seed)
        if "retina" in args.only:
            run_retina(args, table, seed)
    table = save(args, table)
    report(table, results_path(args), args.plots)


def report(table, path, plots=True):
    """The plots next to the results file ``path`` and the tables, from the rows in ``table``."""
    if plots:
        plot(table, path[: -len(".json")] + ".png")
        plot_retina_tradeoff(table, path[: -len(".json")] + "_retina.png")
    print(
        "\n| model | AP | AP50 | suppression ms/image | post-processing ms/image "
        "| inference ms/image | train s/iter |"
    )
    print("|---|---|---|---|---|---|---|")

    def ms(row, field):
        if field not in row:  # e.g. no RetinaNet post-processing in a Faster R-CNN row
            return "–"
        std = row.get(field + "_std")
        return f"{row.get(field, float('nan')):.2f}" + (f" ± {std:.2f}" if std is not None else "")

    for name, row in table.items():
        stage = next(k for k in row if k.endswith("_ms_per_call"))
        post, whole = ms(row, "postprocess_ms_per_image"), ms(row, "inference_ms_per_image")
        train_s = row.get("train_s_per_iter")
        train_s = "–" if train_s is None else f"{train_s:.3f}"
        print(
            f"| {name} | {row['AP']:.2f} | {row['AP50']:.2f} | {ms(row, stage)} | {post} "
            f"| {whole} | {train_s} |"
        )
    print("\n| model | iters | seeds | AP mean ± std | AP - baseline (same seed), mean ± std |")
    print("|---|---|---|---|---|")
    for r in summarize(table):
        print(
            f"| {r['model']} | {r['iters']} | {len(r['seeds'])} | {r['AP_mean']:.2f} ± "
            f"{r['AP_std']:.2f} | {r['dAP_mean']:+.2f} ± {r['dAP_std']:.2f} |"
        )


if __name__ == "__main__":
    main()
