"""Logging of what HNMS decides to detectron2's event storage, when one is active."""

from detectron2.utils.events import get_event_storage


def _storage():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage context (plain inference)
        return None


def put_scalar(name: str, value: float) -> None:
    """``get_event_storage().put_scalar(name, value)`` if a storage exists (training), else skip."""
    storage = _storage()
    if storage is not None:
        storage.put_scalar(name, float(value))


def put_kept_fraction(name: str, num_in, num_out) -> None:
    """Log the fraction of boxes that survive a suppression step (1 when there were none).

    ``num_in`` and ``num_out`` are sizes (``x.shape[0]``): ints, or traced values while a model
    is traced, when no storage is active and they are not read.
    """
    storage = _storage()
    if storage is not None:
        storage.put_scalar(name, float(num_out) / float(num_in) if num_in > 0 else 1.0)
