"""Helpers the benchmarks share."""

import fcntl
import json
import os
import statistics
import time

__all__ = [
    "CallTimer",
    "difference_verdict",
    "mean_std",
    "training_log",
    "update_results_json",
]


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


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values`` over seeds or repeats (std 0 for a
    single value; NaN, NaN for none)."""
    values = list(values)
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def training_log(run_dir: str) -> list[dict]:
    """The records detectron2's JSONWriter wrote to ``<run_dir>/metrics.json`` during training
    (one per logging period; evaluation results are records too); empty if the file is missing."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _rounded(obj, digits: int):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def update_results_json(
    path: str, section: str, key, value, *, default=None, compact_digits: int | None = None
) -> None:
    """Merge ``value`` into the results file ``path`` as ``table[section][key]`` (``key`` None:
    the whole section), under a lock file so that parallel runs do not lose each other's entries.

    ``compact_digits``: write floats rounded to that many decimals on one line (for results
    with long sweeps), instead of indented JSON.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = {}
        if os.path.exists(path):
            with open(path) as f:
                table = json.load(f)
        if key is None:
            table[section] = value
        else:
            table.setdefault(section, {})[key] = value
        table = json.loads(json.dumps(table, default=default))
        with open(path, "w") as f:
            if compact_digits is None:
                json.dump(table, f, indent=2, sort_keys=True)
            else:
                json.dump(_rounded(table, compact_digits), f, sort_keys=True, separators=(",", ":"))
            f.write("\n")


def difference_verdict(difference: float, spread: float) -> str:
    """How the benchmarks name a difference between two runs over seeds: a gain or a loss only
    when it exceeds the spread over seeds (std or range, the caller's choice), otherwise
    "no difference"."""
    if abs(difference) <= spread:
        return "no difference"
    return "gain" if difference > 0 else "loss"
