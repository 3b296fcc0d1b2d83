"""What the Rank-NMS head costs: inference time per image and training iteration time, with and
without it, in the same process on the same inputs (A/B interleaved, median of repeats).

    python benchmarks/rank_nms_cost.py [--settings quick r50] [--repeat 7] [--threads 1]

Settings (random initialisation unless ``--quick-weights``; the work done does not depend on
the weights except for the number of detections that reach NMS):

- ``quick``: the quick R-18-FPN Faster R-CNN (128 px, 300 test RoIs, rank head FC 256) and its
  Rank-NMS leaf;
- ``r50``: the paper's recipe, ``configs/RankNMS/faster_rcnn_R_50_FPN_1x_baseline.yaml`` vs
  ``rank_nms_faster_rcnn_R_50_FPN_1x.yaml`` (R-50-FPN, 800 px, 1000 test RoIs, 512 training
  RoIs, rank head 2 × FC 1024).

Training steps run at learning rate 0 (the same work; the weights stay put). Inputs are the
first images of ``synth_shapes_val_mini`` through Detectron2's mappers (resized to each
config's input size). Writes ``benchmarks/results/rank_nms_cost.json``.
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


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(setting: str, repeat: int, num_images: int, weights: dict | None = None) -> dict:
    dicts = DatasetCatalog.get("synth_shapes_val_mini")[:num_images]
    models, test_inputs, train_batches, optimizers = {}, {}, {}, {}
    for name, config in zip(("baseline", "rank_nms"), SETTINGS[setting]):
        cfg = _cfg(config)
        torch.manual_seed(0)
        models[name] = build_model(cfg)
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
    return {
        "configs": list(SETTINGS[setting]),
        "images": len(dicts),
        "infer_ms_per_image": {n: 1e3 * med[f"infer_{n}"] for n in models},
        "train_ms_per_iter": {n: 1e3 * med[f"train_{n}"] for n in models},
        "infer_overhead": med["infer_rank_nms"] / med["infer_baseline"] - 1,
        "train_overhead": med["train_rank_nms"] / med["train_baseline"] - 1,
        "runs_s": times,
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    }


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    if os.path.exists(OUT_JSON):
        with open(OUT_JSON) as f:
            table = json.load(f)
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
    print(f"\n{'setting':8s} {'infer ms/img (base → rank)':>30s} {'Δ':>7s} "
          f"{'train ms/iter (base → rank)':>30s} {'Δ':>7s}")  # fmt: skip
    for setting, row in table.items():
        i, t = row["infer_ms_per_image"], row["train_ms_per_iter"]
        print(
            f"{setting:8s} {i['baseline']:14.1f} → {i['rank_nms']:11.1f} "
            f"{100 * row['infer_overhead']:+6.1f}% {t['baseline']:14.1f} → {t['rank_nms']:11.1f} "
            f"{100 * row['train_overhead']:+6.1f}%"
        )


if __name__ == "__main__":
    main()
