"""Config keys every project shares (added by ``d2kit.engine.train_net.setup`` before a project's
own keys)."""

from detectron2.config import CfgNode as CN

from .compose import add_compose_config
from .evaluation import DEFAULT_AP_IOUS

__all__ = ["add_d2kit_config", "add_overhead_aug_config"]


def add_d2kit_config(cfg: CN) -> None:
    """Add the shared keys to ``cfg`` in place (idempotent)."""
    # AP at these single IoU thresholds (multiples of 0.05 in [0.5, 0.95]) is reported next to
    # COCO's AP, as AP50, AP60, ... plus "AP50:90" (the mean over 0.50:0.05:0.90); () turns it off.
    cfg.TEST.AP_AT_IOUS = DEFAULT_AP_IOUS
    # (iou, score_threshold): box precision and recall at that IoU among the detections scored
    # >= score_threshold, one-to-one matching (d2kit.evaluation.box_precision_recall), reported
    # as P@<iou>, R@<iou> (%), P@<iou>/img, R@<iou>/img (per-image means, %), TP@, FP@, FN@<iou>
    # next to the bbox AP; () is off. NeonTreeEvaluation: (0.4, 0.3) (NEON_BOX_PR_AT; the
    # benchmark fixes the IoU 0.4, the score threshold 0.3 is ours)
    cfg.TEST.BOX_PR_AT = ()
    # MODEL.COMPOSE (a method per step) and MODEL.SUPPRESSION, read by the Composed* heads
    add_compose_config(cfg)
    add_overhead_aug_config(cfg)


def add_overhead_aug_config(cfg: CN) -> None:
    """``INPUT.OVERHEAD_AUG``: training augmentation for overhead (aerial) imagery, appended by
    ``d2kit.engine.Trainer.build_train_loader`` after Detectron2's resize and flip (see
    :func:`d2kit.data.overhead_aug.build_overhead_augmentation`)."""
    cfg.INPUT.OVERHEAD_AUG = CN()
    # off by default: a model zoo config trains exactly as in Detectron2
    cfg.INPUT.OVERHEAD_AUG.ENABLED = False
    # flips with probability 0.5 each; a direction INPUT.RANDOM_FLIP already flips is not added
    # again (with both flips and ROTATE_90 every symmetry of the square has probability 1/8)
    cfg.INPUT.OVERHEAD_AUG.HORIZONTAL_FLIP = True
    cfg.INPUT.OVERHEAD_AUG.VERTICAL_FLIP = True
    # rotation by 0, 90, 180 or 270 degrees (probability 1/4 each), exact: pixels are permuted
    cfg.INPUT.OVERHEAD_AUG.ROTATE_90 = True
    # photometric factors drawn uniformly from (low, high); 1 keeps the image, () or (1, 1) is off.
    # brightness scales the pixels, contrast blends with the image mean, saturation with its grey
    # (luma) image; applied in this order after the geometric ones
    cfg.INPUT.OVERHEAD_AUG.BRIGHTNESS = (0.8, 1.2)
    cfg.INPUT.OVERHEAD_AUG.CONTRAST = (0.8, 1.2)
    cfg.INPUT.OVERHEAD_AUG.SATURATION = (0.8, 1.2)
