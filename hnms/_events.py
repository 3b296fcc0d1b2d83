"""Logging of what HNMS decides to detectron2's event storage, when one is active."""

from detectron2.utils.events import get_event_storage


def put_scalar(name: str, value: float) -> None:
    """``get_event_storage().put_scalar(name, value)`` if a storage exists (training), else skip."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage context (plain inference)
        return
    storage.put_scalar(name, float(value))


def put_kept_fraction(name: str, num_in: int, num_out: int) -> None:
    """Log the fraction of boxes that survive a suppression step (1 when there were none)."""
    put_scalar(name, num_out / num_in if num_in > 0 else 1.0)
