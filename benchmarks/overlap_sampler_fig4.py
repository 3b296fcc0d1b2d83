"""Figure 4 of the paper: the IoU^{p,n} distribution of the negatives chosen by random sampling,
IoU-balanced sampling and the negative overlap sampler, on the proposals of a trained model.

    python benchmarks/overlap_sampler_fig4.py [--weights W] [--images 64] [--repeats 5]

``--weights`` defaults to the random-sampling quick model trained by
``overlap_sampler_quick_ap.py`` (``output/overlap_sampler_quick_ap/random/model_final.pth``).
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

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import pairwise_iou

import d2kit  # noqa: F401  (registers the datasets)
import overlap_sampler
from d2kit.paths import REPO_ROOT, resolve_config_file
from overlap_sampler import overlaps_among_examples, sample_iou_balanced, sample_negatives

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIG = (
    "OverlapSampler/quick_schedules/faster_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
)
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "output/overlap_sampler_quick_ap/random/model_final.pth")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--libra-bins", type=int, default=2, help="K of IoU-balanced (Fig. 4: 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = get_cfg()
    overlap_sampler.add_overlap_sampler_config(cfg)
    cfg.merge_from_file(resolve_config_file(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(args.weights)

    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = DatasetMapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[: args.images]
    items = [mapper(d) for d in dicts]
    batches = [items[i : i + 8] for i in range(0, len(items), 8)]
    per_image = _negatives_per_image(model, cfg, batches)

    k = cfg.MODEL.OVERLAP_SAMPLER.NEGATIVE.NUM_BINS
    samplers = {
        "random": lambda pn, gn, n, g: sample_negatives(pn, n, "uniform", generator=g),
        f"IoU-balanced (K={args.libra_bins})": lambda pn, gn, n, g: sample_iou_balanced(
            gn, n, num_bins=args.libra_bins, generator=g
        ),
        f"overlap sampler (soft, K={k})": lambda pn, gn, n, g: sample_negatives(
            pn, n, "soft", num_bins=k, generator=g
        ),
    }
    g = torch.Generator().manual_seed(args.seed)
    sampled = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for iou_pn, iou_gn, num_neg in per_image:
            for name, fn in samplers.items():
                sampled[name].append(iou_pn[fn(iou_pn, iou_gn, num_neg, g)])
    candidates = torch.cat([pn for pn, _, _ in per_image])
    sampled = {name: torch.cat(v) for name, v in sampled.items()}
    sampled["all candidate negatives"] = candidates

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
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "overlap_sampler_fig4.json"), "w") as f:
        weights = os.path.relpath(args.weights, REPO_ROOT) if args.weights else ""
        json.dump({"edges": EDGES, "weights": weights, "samplers": table}, f, indent=2)

    labels = [f"[{a:.1f},{b:.1f})" for a, b in zip(EDGES[:-2], EDGES[1:-1])] + ["[0.7,1]"]
    print(f"\nshare of sampled negatives per IoU^pn interval ({len(per_image)} images)")
    print(f"{'sampler':30s} " + " ".join(f"{x:>9s}" for x in labels) + f" {'mean':>6s}")
    for name, row in table.items():
        cells = " ".join(f"{100 * s:8.2f}%" for s in row["share_per_interval"])
        print(f"{name:30s} {cells} {row['mean_iou_pn']:6.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    width = 0.8 / len(table)
    for i, (name, row) in enumerate(table.items()):
        xs = [j + (i - (len(table) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [100 * s for s in row["share_per_interval"]], width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("max IoU between a sampled negative and the positives (IoU^{p,n})")
    ax.set_ylabel("share of sampled negatives (%)")
    ax.set_yscale("log")
    ax.set_title("Figure 4 on synth_shapes (quick R-18-FPN model)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    fig.tight_layout()
    path = os.path.join(RESULTS, "overlap_sampler_fig4.png")
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
