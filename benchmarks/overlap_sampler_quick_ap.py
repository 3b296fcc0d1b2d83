"""Quick-config box AP: Detectron2's random sampling vs the Overlap Sampler (and Libra R-CNN's
IoU-balanced sampling), trained one after the other with the same seed, data and schedule.

    python benchmarks/overlap_sampler_quick_ap.py [--max-iter 300] [--only NAME ...]

Prints a table of box AP/AP50/AP75 on ``synth_shapes_val`` and writes
``benchmarks/results/overlap_sampler_quick_ap.json``. Each run's output (with ``model_final.pth``,
used by ``overlap_sampler_fig4.py``) goes to ``output/overlap_sampler_quick_ap/<name>``.
These are synthetic-data numbers, not COCO.
"""

import argparse
import json
import os
import time

from detectron2.engine import default_argument_parser

import overlap_sampler
from d2kit.engine import Trainer, train_net

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
#: Training outputs (checkpoints; git-ignored).
REPO = os.path.dirname(HERE)
RUNS_DIR = os.path.join(REPO, "output", "overlap_sampler_quick_ap")

RUNS = {
    "random (StandardROIHeads)": "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    "overlap sampler (soft, K=2, θ=0.55, ε=2)": (
        "OverlapSampler/quick_schedules/faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
    ),
    "IoU-balanced (Libra, K=3)": (
        "OverlapSampler/quick_schedules/faster_rcnn_R_18_FPN_quick_iou_balanced_synth_shapes.yaml"
    ),
}


def _slug(name: str) -> str:
    return name.split(" ")[0].replace("-", "_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--only", nargs="*", default=None, help="slugs: random overlap iou_balanced"
    )
    parser.add_argument("--opts", nargs="*", default=[], help="extra KEY VALUE config overrides")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate an existing model_final.pth, no training"
    )
    args = parser.parse_args()

    table = {}
    out_json = os.path.join(RESULTS, "overlap_sampler_quick_ap.json")
    if os.path.exists(out_json):
        with open(out_json) as f:
            table = json.load(f)
    for name, config in RUNS.items():
        if args.only and _slug(name) not in args.only:
            continue
        opts = ["SEED", str(args.seed), "OUTPUT_DIR"]
        opts += [os.path.join(RUNS_DIR, _slug(name))]
        if args.max_iter is not None:
            opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
        opts += args.opts
        weights = os.path.join(RUNS_DIR, _slug(name), "model_final.pth")
        reuse = args.reuse and os.path.isfile(weights)
        argv = ["--config-file", config]
        argv += ["--eval-only", *opts, "MODEL.WEIGHTS", weights] if reuse else opts
        run_args = default_argument_parser().parse_args(argv)
        start = time.perf_counter()
        res = train_net.main(
            run_args, config_fns=[overlap_sampler.add_overlap_sampler_config], trainer_cls=Trainer
        )
        table[name] = {
            "config": config,
            "opts": [os.path.relpath(o, REPO) if o.startswith(REPO) else o for o in opts],
            "bbox": {k: float(v) for k, v in res["bbox"].items()},
            "wall_s": time.perf_counter() - start,
            "trained_here": not reuse,
        }
        os.makedirs(RESULTS, exist_ok=True)
        if os.path.exists(out_json):  # runs may go in parallel processes: merge, do not clobber
            with open(out_json) as f:
                table = {**json.load(f), name: table[name]}
        with open(out_json, "w") as f:
            json.dump(table, f, indent=2)

    print(f"\n{'sampler':45s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}")
    for name, row in table.items():
        b = row["bbox"]
        print(f"{name:45s} {b['AP']:6.2f} {b['AP50']:6.2f} {b['AP75']:6.2f}")


if __name__ == "__main__":
    main()
