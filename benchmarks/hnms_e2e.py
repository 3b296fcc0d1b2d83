"""End to end on synth_crowd: HashRPN vs the RPN in Faster R-CNN, and RetinaNet with vs without
the HNMS pre-filter, with the same seed, data and schedule (synthetic data, not the paper's).

    python benchmarks/hnms_e2e.py [--iters 300] [--only rcnn retina] [--reuse]
    python benchmarks/hnms_e2e.py --quick          # smoke run: 4 iterations, 8 images

Faster R-CNN: the baseline and the HashRPN model are trained one after the other (same seed and
schedule), each evaluated with its own proposal generator; the baseline weights are also
evaluated with HashRPN swapped in at test time. RetinaNet: one model is trained and evaluated
with detectron2's post-processing and with the HNMS pre-filter (it only changes inference).
Reported: box AP / AP50 on synth_crowd_val and the time of the suppression stage per image
(RPN: the NMS / HNMS call over all levels; RetinaNet: NMS vs HNMS + NMS, and the whole
post-processing), measured during evaluation, single thread. Writes
benchmarks/results/hnms_e2e.json; checkpoints go to output/hnms_e2e/<run>/.
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
from d2kit.engine import Trainer
from d2kit.paths import resolve_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RUNS_DIR = os.path.join(os.path.dirname(HERE), "output", "hnms_e2e")

RCNN_BASE = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_crowd.yaml"
RCNN_HASH = "HNMS/quick_schedules/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml"
RETINA_BASE = "quick_schedules/retinanet_R_18_FPN_quick_synth_crowd.yaml"
RETINA_HASH = "HNMS/quick_schedules/hnms_retinanet_R_18_FPN_quick_synth_crowd.yaml"


class Timer:
    """Wraps a function and records the wall time of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.times = []

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.times.append(time.perf_counter() - t)
        return out

    def ms(self):
        """Mean milliseconds per call, without the first call (one-time warm-up costs)."""
        times = self.times[1:] if len(self.times) > 1 else self.times
        return 1e3 * statistics.mean(times) if times else float("nan")


class patched:
    """Temporarily replace ``module.name`` with a Timer around it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __enter__(self):
        self.orig = getattr(self.module, self.name)
        self.timer = Timer(self.orig)
        setattr(self.module, self.name, self.timer)
        return self.timer

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.orig)


def build_cfg(config, run, args, *opts):
    cfg = get_cfg()
    hnms.add_hnms_config(cfg)
    cfg.merge_from_file(resolve_config_file(config))
    base_iters = cfg.SOLVER.MAX_ITER
    scale = args.iters / base_iters
    cfg.SOLVER.MAX_ITER = args.iters
    # the schedule's LR steps at the same fractions of the run (strictly increasing, < iters)
    steps = {min(args.iters - 1, max(1, int(s * scale))) for s in cfg.SOLVER.STEPS}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < args.iters))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, args.iters // 3))
    cfg.SEED = args.seed
    cfg.OUTPUT_DIR = os.path.join(RUNS_DIR + ("_quick" if args.quick else ""), run)
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


def evaluate(cfg, weights, stage):
    """AP of ``weights`` under ``cfg`` and the mean time per image of each timed stage."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    with torch.no_grad():
        timers = {}
        contexts = [patched(m, n) for m, n in stage]
        for c in contexts:
            timers[c.name] = c.__enter__()
        post = None
        if hasattr(model, "inference_single_image"):
            post = Timer(model.inference_single_image)
            model.inference_single_image = post
        try:
            results = Trainer.test(cfg, model)
        finally:
            for c in contexts:
                c.__exit__()
    bbox = results.get("bbox", next(iter(results.values())).get("bbox", {}))
    row = {"AP": bbox.get("AP"), "AP50": bbox.get("AP50"), "AP75": bbox.get("AP75")}
    num_images = max(len(post.times) if post else 0, 1)
    for name, timer in timers.items():
        # per image: an RPN makes one call per image, a RetinaNet one per image too
        row[f"{name}_ms_per_call"] = timer.ms()
        row[f"{name}_calls"] = len(timer.times)
    if post is not None:
        row["postprocess_ms_per_image"] = post.ms()
        row["images"] = num_images
    return row


def save(args, table):
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(RESULTS, f"hnms_e2e{suffix}.json"), "w") as f:
        json.dump({"args": vars(args), "table": table}, f, indent=1)


def run_rcnn(args, table):
    rpn_nms = [(proposal_utils, "batched_nms")]
    hash_nms = [(hnms.rpn, "batched_hnms")]
    base_cfg = build_cfg(RCNN_BASE, "rcnn_baseline", args)
    base_w = train(base_cfg, args)
    table["Faster R-CNN, RPN + NMS@0.7 (baseline)"] = evaluate(base_cfg, base_w, rpn_nms)
    save(args, table)
    swap_cfg = build_cfg(RCNN_HASH, "rcnn_baseline", args)
    table["Faster R-CNN, baseline weights, HashRPN at test time"] = evaluate(
        swap_cfg, base_w, hash_nms
    )
    save(args, table)
    if not args.train_hash:
        return
    hash_cfg = build_cfg(RCNN_HASH, "rcnn_hashrpn", args)
    hash_w = train(hash_cfg, args)
    table["Faster R-CNN, HashRPN α=0.7 K=1 (trained with it)"] = evaluate(
        hash_cfg, hash_w, hash_nms
    )
    save(args, table)


def run_retina(args, table):
    base_cfg = build_cfg(RETINA_BASE, "retina_baseline", args)
    w = train(base_cfg, args)
    table["RetinaNet, NMS@0.5 (baseline)"] = evaluate(base_cfg, w, [(d2_retinanet, "batched_nms")])
    save(args, table)
    for k in args.retina_k:
        cfg = build_cfg(
            RETINA_HASH, "retina_baseline", args, "MODEL.HNMS.PREFILTER.NUM_HASHES", str(k)
        )
        table[f"RetinaNet, HNMS α=0.73 K={k} + NMS@0.5"] = evaluate(
            cfg, w, [(hnms.retinanet, "nms_with_hash_prefilter")]
        )
        save(args, table)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="training iterations")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 iterations, 8 test images, no HashRPN training, K=1 only",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", nargs="*", default=["rcnn", "retina"], help="rcnn retina")
    parser.add_argument("--retina-k", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--test-set", default="synth_crowd_val")
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
    args = parser.parse_args()
    if args.quick:
        args.iters, args.test_set = 4, "synth_crowd_val_mini"
        args.train_hash, args.retina_k = False, [1]
    if args.threads:
        torch.set_num_threads(args.threads)
    table = {}
    previous = os.path.join(RESULTS, f"hnms_e2e{'_quick' if args.quick else ''}.json")
    if args.reuse and os.path.isfile(previous):  # keep the rows of runs not repeated now
        with open(previous) as f:
            table = json.load(f)["table"]
    if "rcnn" in args.only:
        run_rcnn(args, table)
    if "retina" in args.only:
        run_retina(args, table)
    print("\n| model | AP | AP50 | suppression ms/image | post-processing ms/image |")
    print("|---|---|---|---|---|")
    for name, row in table.items():
        stage = [v for k, v in row.items() if k.endswith("_ms_per_call")]
        post = row.get("postprocess_ms_per_image", float("nan"))
        print(f"| {name} | {row['AP']:.2f} | {row['AP50']:.2f} | {stage[0]:.2f} | {post:.2f} |")
    save(args, table)


if __name__ == "__main__":
    main()
