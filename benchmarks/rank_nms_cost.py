"""What the Rank-NMS head costs: inference time per image and training iteration time, with and
without it, in the same process on the same inputs (A/B interleaved, median of repeats).

    python benchmarks/rank_nms_cost.py [--settings quick r50] [--repeat 7] [--threads 1]

Settings (random initialisation unless ``--quick-weights``; the work done does not depend on
the weights except for the number of detections that reach NMS):

- ``quick``: the quick R-18-FPN Faster R-CNN (128 px, 300 test RoIs, rank head FC 256) and its
  Rank-NMS leaf;
- ``r50``: the paper's recipe, ``configs/RankNMS/faster_rcnn_R_50_FPN_1x_baseline.yaml`` vs
  ``rank_nms_faster_rcnn_R_50_FPN_1x.yaml`` (R-50-FPN, 800 px, 1000 test RoIs, 512 training
  RoIs, rank head 2 × FC 1024), with :class:`FixedProposals` in place of the RPN (1000 valid
  random boxes per image: a random R-50's RPN gives degenerate boxes) and R(·) scoring every
  RoI (a trained model scores only those above the test score threshold).

Training steps run at learning rate 0 (the same work; the weights stay put). Inputs are the
first images of ``synth_shapes_val_mini`` through Detectron2's mappers (resized to each
config's input size). Besides the wall times (interleaved, median; sensitive to other load on
the machine), it counts the inference multiply-adds with fvcore (machine-independent). Writes
``benchmarks/results/rank_nms_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

import rank_nms
from d2kit.engine import train_net

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_JSON = os.path.join(HERE, "results", "rank_nms_cost.json")
SETTINGS = {
    "quick": (
        "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        "RankNMS/quick_schedules/rank_nms_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    ),
    "r50": (
        "RankNMS/faster_rcnn_R_50_FPN_1x_baseline.yaml",
        "RankNMS/rank_nms_faster_rcnn_R_50_FPN_1x.yaml",
    ),
}


def _cfg(config):
    argv = ["--config-file", config, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", "/tmp/rank_nms_cost"]
    args = default_argument_parser().parse_args(argv)
    cfg = train_net.setup(args, [rank_nms.add_rank_nms_config])
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = 2
    # A step costs the same at any learning rate; at 0 the randomly initialised R-50 cannot
    # diverge over the repeats.
    cfg.SOLVER.BASE_LR = 0.0
    return cfg


class FixedProposals(torch.nn.Module):
    """Stands in for the RPN of a randomly initialised R-50, whose degenerate boxes would leave
    the ROI heads almost nothing to do: ``num`` valid random boxes per image (seeded), as many
    as a trained RPN's ``POST_NMS_TOPK``. The RPN's own cost is left out of both models."""

    def __init__(self, num: int):
        super().__init__()
        self.num = num

    def forward(self, images, features, gt_instances=None):
        out = []
        g = torch.Generator().manual_seed(0)
        for h, w in images.image_sizes:
            xy = torch.rand(self.num, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
            wh = 16 + torch.rand(self.num, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
            inst = Instances((h, w))
            inst.proposal_boxes = Boxes(torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1))
            inst.objectness_logits = torch.zeros(self.num)
            out.append(inst)
        return out, {}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _inference_gflops(model, inputs) -> float:
    """fvcore's count of multiply-adds (as "flops") of one inference per image, averaged: a
    machine-independent measure of what the rank head adds, free of timing noise."""
    model.eval()
    total = 0.0
    for x in inputs:
        counter = FlopCountAnalysis(model, [x])
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total += counter.total() / 1e9
    return total / len(inputs)


def measure(setting: str, repeat: int, num_images: int, weights: dict | None = None) -> dict:
    dicts = DatasetCatalog.get("synth_shapes_val_mini")[:num_images]
    models, test_inputs, train_batches, optimizers = {}, {}, {}, {}
    for name, config in zip(("baseline", "rank_nms"), SETTINGS[setting]):
        cfg = _cfg(config)
        torch.manual_seed(0)
        models[name] = build_model(cfg)
        if setting == "r50":
            models[name].proposal_generator = FixedProposals(cfg.MODEL.RPN.POST_NMS_TOPK_TEST)
            if name == "rank_nms":
                # No RoI of a random model passes the score threshold, so R(·) would be skipped
                # entirely: score every RoI, the upper bound of its cost.
                models[name].roi_heads.box_predictor.rank_only_where_needed = False
        if weights and weights.get(name):
            DetectionCheckpointer(models[name]).load(weights[name])
        optimizers[name] = build_optimizer(cfg, models[name])
        test_mapper, train_mapper = DatasetMapper(cfg, False), DatasetMapper(cfg, True)
        test_inputs[name] = [test_mapper(dict(d)) for d in dicts]
        torch.manual_seed(0)  # the same flips for both
        train_batches[name] = [train_mapper(dict(d)) for d in dicts[:2]]

    def infer(name):
        model = models[name].eval()
        with torch.no_grad():
            for x in test_inputs[name]:
                model([x])

    def train_step(name):
        model = models[name].train()
        with EventStorage():
            losses = model(train_batches[name])
            optimizers[name].zero_grad()
            sum(losses.values()).backward()
            optimizers[name].step()

    times = {f"{k}_{n}": [] for k in ("infer", "train") for n in models}
    for name in models:  # warm-up
        infer(name)
        train_step(name)
    for _ in range(repeat):
        for name in models:  # interleaved: both see the same machine state
            times[f"infer_{name}"].append(_timed(infer, name) / len(dicts))
            times[f"train_{name}"].append(_timed(train_step, name))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {n: _inference_gflops(m, test_inputs[n]) for n, m in models.items()}
    return {
        "inference_gflops_per_image": flops,
        "inference_flops_overhead": flops["rank_nms"] / flops["baseline"] - 1,
        "configs": list(SETTINGS[setting]),
        "images": len(dicts),
        "infer_ms_per_image": {n: 1e3 * med[f"infer_{n}"] for n in models},
        "train_ms_per_iter": {n: 1e3 * med[f"train_{n}"] for n in models},
        "infer_overhead": med["infer_rank_nms"] / med["infer_baseline"] - 1,
        "train_overhead": med["train_rank_nms"] / med["train_baseline"] - 1,
        "runs_s": times,
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    }


def rois_scored(
    counts, num_images: int, quick_weights: str | None, quick_config: str | None = None
) -> dict:
    """What R(·) costs as a function of the number of RoIs it scores.

    At test time R(·) runs only on the RoIs whose class score passes the threshold, so its cost
    is its per-RoI multiply-adds times that number. This counts (fvcore) the rank head of the
    R-50 recipe on ``counts`` RoIs against one whole inference of the baseline R-50 (the
    ``r50`` setting's model), and gives the number of RoIs at which it reaches 8 %. With
    ``quick_weights`` (a trained quick Rank-NMS model of ``quick_config``, by default the quick
    Faster R-CNN) it also measures how many of the test RoIs per image a trained model actually
    scores on ``synth_shapes_val``.
    """
    dicts = DatasetCatalog.get("synth_shapes_val_mini")[:num_images]
    baseline_cfg, rank_cfg = (_cfg(c) for c in SETTINGS["r50"])
    torch.manual_seed(0)
    baseline = build_model(baseline_cfg)
    baseline.proposal_generator = FixedProposals(baseline_cfg.MODEL.RPN.POST_NMS_TOPK_TEST)
    mapper = DatasetMapper(baseline_cfg, False)
    baseline_gflops = _inference_gflops(baseline, [mapper(dict(d)) for d in dicts])
    head = build_model(rank_cfg).roi_heads.box_predictor.rank_head.eval()
    res = rank_cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    channels = rank_cfg.MODEL.FPN.OUT_CHANNELS

    def head_gflops(n: int) -> float:
        counter = FlopCountAnalysis(head, (torch.zeros(n, channels, res, res),))
        return counter.unsupported_ops_warnings(False).total() / 1e9

    per_roi = head_gflops(100) / 100
    out = {
        "config": SETTINGS["r50"][1],
        "baseline_inference_gflops_per_image": baseline_gflops,
        "rank_head_gflops_per_roi": per_roi,
        "overhead_by_rois_scored": {str(n): head_gflops(n) / baseline_gflops for n in counts},
        "rois_scored_at_8_percent": 0.08 * baseline_gflops / per_roi,
        "test_rois_per_image": rank_cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
    }
    if quick_weights:
        quick_config = quick_config or SETTINGS["quick"][1]
        cfg = _cfg(quick_config)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(quick_weights)
        scored = []
        hook = model.roi_heads.box_predictor.rank_head.register_forward_hook(
            lambda module, args, output: scored.append(len(args[0]))
        )
        dicts = DatasetCatalog.get("synth_shapes_val")
        mapper = DatasetMapper(cfg, False)
        model.eval()
        with torch.no_grad():
            for d in dicts:
                model([mapper(dict(d))])
        hook.remove()
        # An image where no RoI passes never calls the head.
        scored += [0] * (len(dicts) - len(scored))
        out["quick_trained"] = {
            "config": quick_config,
            "weights": os.path.relpath(quick_weights, os.path.dirname(HERE)),
            "images": len(dicts),
            "test_rois_per_image": cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
            "rois_scored_per_image_mean": statistics.mean(scored),
            "rois_scored_per_image_max": max(scored),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick-weights",
        nargs=2,
        metavar=("BASELINE", "RANK_NMS"),
        help="trained quick models (e.g. output/rank_nms_quick_ap/{baseline,rank_nms}_s1/"
        "model_final.pth) so that inference sees a trained model's detections",
    )
    parser.add_argument(
        "--rois-scored",
        action="store_true",
        help="instead of timing: count R(·)'s FLOPs against the number of RoIs it scores (R-50 "
        "recipe) and, with --rank-weights, how many RoIs a trained quick model scores",
    )
    parser.add_argument("--rank-weights", help="a trained quick Rank-NMS model_final.pth")
    parser.add_argument(
        "--rank-config",
        help="the config of --rank-weights (relative to configs/; default: the quick Faster "
        "R-CNN Rank-NMS leaf)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    if os.path.exists(OUT_JSON):
        with open(OUT_JSON) as f:
            table = json.load(f)
    if args.rois_scored:
        counts = (100, 200, 300, 400, 500, 600, 800, 1000)
        row = rois_scored(counts, 2, args.rank_weights, args.rank_config)
        table["r50_rois_scored"] = row
        with open(OUT_JSON, "w") as f:
            json.dump(table, f, indent=2)
        print(f"R-50 baseline inference: {row['baseline_inference_gflops_per_image']:.2f} GFLOPs")
        print(f"R(·) per RoI: {1e3 * row['rank_head_gflops_per_roi']:.2f} MFLOPs")
        for n, overhead in row["overhead_by_rois_scored"].items():
            print(f"  {n:>5s} RoIs scored: +{100 * overhead:.1f} %")
        print(f"8 % reached at {row['rois_scored_at_8_percent']:.0f} RoIs scored")
        if "quick_trained" in row:
            q = row["quick_trained"]
            print(
                f"trained quick model: {q['rois_scored_per_image_mean']:.1f} of "
                f"{q['test_rois_per_image']} RoIs scored per image "
                f"(max {q['rois_scored_per_image_max']})"
            )
        return
    for setting in args.settings:
        weights = None
        if setting == "quick" and args.quick_weights:
            weights = dict(zip(("baseline", "rank_nms"), args.quick_weights))
        row = measure(setting, args.repeat, args.images, weights)
        row.update(threads=args.threads, repeat=args.repeat, weights=weights)
        table[setting] = row
        os.makedirs(os.path.dirname(OUT_JSON), exist_ok=True)
        with open(OUT_JSON, "w") as f:
            json.dump(table, f, indent=2)
    print(f"\n{'setting':8s} {'infer GFLOPs/img (base → rank)':>32s} {'Δ':>7s} "
          f"{'infer ms/img (base → rank)':>28s} {'Δ':>7s} "
          f"{'train ms/iter (base → rank)':>28s} {'Δ':>7s}")  # fmt: skip
    for setting, row in table.items():
        f, i, t = (
            row["inference_gflops_per_image"],
            row["infer_ms_per_image"],
            row["train_ms_per_iter"],
        )
        print(
            f"{setting:8s} {f['baseline']:16.2f} → {f['rank_nms']:11.2f} "
            f"{100 * row['inference_flops_overhead']:+6.1f}% "
            f"{i['baseline']:12.1f} → {i['rank_nms']:11.1f} {100 * row['infer_overhead']:+6.1f}% "
            f"{t['baseline']:12.1f} → {t['rank_nms']:11.1f} {100 * row['train_overhead']:+6.1f}%"
        )


if __name__ == "__main__":
    main()
