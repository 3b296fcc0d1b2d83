"""How much the HNMS pre-filter removes before NMS (or Soft-NMS, Appendix C.3) in a trained
RetinaNet, and what each step costs (CPU time, single thread), image by image.

    python benchmarks/hnms_prefilter_breakdown.py [--weights PATH] [--images 8] [--alpha 0.73]
        [--suppression nms|soft_nms] [KEY VALUE ...]
        # KEY VALUE: config overrides, e.g. MODEL.RETINANET.SCORE_THRESH_TEST 0.0

Default weights: output/hnms_e2e/retina_baseline_s42_it1200/model_final.pth, the RetinaNet trained
by benchmarks/hnms_e2e.py (or pass any weights for the quick synth_crowd
RetinaNet config) on ``--images`` images of synth_crowd_val; ``--quick`` runs 2 images of
synth_crowd_val_mini with untrained weights. Prints, per image: candidate boxes, survivors of
HNMS (α, K), detections after HNMS + NMS and after NMS alone, and the three CPU times. With
``--suppression soft_nms`` the suppression is Soft-NMS (MODEL.HNMS.SOFT_NMS.*, N_t =
MODEL.RETINANET.NMS_THRESH_TEST).
"""

import argparse
import os
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from torchvision.ops import batched_nms

import hnms
import hnms.retinanet
from d2kit.engine import Trainer
from d2kit.paths import resolve_config_file

CONFIG = "HNMS/quick_schedules/hnms_retinanet_R_18_FPN_quick_synth_crowd.yaml"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WEIGHTS = os.path.join(
    HERE, "..", "output", "hnms_e2e", "retina_baseline_s42_it1200", "model_final.pth"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.73)
    parser.add_argument("--num-hashes", type=int, default=1)
    parser.add_argument("--test-set", default="synth_crowd_val")
    parser.add_argument("--suppression", choices=["nms", "soft_nms"], default="nms")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = get_cfg()
    hnms.add_hnms_config(cfg)
    cfg.merge_from_file(resolve_config_file(CONFIG))
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HNMS.PREFILTER.SUPPRESSION = args.suppression
    model = Trainer.build_model(cfg).eval()
    if args.quick:
        args.images, args.test_set = 2, "synth_crowd_val_mini"
    else:
        DetectionCheckpointer(model).load(args.weights)
    rows = []

    if args.suppression == "nms":
        patched_name = "nms_with_hash_prefilter"

        def suppress(boxes, scores, classes, thresh):
            keep = batched_nms(boxes, scores, classes, thresh)
            return keep, scores[keep]

    else:
        patched_name = "soft_nms_with_hash_prefilter"
        soft_args = dict(
            method=cfg.MODEL.HNMS.SOFT_NMS.METHOD,
            sigma=cfg.MODEL.HNMS.SOFT_NMS.SIGMA,
            iou_threshold=cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            score_threshold=cfg.MODEL.HNMS.SOFT_NMS.SCORE_THRESH,
        )

        def suppress(boxes, scores, classes, thresh):
            return hnms.batched_soft_nms(boxes, scores, classes, **soft_args)

    def timed_prefilter(boxes, scores, classes, *unused_args, **unused_kwargs):
        thresh = cfg.MODEL.RETINANET.NMS_THRESH_TEST
        t0 = time.process_time()
        pre = hnms.batched_hnms(boxes, scores, classes, args.alpha, args.num_hashes)
        t1 = time.process_time()
        keep, new_scores = suppress(boxes[pre], scores[pre], classes[pre], thresh)
        t2 = time.process_time()
        alone, _ = suppress(boxes, scores, classes, thresh)
        t3 = time.process_time()
        rows.append((len(boxes), len(pre), len(keep), len(alone),
                     1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)))  # fmt: skip
        if args.suppression == "soft_nms":  # the caller expects (keep, scores)
            return pre[keep], new_scores
        return pre[keep]

    original = getattr(hnms.retinanet, patched_name)
    setattr(hnms.retinanet, patched_name, timed_prefilter)
    try:
        loader = build_detection_test_loader(cfg, args.test_set)
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= args.images:
                    break
                model(batch)
    finally:
        setattr(hnms.retinanet, patched_name, original)
    s = "NMS" if args.suppression == "nms" else "Soft-NMS"
    print(f"α={args.alpha} K={args.num_hashes}, {s}, CPU time, 1 thread")
    print(f"| boxes | after HNMS | after HNMS+{s} | after {s} alone | HNMS ms "
          f"| {s} after HNMS ms | {s} alone ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f} |".format(*r))
    if rows:
        mean = [sum(c) / len(rows) for c in zip(*rows)]
        print("| mean {:.0f} | {:.0f} | {:.0f} | {:.0f} | {:.2f} | {:.2f} | {:.2f} |".format(*mean))


if __name__ == "__main__":
    main()
