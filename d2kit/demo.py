"""``make demo``: train a detector on embedded synthetic data, evaluate it, draw predictions.

Trains the quick Faster R-CNN (R-18-FPN, from scratch, CPU) on ``synth_shapes_train``,
evaluates it with ``COCOEvaluator`` on the held-out ``synth_shapes_val`` (detectron2's
``copypaste:`` lines), writes a few PNGs of predictions next to the ground truth, and prints a
summary (AP, AP50, iterations, wall time), also saved as ``<output-dir>/summary.json``.

    python -m d2kit.demo [--config-file CONFIG] [--output-dir DIR] [--num-gpus N] [KEY VALUE ...]

Installed as a package, the console script ``d2kit-demo`` runs the same; ``--output-dir``
defaults to ``demo_output`` under the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from .engine import Trainer, train_net
from .visualize import draw_predictions

#: a name relative to ``configs/`` (d2kit.paths.resolve_config_file): works in a checkout and
#: when installed, from any directory
DEFAULT_CONFIG = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"


def _worker(args, num_vis: int):
    start = time.perf_counter()
    cfg = train_net.setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    if not comm.is_main_process():
        return
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    dataset = cfg.DATASETS.TEST[0]
    paths = draw_predictions(cfg, model, dataset, os.path.join(cfg.OUTPUT_DIR, "vis"), num_vis)
    bbox = results["bbox"] if "bbox" in results else results[dataset]["bbox"]
    summary = dict(
        config=args.config_file,
        train_dataset=cfg.DATASETS.TRAIN[0],
        test_dataset=dataset,
        iterations=cfg.SOLVER.MAX_ITER,
        images_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        AP=round(float(bbox["AP"]), 2),
        AP50=round(float(bbox["AP50"]), 2),
        train_and_eval_seconds=round(time.perf_counter() - start, 1),
        visualizations=paths,
    )
    with open(os.path.join(cfg.OUTPUT_DIR, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n".join(["", "Demo summary:"] + [f"  {k}: {v}" for k, v in summary.items()]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--num-vis", type=int, default=4, help="images to draw")
    parser.add_argument("--num-gpus", type=int, default=1, help="workers (gloo on CPU)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    ours = parser.parse_args(argv)
    args = default_argument_parser().parse_args(
        ["--config-file", ours.config_file, "--num-gpus", str(ours.num_gpus), "--dist-url", "auto"]
        + ["OUTPUT_DIR", ours.output_dir]
        + ours.opts
    )
    launch(_worker, args.num_gpus, dist_url=args.dist_url, args=(args, ours.num_vis))


if __name__ == "__main__":
    main()  # pragma: no cover
