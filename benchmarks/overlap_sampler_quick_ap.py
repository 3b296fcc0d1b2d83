"""Quick-config box AP: Detectron2's random sampling vs the Overlap Sampler (and Libra R-CNN's
IoU-balanced sampling), trained one after the other with the same seed, data and schedule.

    python benchmarks/overlap_sampler_quick_ap.py [--seeds 1 2 3] [--only NAME ...]
    python benchmarks/overlap_sampler_quick_ap.py --report      # tables from the results file

For every seed and sampler: trains the quick config (``SEED`` = the seed) into
``output/overlap_sampler_quick_ap/<name>_s<seed>`` (its ``model_final.pth`` is used by
``overlap_sampler_fig4.py``), then evaluates the same weights on ``synth_shapes_val`` at each
``--test-nms`` (default 0.5 and 0.55: Table 2(f) compares the samplers at Detectron2's 0.5 and at
the paper's θ = 0.55). Each seed's run is stored in
``benchmarks/results/overlap_sampler_quick_ap.json`` under ``"<name>/s<seed>"`` (merged: runs of
other seeds and samplers are kept). Entries without ``/s<seed>`` come from the script's first
version: one seed (42), evaluated only at the config's own test NMS (0.55 for the Overlap
Sampler, 0.5 for the others). These are synthetic-data numbers, not COCO.
"""

import argparse
import json
import os
import statistics
import time

from detectron2.engine import default_argument_parser

import overlap_sampler
from d2kit.benchmarking import update_results_json
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
BASELINE = "random (StandardROIHeads)"
METRICS = ("AP", "AP50", "AP75")


def _slug(name: str) -> str:
    return name.split(" ")[0].replace("-", "_").lower()


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO) if path.startswith(REPO) else path


def _run(config: str, argv_opts: list, eval_only_weights: str | None = None) -> dict:
    argv = ["--config-file", config]
    if eval_only_weights:
        argv += ["--eval-only", *argv_opts, "MODEL.WEIGHTS", eval_only_weights]
    else:
        argv += argv_opts
    run_args = default_argument_parser().parse_args(argv)
    res = train_net.main(
        run_args, config_fns=[overlap_sampler.add_overlap_sampler_config], trainer_cls=Trainer
    )
    return {k: float(v) for k, v in res["bbox"].items()}


def train_and_evaluate(args) -> None:
    for seed in args.seeds:
        for name, config in RUNS.items():
            if args.only and _slug(name) not in args.only:
                continue
            out = os.path.join(args.runs_dir, f"{_slug(name)}_s{seed}")
            opts = ["SEED", str(seed), "OUTPUT_DIR", out]
            if args.max_iter is not None:
                opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
            opts += args.opts
            weights = os.path.join(out, "model_final.pth")
            reuse = args.reuse and os.path.isfile(weights)
            start = time.perf_counter()
            bbox = _run(config, opts, weights if reuse else None)
            train_s = time.perf_counter() - start
            # the same weights at each test NMS threshold (Table 2(f))
            at_nms = {}
            for t in args.test_nms:
                eval_opts = ["SEED", str(seed), "OUTPUT_DIR", os.path.join(out, f"eval_nms{t}")]
                eval_opts += ["MODEL.ROI_HEADS.NMS_THRESH_TEST", str(t), *args.opts]
                at_nms[str(t)] = _run(config, eval_opts, weights)
            entry = {
                "config": config,
                "seed": seed,
                "opts": [_rel(o) for o in opts],
                "bbox": bbox,  # at the config's own ROI_HEADS.NMS_THRESH_TEST
                "bbox_at_test_nms": at_nms,
                "wall_s": train_s,
                "trained_here": not reuse,
            }
            update_results_json(args.results, f"{name}/s{seed}", None, entry)


def _entries(table: dict) -> dict:
    """{name: {seed: entry}}; entries of the first version (no "/s<seed>") read their seed from
    their opts."""
    out = {}
    for key, entry in table.items():
        name, _, seed = key.rpartition("/s")
        if not name or not seed.isdigit():
            name, opts = key, entry.get("opts", [])
            seed = opts[opts.index("SEED") + 1] if "SEED" in opts else "?"
        out.setdefault(name, {})[int(seed) if str(seed).isdigit() else seed] = entry
    return out


def _fmt(values: list) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(path: str) -> None:
    with open(path) as f:
        runs = _entries(json.load(f))
    nms_values = sorted(
        {t for e in runs.values() for r in e.values() for t in r.get("bbox_at_test_nms", {})}
    )
    print(f"\nbox AP on synth_shapes_val, mean ± std over seeds ({path})")
    print(
        f"{'sampler':45s} {'seeds':>10s} {'as trained':>14s} "
        + " ".join(f"{'NMS ' + t:>14s}" for t in nms_values)
    )
    for name, seeds in runs.items():
        trained = [r["bbox"]["AP"] for r in seeds.values()]
        cells = [
            _fmt(
                [
                    r["bbox_at_test_nms"][t]["AP"]
                    for r in seeds.values()
                    if t in r.get("bbox_at_test_nms", {})
                ]
            )
            for t in nms_values
        ]
        print(
            f"{name:45s} {','.join(map(str, seeds)):>10s} {_fmt(trained):>14s} "
            + " ".join(f"{c:>14s}" for c in cells)
        )
    if BASELINE in runs and nms_values:
        print(f"\nAP minus {BASELINE} of the same seed, same test NMS (mean ± std over seeds)")
        for name, seeds in runs.items():
            if name == BASELINE:
                continue
            cells = []
            for t in nms_values:
                diffs = [
                    r["bbox_at_test_nms"][t]["AP"] - runs[BASELINE][s]["bbox_at_test_nms"][t]["AP"]
                    for s, r in seeds.items()
                    if t in r.get("bbox_at_test_nms", {})
                    and t in runs[BASELINE].get(s, {}).get("bbox_at_test_nms", {})
                ]
                cells.append(_fmt(diffs))
            cells = [f"NMS {t}: {c}" for t, c in zip(nms_values, cells)]
            print(f"{name:45s} " + " ".join(f"{c:>24s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=None, help="default: the config's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument(
        "--only", nargs="*", default=None, help="slugs: random overlap iou_balanced"
    )
    parser.add_argument(
        "--test-nms", type=float, nargs="+", default=[0.5, 0.55], help="ROI_HEADS.NMS_THRESH_TEST"
    )
    parser.add_argument("--opts", nargs="*", default=[], help="extra KEY VALUE config overrides")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate an existing model_final.pth, no training"
    )
    parser.add_argument(
        "--results", default=os.path.join(RESULTS, "overlap_sampler_quick_ap.json"),
        help="results file (merged); a temporary path for smoke runs",
    )  # fmt: skip
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="training outputs")
    parser.add_argument("--report", action="store_true", help="only print the results file")
    args = parser.parse_args()
    if not args.report:
        train_and_evaluate(args)
    report(args.results)


if __name__ == "__main__":
    main()
