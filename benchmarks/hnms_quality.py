"""What HNMS keeps: ground-truth recall after HNMS vs NMS on crowded synthetic scenes, and the
lower IoU bound vs α (paper Fig. 3) with the smallest IoU actually observed in one cell.

    python benchmarks/hnms_quality.py            # 20 scenes of 150 objects, 60 boxes each
    python benchmarks/hnms_quality.py --quick    # 3 scenes

Each scene: 150 objects (20-80 px) in 1000 x 1000 px, each with 60 RPN-like boxes (jittered
centre and size); a box's score is its IoU with its object plus noise, so better boxes tend to
score higher, as after training. Recall@t = fraction of objects matched one-to-one by a kept box
of IoU >= t (``d2kit.evaluation.recall_at_ious``: COCO-style greedy matching in score order,
class-agnostic), over all kept boxes and over the best 300 (a tight per-image proposal budget).
Writes benchmarks/results/hnms_quality.json and hnms_lower_bound.png.
"""

import argparse
import json
import os

import torch
from torchvision.ops import box_iou, nms

import hnms
from d2kit.evaluation import recall_at_ious

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def scene(seed: int, num_objects: int = 150, per_object: int = 60):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(num_objects, 2, generator=g) * 900 + 50
    s = torch.rand(num_objects, 2, generator=g) * 60 + 20
    gt = torch.cat([c - s / 2, c + s / 2], 1)
    owner = torch.arange(num_objects).repeat_interleave(per_object)
    n = len(owner)
    cc = c[owner] + torch.randn(n, 2, generator=g) * s[owner] * 0.15
    ss = s[owner] * torch.exp(torch.randn(n, 2, generator=g) * 0.15)
    boxes = torch.cat([cc - ss / 2, cc + ss / 2], 1)
    iou = box_iou(boxes, gt)[torch.arange(n), owner]
    scores = iou + 0.15 * torch.randn(n, generator=g)
    return gt, boxes, scores


def recall(gt, boxes, scores, thresholds):
    """Recall of the objects ``gt`` at each IoU threshold by the boxes kept, matched one-to-one
    in score order (each kept box covers at most one object)."""
    zeros = torch.zeros
    return recall_at_ious(
        [{"boxes": boxes, "scores": scores, "classes": zeros(len(boxes), dtype=torch.int64)}],
        [{"boxes": gt, "classes": zeros(len(gt), dtype=torch.int64)}],
        thresholds,
        max_dets=None,
        class_aware=False,
    ).tolist()


def methods():
    return {
        "NMS@0.7 (RPN baseline)": lambda b, s: nms(b, s, 0.7),
        "NMS@0.5 (one-stage baseline)": lambda b, s: nms(b, s, 0.5),
        "HNMS α=0.7 K=1 (HashRPN)": lambda b, s: hnms.hnms(b, s, 0.7, 1),
        "HNMS α=0.7 K=2": lambda b, s: hnms.hnms(b, s, 0.7, 2),
        "HNMS α=0.5 K=2": lambda b, s: hnms.hnms(b, s, 0.5, 2),
        "HNMS α=0.73 K=1 (pre-filter only)": lambda b, s: hnms.hnms(b, s, 0.73, 1),
        "HNMS α=0.73 K=1 + NMS@0.5": lambda b, s: hnms.nms_with_hash_prefilter(
            b, s, torch.zeros(len(b), dtype=torch.int64), 0.5, 0.73, 1
        ),
    }


def bound_curve(plot: bool):
    alphas = [a / 200 for a in range(1, 200)]
    bounds = [hnms.iou_lower_bound(a) for a in alphas]
    observed = {}
    g = torch.Generator().manual_seed(0)
    for a in (0.3, 0.4, 0.5, 0.6, 0.7, 0.73, 0.8, 0.9):
        n = 3000
        c = 100 + torch.rand(n, 2, generator=g) * 10
        wh = 20 * torch.exp(torch.rand(n, 2, generator=g) * 1.5)
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1).double()
        codes = hnms.iou_hash(boxes, a)
        same = (codes[:, None] == codes[None]).all(-1)
        same.fill_diagonal_(False)
        observed[a] = box_iou(boxes, boxes)[same].min().item() if same.any() else None
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(alphas, bounds, label="lower bound (Alg. 4)")
        xs = [a for a, v in observed.items() if v is not None]
        ax.scatter(xs, [observed[a] for a in xs], color="C3", zorder=3,
                   label="smallest IoU seen in one cell")  # fmt: skip
        ax.set_xlabel("α")
        ax.set_ylabel("IoU of two boxes in one cell")
        ax.set_title("Lower IoU bound vs α (paper Fig. 3)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "hnms_lower_bound.png"), dpi=120)
    return {"alpha": alphas, "bound": bounds, "observed_min": observed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--topk", type=int, default=300, help="P3: best boxes kept per image")
    args = parser.parse_args()
    scenes = 3 if args.quick else args.scenes
    rows = {}
    for name, fn in methods().items():
        kept, r = [], {0.5: [], 0.7: [], "top0.5": [], "top0.7": []}
        for seed in range(scenes):
            gt, boxes, scores = scene(seed)
            keep = fn(boxes, scores)
            kept.append(len(keep))
            top = keep[: args.topk]
            for sel, prefix in ((keep, ""), (top, "top")):
                for t, v in zip((0.5, 0.7), recall(gt, boxes[sel], scores[sel], (0.5, 0.7))):
                    r[f"{prefix}{t}" if prefix else t].append(v)
        rows[name] = {
            "kept_per_image": sum(kept) / scenes,
            **{f"recall@{k}": sum(v) / scenes for k, v in r.items()},
        }
    n_in = len(scene(0)[1])
    print(f"{scenes} scenes, {n_in} boxes and 150 objects each; recall = objects matched one to")
    print(f"one by a kept box at IoU >= t (all kept / best {args.topk} kept)\n")
    print("| method | kept/image | recall@0.5 | recall@0.7 | recall@0.5 top | recall@0.7 top |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['kept_per_image']:.0f} | {row['recall@0.5']:.3f} | "
              f"{row['recall@0.7']:.3f} | {row['recall@top0.5']:.3f} | "
              f"{row['recall@top0.7']:.3f} |")  # fmt: skip
    os.makedirs(RESULTS, exist_ok=True)
    curve = bound_curve(plot=True)
    print("\nlower bound: " + ", ".join(
        f"α={a}: {hnms.iou_lower_bound(a):.4f} (seen {v:.4f})"
        for a, v in curve["observed_min"].items() if v is not None))  # fmt: skip
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(RESULTS, f"hnms_quality{suffix}.json"), "w") as f:
        matching = "one-to-one, greedy in score order (d2kit.evaluation.recall_at_ious)"
        json.dump({"scenes": scenes, "recall_matching": matching, "rows": rows, "bound": curve},
                  f, indent=1, default=str)  # fmt: skip


if __name__ == "__main__":
    main()
