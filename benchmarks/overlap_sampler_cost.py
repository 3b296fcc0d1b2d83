"""Training-iteration cost of OverlapSamplerROIHeads against StandardROIHeads, in one run.

    python benchmarks/overlap_sampler_cost.py [--iters 20] [--warmup 3] [--seeds 42 1 2]
    python benchmarks/overlap_sampler_cost.py --report   # the tables of the results file

Both models are built from the quick configs (R-18-FPN, synth_shapes, CPU) with the same seed and
trained on the same pre-loaded batches, alternating one iteration each so that machine load hits
both alike. Prints the median time of a full training iteration (forward, backward, SGD step) and
of ``label_and_sample_proposals`` alone, and their ratios, for each seed (the models' initial
weights and the sampling draws); writes ``benchmarks/results/overlap_sampler_cost.json`` with
every seed's run under ``"runs"`` (``"s<seed>"``) and their mean ± std (the ratios and each
model's iteration time) under ``"summary"``. (The first version of this script wrote one run's
fields at the top level.)
"""

import argparse
import json
import os
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

import d2kit  # noqa: F401  (registers the datasets)
import overlap_sampler
from d2kit.benchmarking import CallTimer, mean_std
from d2kit.paths import resolve_config_file

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = {
    "StandardROIHeads": "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    "OverlapSamplerROIHeads": (
        "OverlapSampler/quick_schedules/faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
    ),
}


def _cfg(path):
    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.merge_from_file(resolve_config_file(path))
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--results-dir", default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--report", action="store_true", help="no timing: print the results file's tables"
    )
    args = parser.parse_args()
    json_path = os.path.join(args.results_dir, "overlap_sampler_cost.json")
    if args.report:
        with open(json_path) as f:
            runs = json.load(f)["runs"]
    else:
        cfgs = {name: _cfg(path) for name, path in CONFIGS.items()}
        loader = iter(build_detection_train_loader(cfgs["StandardROIHeads"]))
        batches = [next(loader) for _ in range(args.warmup + args.iters)]
        runs = {f"s{seed}": _measure(args, cfgs, batches, seed) for seed in args.seeds}
    summary = _summary(runs)  # with --report: recomputed from the stored runs
    os.makedirs(args.results_dir, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"runs": runs, "summary": summary}, f, indent=2)
    _print(runs, summary)


def _summary(runs) -> dict:
    """Mean ± std over the seeds' runs of the ratios and of each model's median iteration."""
    columns = {
        field: [r[field] for r in runs.values()]
        for field in ("ratio_iter", "ratio_sampling", "sampling_overhead_share_of_iter")
    }
    for name in CONFIGS:
        columns[f"{name}_iter_s"] = [r[name]["iter_s_median"] for r in runs.values()]
    return {field: dict(zip(("mean", "std"), mean_std(v))) for field, v in columns.items()}


def _print(runs, summary) -> None:
    for key, result in runs.items():
        print(f"\n{key}: {'ROI heads':26s} {'iteration (s)':>14s} {'label+sample (ms)':>18s}")
        for name in CONFIGS:
            r = result[name]
            print(f"{name:30s} {r['iter_s_median']:14.3f} {1000 * r['sampling_s_median']:18.1f}")
        print(f"iteration time ratio (ours / standard): {result['ratio_iter']:.3f}")
        print(f"label+sample time ratio: {result['ratio_sampling']:.2f}")
        print(
            "extra sampling time as a share of a standard iteration: "
            f"{100 * result['sampling_overhead_share_of_iter']:.2f}%"
        )
    print(f"\nover {len(runs)} seed(s), mean ± std:")
    for name in CONFIGS:
        s = summary[f"{name}_iter_s"]
        print(f"{name} iteration (s): {s['mean']:.3f} ± {s['std']:.3f}")
    for field, scale, unit in (
        ("ratio_iter", 1, ""),
        ("ratio_sampling", 1, ""),
        ("sampling_overhead_share_of_iter", 100, " %"),
    ):
        s = summary[field]
        print(f"{field}: {scale * s['mean']:.3f} ± {scale * s['std']:.3f}{unit}")


def _measure(args, cfgs, batches, seed) -> dict:
    """One interleaved timing run of both models built with ``seed``."""
    models, optims, timers, iter_times = {}, {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(seed)
        models[name] = build_model(cfg).train()
        optims[name] = build_optimizer(cfg, models[name])
        timers[name] = CallTimer(models[name].roi_heads.label_and_sample_proposals)
        models[name].roi_heads.label_and_sample_proposals = timers[name]
        iter_times[name] = []

    with EventStorage():
        for i, batch in enumerate(batches):
            for name, model in models.items():
                start = time.perf_counter()
                losses = model(batch)
                optims[name].zero_grad()
                sum(losses.values()).backward()
                optims[name].step()
                if i >= args.warmup:
                    iter_times[name].append(time.perf_counter() - start)
    result = {}
    for name in models:
        sampling = timers[name].times[args.warmup :]
        result[name] = {
            "iter_s_median": statistics.median(iter_times[name]),
            "sampling_s_median": statistics.median(sampling),
        }
    base, ours = result["StandardROIHeads"], result["OverlapSamplerROIHeads"]
    result["ratio_iter"] = ours["iter_s_median"] / base["iter_s_median"]
    result["ratio_sampling"] = ours["sampling_s_median"] / base["sampling_s_median"]
    result["sampling_overhead_share_of_iter"] = (
        ours["sampling_s_median"] - base["sampling_s_median"]
    ) / base["iter_s_median"]
    result["setup"] = {
        "seed": seed,
        "iters": args.iters,
        "ims_per_batch": cfgs["StandardROIHeads"].SOLVER.IMS_PER_BATCH,
        "roi_batch_per_image": cfgs["StandardROIHeads"].MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        "post_nms_topk_train": cfgs["StandardROIHeads"].MODEL.RPN.POST_NMS_TOPK_TRAIN,
        "threads": torch.get_num_threads(),
    }
    return result


if __name__ == "__main__":
    main()
