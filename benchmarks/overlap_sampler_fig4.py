"""Figure 4 of the paper: the IoU^{p,n} distribution of the negatives chosen by random sampling,
IoU-balanced sampling and the negative overlap sampler, on the proposals of a trained model.

    python benchmarks/overlap_sampler_fig4.py [--seeds 1 2 3] [--images 64] [--repeats 5]
    python benchmarks/overlap_sampler_fig4.py --weights W      # one model, sampling seed 0
    python benchmarks/overlap_sampler_fig4.py --report         # plot from the results file

For each seed, the weights are the random-sampling quick model that ``overlap_sampler_quick_ap.py``
trained with that seed (``output/overlap_sampler_quick_ap/random_s<seed>/model_final.pth``) and
the samplers draw with that seed (``--runs-dir`` / ``--run-name``: the same quick config trained
by another benchmark, e.g. ``composed_quick_ap.py``'s ``baseline_faster``); every seed's run is
stored under ``"runs"`` and the plot shows the mean share (bars) and the spread over seeds (error
bars). The first version of this script stored one run (``"weights"``, ``"samplers"`` at the top
level); ``--report`` plots either.
On each of the first ``--images`` images of ``synth_shapes_train``, the model's RPN gives the
training-time proposals (``RPN.*_TOPK_TRAIN``), the ground truth is appended, the examples are
labelled with the ROI heads' matcher, and each sampler draws the negatives of one RoI batch
(``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` / ``POSITIVE_FRACTION``), ``--repeats`` times with a fixed
seed. Prints the share of sampled negatives per IoU^{p,n} interval and writes
``benchmarks/results/overlap_sampler_fig4.png`` and ``overlap_sampler_fig4.json``.
"""

import argparse
import json
import os
import statistics

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import pairwise_iou

import d2kit  # noqa: F401  (registers the datasets)
import overlap_sampler
from d2kit.benchmarking import mean_std
from d2kit.paths import REPO_ROOT, resolve_config_file
from overlap_sampler import overlaps_among_examples, sample_iou_balanced, sample_negatives

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIG = (
    "OverlapSampler/quick_schedules/faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
)
QUICK_AP_RUNS = os.path.join(REPO_ROOT, "output", "overlap_sampler_quick_ap")
WEIGHTS = "model_final.pth"
EDGES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0001]


def _negatives_per_image(model, cfg, images):
    """Per image: (IoU^{p,n}, IoU with the gt) of its negatives, and how many to sample."""
    rpn = model.proposal_generator
    rpn.pre_nms_topk[False] = cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN
    rpn.post_nms_topk[False] = cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN
    heads = model.roi_heads
    out = []
    with torch.no_grad():
        for batch in images:
            targets = [x["instances"] for x in batch]
            image_list = model.preprocess_image(batch)
            proposals, _ = rpn(image_list, model.backbone(image_list.tensor))
            proposals = add_ground_truth_to_proposals(targets, proposals)
            for props, gt in zip(proposals, targets):
                gt_iou = pairwise_iou(gt.gt_boxes, props.proposal_boxes)
                _, labels = heads.proposal_matcher(gt_iou)
                is_pos, is_neg = labels == 1, labels == 0
                pos_boxes = props.proposal_boxes[is_pos]
                iou_pn, _ = overlaps_among_examples(
                    pairwise_iou(pos_boxes, props.proposal_boxes), is_pos, is_neg
                )
                iou_gn = gt_iou.max(dim=0).values[is_neg]
                num_pos = min(
                    int(heads.batch_size_per_image * heads.positive_fraction), len(pos_boxes)
                )
                num_neg = min(heads.batch_size_per_image - num_pos, int(is_neg.sum()))
                out.append((iou_pn, iou_gn, num_neg))
    return out


def _measure(cfg, weights, images, repeats, libra_bins, seed) -> dict:
    """Share of sampled negatives per IoU^{p,n} interval, for each sampler, on one model."""
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    mapper = DatasetMapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:images]
    items = [mapper(d) for d in dicts]
    batches = [items[i : i + 8] for i in range(0, len(items), 8)]
    per_image = _negatives_per_image(model, cfg, batches)

    k = cfg.MODEL.OVERLAP_SAMPLER.NEGATIVE.NUM_BINS
    samplers = {
        "random": lambda pn, gn, n, g: sample_negatives(pn, n, "uniform", generator=g),
        f"IoU-balanced (K={libra_bins})": lambda pn, gn, n, g: sample_iou_balanced(
            gn, n, num_bins=libra_bins, generator=g
        ),
        f"overlap sampler (soft, K={k})": lambda pn, gn, n, g: sample_negatives(
            pn, n, "soft", num_bins=k, generator=g
        ),
    }
    g = torch.Generator().manual_seed(seed)
    sampled = {name: [] for name in samplers}
    for _ in range(repeats):
        for iou_pn, iou_gn, num_neg in per_image:
            for name, fn in samplers.items():
                sampled[name].append(iou_pn[fn(iou_pn, iou_gn, num_neg, g)])
    sampled = {name: torch.cat(v) for name, v in sampled.items()}
    sampled["all candidate negatives"] = torch.cat([pn for pn, _, _ in per_image])

    edges = torch.tensor(EDGES)
    table = {}
    for name, v in sampled.items():
        counts = torch.histogram(v.float(), bins=edges).hist
        table[name] = {
            "share_per_interval": (counts / max(v.numel(), 1)).tolist(),
            "mean_iou_pn": float(v.mean()),
            "share_iou_pn_ge_0.5": float((v >= 0.5).float().mean()),
            "num": v.numel(),
        }
    return {"weights": os.path.relpath(weights, REPO_ROOT), "seed": seed, "samplers": table}


def _runs(data: dict) -> list[dict]:
    """Every stored run; a file of the first version holds one."""
    return list(data["runs"].values()) if "runs" in data else [data]


def report(data: dict, path: str) -> None:
    """Print the shares (mean over the runs) and plot them, with the spread over runs."""
    runs = _runs(data)
    names = list(runs[0]["samplers"])
    labels = [f"[{a:.1f},{b:.1f})" for a, b in zip(EDGES[:-2], EDGES[1:-1])] + ["[0.7,1]"]
    mean, std = {}, {}
    for name in names:
        shares = [r["samplers"][name]["share_per_interval"] for r in runs]
        per_interval = [mean_std(col) for col in zip(*shares)]
        mean[name] = [m for m, _ in per_interval]
        std[name] = [s for _, s in per_interval]
    seeds = ", ".join(str(r.get("seed", "?")) for r in runs)
    print(f"\nshare of sampled negatives per IoU^pn interval (runs: {len(runs)}, seeds {seeds})")
    print(f"{'sampler':30s} " + " ".join(f"{x:>9s}" for x in labels) + f" {'mean':>6s}")
    for name in names:
        cells = " ".join(f"{100 * s:8.2f}%" for s in mean[name])
        iou = statistics.mean(r["samplers"][name]["mean_iou_pn"] for r in runs)
        print(f"{name:30s} {cells} {iou:6.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(labels))]
        err = [100 * s for s in std[name]] if len(runs) > 1 else None
        ax.bar(xs, [100 * s for s in mean[name]], width=width, yerr=err, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("max IoU between a sampled negative and the positives (IoU^{p,n})")
    ax.set_ylabel("share of sampled negatives (%)")
    ax.set_yscale("log")
    ax.set_title(f"Figure 4 on synth_shapes (quick R-18-FPN model; {len(runs)} run(s))")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="one model (default: --seeds' models)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--libra-bins", type=int, default=2, help="K of IoU-balanced (Fig. 4: 2)")
    parser.add_argument("--results-dir", default=RESULTS, help="where the JSON and plot go")
    parser.add_argument(
        "--runs-dir", default=QUICK_AP_RUNS, help="overlap_sampler_quick_ap.py's training outputs"
    )
    parser.add_argument(
        "--run-name",
        default="random",
        help="the weights are <runs-dir>/<run-name>_s<seed>/model_final.pth: a Faster R-CNN "
        "trained with random sampling (composed_quick_ap.py's: --runs-dir "
        "output/composed_quick_ap --run-name baseline_faster)",
    )
    parser.add_argument("--report", action="store_true", help="plot the results file only")
    args = parser.parse_args()
    path = os.path.join(args.results_dir, "overlap_sampler_fig4.json")
    plot = os.path.join(args.results_dir, "overlap_sampler_fig4.png")
    if args.report:
        with open(path) as f:
            report(json.load(f), plot)
        return

    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.merge_from_file(resolve_config_file(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.RANDOM_FLIP = "none"
    if args.weights:
        todo = {"weights": (args.weights, 0)}
    else:
        todo = {
            f"s{seed}": (
                os.path.join(args.runs_dir, f"{args.run_name}_s{seed}", "model_final.pth"),
                seed,
            )
            for seed in args.seeds
        }
    runs = {
        key: _measure(cfg, weights, args.images, args.repeats, args.libra_bins, seed)
        for key, (weights, seed) in todo.items()
    }
    data = {"edges": EDGES, "images": args.images, "repeats": args.repeats, "runs": runs}
    os.makedirs(args.results_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    report(data, plot)


if __name__ == "__main__":
    main()
