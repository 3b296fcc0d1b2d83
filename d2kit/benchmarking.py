"""Helpers the benchmarks share."""

import statistics
import time

__all__ = ["CallTimer"]


class CallTimer:
    """Wraps a callable (typically a bound method put back in its place) and records the wall
    time of every call in ``times`` (seconds), also when the call raises."""

    def __init__(self, fn):
        self.fn = fn
        self.times = []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.times.append(time.perf_counter() - start)

    @property
    def total(self) -> float:
        """Seconds over all calls."""
        return sum(self.times)

    def mean_ms(self, skip: int = 1) -> float:
        """Mean milliseconds per call without the first ``skip`` calls (one-time warm-up costs),
        unless there are no more; NaN without calls."""
        times = self.times[skip:] if len(self.times) > skip else self.times
        return 1e3 * statistics.mean(times) if times else float("nan")
