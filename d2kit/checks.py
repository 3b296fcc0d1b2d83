"""Checks of config values that every project's ``check_<pkg>_config`` uses."""

import math
import numbers

__all__ = ["is_real_number", "is_integer", "require_key"]


def is_real_number(value) -> bool:
    """A finite real number (NumPy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value) -> bool:
    """An integral number (NumPy integers included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_key(ok: bool, key: str, expected: str, value) -> None:
    """Raise ``ValueError("<key> must be <expected>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key} must be {expected}, got {value!r}")
