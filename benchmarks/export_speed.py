"""Inference speed of the exported (TorchScript) models against the Python models, in one run.

Two quick Faster R-CNNs (R-18-FPN, 128 px synth_shapes): with Detectron2's NMS, and with HashRPN
(HNMS in the RPN, §4.2), the HNMS pre-filter and Soft-NMS on the detections (``ComposedROIHeads``
with ``MODEL.SUPPRESSION``). Each model is exported with ``d2kit.export`` (traced, saved, loaded
back as a deployment would), then the Python model and the exported file run on the same
``synth_shapes_val`` images, image by image and alternating which goes first, so that machine
load affects both alike, at the same torch thread count (``--threads``). Times are the median
wall milliseconds per image (the whole inference: normalisation, backbone, heads, suppression,
rescaling to the original size) over ``--images`` images after ``--warmup`` images; every timed
image's detections are also compared (same count and classes, boxes and scores to 1e-4).

Weights: ``--weights NAME=PATH`` (a checkpoint of that model's config), else seeded random
weights with BatchNorm statistics of the warm-up images (``d2kit.export.calibrate_batch_norm``):
an untrained model's detections, so its suppression work is not a trained model's.

Results go to ``benchmarks/results/export_speed.json`` (``--results``), one entry per (model,
threads, weights) with the machine, torch version and thread count; an entry already there is
not run again (``--force`` reruns it), so an interrupted run resumes.

    python benchmarks/export_speed.py --threads 1 [--images 50] [--weights NAME=PATH ...]
    python benchmarks/export_speed.py --report      # the table from the results file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from d2kit import export
from d2kit.benchmarking import update_results_json
from d2kit.paths import REPO_ROOT

RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results", "export_speed.json")
CONFIG = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
#: name -> (config, overrides)
MODELS = {
    "faster_rcnn_nms": (CONFIG, []),
    "faster_rcnn_hash_rpn_hnms_soft_nms": (
        CONFIG,
        [
            "MODEL.PROPOSAL_GENERATOR.NAME", "HashRPN",
            "MODEL.ROI_HEADS.NAME", "ComposedROIHeads",
            "MODEL.SUPPRESSION.METHOD", "soft_nms",
            "MODEL.SUPPRESSION.PREFILTER", "hnms",
        ],
    ),
}  # fmt: skip
TEST_SET = "synth_shapes_val"


def load_inputs(cfg, count: int) -> list[dict]:
    """The first ``count`` images of the test set as the models' inputs (resized as at test
    time, with the original height and width)."""
    from detectron2.data import DatasetCatalog, detection_utils

    records = DatasetCatalog.get(TEST_SET)
    if count > len(records):
        raise ValueError(f"{TEST_SET} has {len(records)} images, asked for {count}")
    return [
        export.prepare_input(
            cfg, detection_utils.read_image(r["file_name"], format=cfg.INPUT.FORMAT)
        )
        for r in records[:count]
    ]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, 1e3 * (time.perf_counter() - start)


def bench_model(name: str, args, weights: str | None) -> dict:
    config, opts = MODELS[name]
    cfg = export.setup_cfg(config, [*opts, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights or ""])
    inputs = load_inputs(cfg, args.warmup + args.images)
    model = export.build_export_model(cfg, seed=args.seed)
    if not weights:
        export.calibrate_batch_norm(model, inputs[: max(2, args.warmup)])
    with tempfile.TemporaryDirectory() as folder:
        info = export.export_model(cfg, model, inputs[0], folder, config_file=config, opts=opts)
        traced = torch.jit.load(os.path.join(folder, export.MODEL_FILE)).eval()
    fields = info["outputs"]

    def run_python(x):
        return export.python_detections(model, x)

    def run_exported(x):
        with torch.no_grad():
            out = traced(
                x["image"],
                torch.tensor(x["height"], dtype=torch.int64),
                torch.tensor(x["width"], dtype=torch.int64),
            )
        return dict(zip(fields, out))

    python_ms, exported_ms, detections, mismatched = [], [], [], []
    for i, x in enumerate(inputs):
        if i % 2 == 0:
            want, t_py = _timed(lambda x=x: run_python(x))
            got, t_ex = _timed(lambda x=x: run_exported(x))
        else:
            got, t_ex = _timed(lambda x=x: run_exported(x))
            want, t_py = _timed(lambda x=x: run_python(x))
        if i < args.warmup:
            continue
        python_ms.append(t_py)
        exported_ms.append(t_ex)
        detections.append(int(want["scores"].shape[0]))
        if not export.compare_detections(want, got)["equal"]:
            mismatched.append(i)
    py, ex = statistics.median(python_ms), statistics.median(exported_ms)
    return {
        "model": name,
        "config": config,
        "opts": opts,
        "weights": weights,
        "seed": None if weights else args.seed,
        "test_set": TEST_SET,
        "images": args.images,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "python_ms": py,
        "exported_ms": ex,
        "speedup": py / ex,
        "python_ms_all": [round(t, 3) for t in python_ms],
        "exported_ms_all": [round(t, 3) for t in exported_ms],
        "detections_mean": statistics.mean(detections),
        "mismatched_images": mismatched,
        "libraries": [lib["namespace"] for lib in info["libraries"]],
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def _cpu_name() -> str:
    """The CPU model (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(name: str, threads: int, weights: str | None) -> str:
    return f"{name}/threads{threads}/{'weights' if weights else 'random'}"


def report(path: str) -> None:
    if not os.path.isfile(path):
        print(f"no results at {path}: run the benchmark first")
        return
    with open(path) as f:
        runs = json.load(f).get("runs", {})
    header = (
        "| model | weights | threads | images | Python ms/img | exported ms/img | speed-up "
        "| detections/img | equal |"
    )
    print(header)
    print("|" + "---|" * 9)
    for key in sorted(runs):
        r = runs[key]
        equal = "yes" if not r["mismatched_images"] else f"no ({len(r['mismatched_images'])})"
        weights = os.path.basename(r["weights"]) if r["weights"] else f"random (seed {r['seed']})"
        print(
            f"| {r['model']} | {weights} | {r['threads']} | {r['images']} | "
            f"{r['python_ms']:.1f} | {r['exported_ms']:.1f} | {r['speedup']:.2f}x | "
            f"{r['detections_mean']:.0f} | {equal} |"
        )
    machines = sorted({(r["processor"], r["cpu_count"], r["torch"]) for r in runs.values()})
    for processor, cpus, version in machines:
        print(f"\n{processor}, {cpus} CPUs, torch {version}; median over the timed images")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--images", type=int, default=50, help="timed images (>= 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed images first")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--weights",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="a checkpoint per model (default: seeded random weights)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation without weights")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--force", action="store_true", help="rerun entries already there")
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    if args.report:
        report(args.results)
        return
    if args.images < 30:
        print(f"warning: --images {args.images} < 30: a check run, not a measurement")
    weights = dict(item.split("=", 1) for item in args.weights)
    unknown = set(weights) - set(MODELS)
    if unknown:
        parser.error(f"--weights names unknown models {sorted(unknown)}; models: {list(MODELS)}")
    torch.set_num_threads(args.threads)
    done = {}
    if os.path.isfile(args.results):
        with open(args.results) as f:
            done = json.load(f).get("runs", {})
    for name in args.models:
        key = _key(name, args.threads, weights.get(name))
        if key in done and not args.force:
            print(f"{key}: in {args.results} already (--force reruns it)")
            continue
        entry = bench_model(name, args, weights.get(name))
        update_results_json(args.results, "runs", key, entry)
        print(
            f"{key}: Python {entry['python_ms']:.1f} ms/img, exported {entry['exported_ms']:.1f} "
            f"ms/img ({entry['speedup']:.2f}x), mismatched images: {entry['mismatched_images']}"
        )
    report(args.results)


if __name__ == "__main__":
    main()
