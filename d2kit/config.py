"""Config keys every project shares (added by ``d2kit.engine.train_net.setup`` before a project's
own keys)."""

from detectron2.config import CfgNode as CN

from .compose import add_compose_config
from .evaluation import DEFAULT_AP_IOUS

__all__ = ["add_d2kit_config"]


def add_d2kit_config(cfg: CN) -> None:
    """Add the shared keys to ``cfg`` in place (idempotent)."""
    # AP at these single IoU thresholds (multiples of 0.05 in [0.5, 0.95]) is reported next to
    # COCO's AP, as AP50, AP60, ... plus "AP50:90" (the mean over 0.50:0.05:0.90); () turns it off.
    cfg.TEST.AP_AT_IOUS = DEFAULT_AP_IOUS
    # MODEL.COMPOSE (a method per step) and MODEL.SUPPRESSION, read by the Composed* heads
    add_compose_config(cfg)
