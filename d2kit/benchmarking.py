"""Helpers the benchmarks share."""

import fcntl
import json
import os
import statistics
import time

__all__ = [
    "CallTimer",
    "converged_scale",
    "difference_verdict",
    "learning_curve",
    "mean_std",
    "scaled_schedule_opts",
    "training_log",
    "update_results_json",
]

#: where a scaled schedule puts its two LR steps, as fractions of the run (the quick configs'
#: STEPS (320, 380) of 400 iterations)
STEP_FRACTIONS = (0.8, 0.95)


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


def scaled_schedule_opts(base_iters: int, scale: int) -> list[str]:
    """Config overrides for ``scale`` times a schedule of ``base_iters`` iterations:
    ``SOLVER.MAX_ITER`` scaled, the LR steps at the same fractions of the run
    (:data:`STEP_FRACTIONS`), the warm-up unchanged.

    >>> scaled_schedule_opts(400, 4)
    ['SOLVER.MAX_ITER', '1600', 'SOLVER.STEPS', '(1280, 1520)']
    """
    if base_iters < 1 or scale < 1:
        raise ValueError(f"base_iters and scale must be >= 1, got {base_iters} and {scale}")
    max_iter = base_iters * scale
    steps = tuple(int(round(f * max_iter)) for f in STEP_FRACTIONS)
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps)]


def converged_scale(ap_by_scale: dict[int, list[float]]) -> tuple[int | None, list[dict]]:
    """The convergence protocol, on a baseline's AP per schedule scale (one value per seed).

    The converged schedule is the shortest scale ``k`` for which ``2k`` was also measured (each
    with at least 2 seeds) and doubling moved the mean AP by less than the seed std (the larger
    std of the two scales). Returns that scale (None if no measured doubling qualifies) and one
    row per measured doubling: ``{"scale", "doubled", "delta", "std", "converged"}``.
    """
    rows = []
    found = None
    for k in sorted(ap_by_scale):
        if 2 * k not in ap_by_scale or min(len(ap_by_scale[k]), len(ap_by_scale[2 * k])) < 2:
            continue
        mean_k, std_k = mean_std(ap_by_scale[k])
        mean_2k, std_2k = mean_std(ap_by_scale[2 * k])
        std = max(std_k, std_2k)
        delta = mean_2k - mean_k
        converged = abs(delta) < std
        rows.append(
            {"scale": k, "doubled": 2 * k, "delta": delta, "std": std, "converged": converged}
        )
        if converged and found is None:
            found = k
    return found, rows


def learning_curve(run_dir: str, max_iter: int, metric: str = "bbox/AP") -> list[list[float]]:
    """``[[iterations trained, value], ...]`` of the evaluations during training, read from
    ``<run_dir>/metrics.json`` (``TEST.EVAL_PERIOD``); when a resumed run evaluated an iteration
    again, the later record wins.

    Detectron2 stores a periodic evaluation after iteration ``i`` (0-based) at ``i``, and the
    final one, after the loop, at ``max_iter``: both become the number of iterations trained.
    """
    curve = {}
    for record in training_log(run_dir):
        if metric in record:
            curve[min(int(record["iteration"]) + 1, max_iter)] = float(record[metric])
    return [[it, value] for it, value in sorted(curve.items())]
