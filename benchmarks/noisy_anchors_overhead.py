"""Training-iteration cost of Noisy Anchors against the detectron2 baselines, in one run.

For RetinaNet (``NoisyAnchorsRetinaNet`` vs ``RetinaNet``) and Faster R-CNN (``NoisyAnchorsRPN`` vs
``RPN``) on the quick synthetic configs: both models start from the same weights and see the same
batches; their training iterations (forward, backward, SGD step) are interleaved, alternating
which goes first, so machine load affects both alike. Prints the median iteration time, the
time spent in anchor labelling + losses, and the overhead ratio, for each of ``--seeds`` (the
models' initial weights); writes ``benchmarks/results/noisy_anchors_overhead.{png,json}``, the
JSON with every seed's run (each timed iteration included) under ``"<detector>/s<seed>"`` and
the overhead's mean ± std over the seeds under ``"summary"``. (The first version of this script
wrote one run, seed 0, under ``"<detector>"``.) Run it with ``OMP_NUM_THREADS=1`` on a shared CPU.

    python benchmarks/noisy_anchors_overhead.py [--iters 20] [--warmup 3] [--seeds 0 1 2]
    python benchmarks/noisy_anchors_overhead.py --report   # tables and plot from the results file
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import d2kit  # noqa: F401  (registers the synthetic datasets)
import noisy_anchors
from d2kit.benchmarking import CallTimer, mean_std
from d2kit.paths import REPO_ROOT

RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

PAIRS = {
    "RetinaNet": (
        "configs/quick_schedules/retinanet_R_18_FPN_quick_synth_shapes.yaml",
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
    ),
    "Faster R-CNN (RPN)": (
        "configs/quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        "configs/NoisyAnchors/quick_schedules/noisy_anchors_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    ),
}


def _cfg(path):
    cfg = get_cfg()
    noisy_anchors.add_noisy_anchors_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _instrument(model):
    """Time the hooks Noisy Anchors changes: anchor labelling and the losses."""
    owner = model.proposal_generator if hasattr(model, "proposal_generator") else model
    label_name = "label_and_sample_anchors" if owner is not model else "label_anchors"
    timers = [CallTimer(getattr(owner, label_name)), CallTimer(owner.losses)]
    setattr(owner, label_name, timers[0])
    owner.losses = timers[1]
    return timers


def bench_pair(base_cfg_path, noisy_cfg_path, iters, warmup, seed=0):
    base_cfg, noisy_cfg = _cfg(base_cfg_path), _cfg(noisy_cfg_path)
    torch.manual_seed(seed)
    models = {"baseline": build_model(base_cfg), "noisy": build_model(noisy_cfg)}
    models["noisy"].load_state_dict(models["baseline"].state_dict())
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    timers = {k: _instrument(m) for k, m in models.items()}
    loader = iter(build_detection_train_loader(base_cfg))
    batches = [next(loader) for _ in range(warmup + iters)]
    times = {k: [] for k in models}
    hook_time = {k: 0.0 for k in models}
    with EventStorage():
        for step, batch in enumerate(batches):
            order = ["baseline", "noisy"] if step % 2 == 0 else ["noisy", "baseline"]
            for name in order:
                model, opt = models[name], opts[name]
                model.train()
                before = sum(t.total for t in timers[name])
                start = time.perf_counter()
                losses = model(batch)
                sum(losses.values()).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step >= warmup:
                    times[name].append(time.perf_counter() - start)
                    hook_time[name] += sum(t.total for t in timers[name]) - before
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_iter_s": med,
        "hook_ms": {k: 1000 * v / iters for k, v in hook_time.items()},
        "overhead": med["noisy"] / med["baseline"] - 1.0,
        "times": times,
        "ims_per_batch": base_cfg.SOLVER.IMS_PER_BATCH,
        "seed": seed,
        "iters": iters,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--results-dir", default=RESULTS_DIR, help="where the JSON and plot go")
    parser.add_argument(
        "--report",
        action="store_true",
        help="no timing: print the tables and redraw the plot from the results file",
    )
    args = parser.parse_args()
    json_path = os.path.join(args.results_dir, "noisy_anchors_overhead.json")
    if args.report:
        with open(json_path) as f:
            results = {k: v for k, v in json.load(f).items() if k != "summary"}
        args.seeds = sorted({r["seed"] for r in results.values()})
        args.iters = next(iter(results.values()))["iters"]
    else:
        results = {
            f"{name}/s{seed}": bench_pair(*paths, args.iters, args.warmup, seed)
            for seed in args.seeds
            for name, paths in PAIRS.items()
        }

    print(
        f"\nTraining iteration on CPU "
        f"(threads: {next(iter(results.values())).get('threads', 'not recorded')}), quick configs, "
        f"{args.iters} timed iterations each, interleaved"
    )
    print(
        f"{'detector':20s} {'batch':>5s} {'baseline s/it':>13s} {'noisy s/it':>10s} "
        f"{'overhead':>8s} {'label+loss ms base':>18s} {'label+loss ms noisy':>19s}"
    )
    for name, r in results.items():
        m, h = r["median_iter_s"], r["hook_ms"]
        print(
            f"{name:20s} {r['ims_per_batch']:5d} {m['baseline']:13.3f} {m['noisy']:10.3f} "
            f"{100 * r['overhead']:7.1f}% {h['baseline']:18.1f} {h['noisy']:19.1f}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per detector pair, every seed's trace in it (the file stays small)
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(4.6 * len(PAIRS), 3.2), squeeze=False)
    for ax, pair in zip(axes[0], PAIRS):
        runs = {n: r for n, r in results.items() if n.startswith(pair + "/s")}
        for run_index, r in enumerate(runs.values()):
            for color, (label, series) in zip(("C0", "C1"), r["times"].items()):
                style = ("-", "--", ":")[run_index % 3]
                ax.plot(
                    range(1, len(series) + 1),
                    series,
                    style,
                    color=color,
                    lw=1,
                    label=f"{label}, seed {r['seed']}",
                )
        overheads = [100 * r["overhead"] for r in runs.values()]
        ax.set_title(
            f"{pair}: overhead {statistics.mean(overheads):+.1f}% (mean of medians)", fontsize=9
        )
        ax.set_xlabel("timed iteration")
        ax.set_ylabel("s / iteration")
        ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, "noisy_anchors_overhead.png")
    fig.savefig(path, dpi=80)
    print(f"\nplot: {path}")
    # every timed iteration is kept (the plot's data), rounded to 0.1 ms
    out = {
        n: dict(r, times={k: [round(t, 4) for t in v] for k, v in r["times"].items()})
        for n, r in results.items()
    }
    out["summary"] = {}
    for name in PAIRS:
        runs = [r for n, r in results.items() if n.startswith(name + "/s")]
        summary = {"seeds": args.seeds}
        summary["overhead_mean"], summary["overhead_std"] = mean_std([r["overhead"] for r in runs])
        for model in ("baseline", "noisy"):
            iter_s = mean_std([r["median_iter_s"][model] for r in runs])
            summary[f"{model}_iter_s_mean"], summary[f"{model}_iter_s_std"] = iter_s
        out["summary"][name] = summary
        print(
            f"{name}: overhead {100 * summary['overhead_mean']:+.1f}% ± "
            f"{100 * summary['overhead_std']:.1f}% over {len(runs)} seed(s); s/it baseline "
            f"{summary['baseline_iter_s_mean']:.3f} ± {summary['baseline_iter_s_std']:.3f}, "
            f"noisy {summary['noisy_iter_s_mean']:.3f} ± {summary['noisy_iter_s_std']:.3f}"
        )
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
