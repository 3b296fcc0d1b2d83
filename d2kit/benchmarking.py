"""Helpers the benchmarks share: timing, statistics over seeds, the results file, the
convergence protocol, and running (resumable, claimable) trainings."""

import contextlib
import fcntl
import glob
import json
import logging
import math
import os
import statistics
import time

__all__ = [
    "CLAIM_FILE",
    "CallTimer",
    "detach_new_log_handlers",
    "forward_timing_trainer",
    "claim_run",
    "converged_scale",
    "difference_verdict",
    "evaluate_run",
    "learning_curve",
    "load_results",
    "mean_std",
    "paired_difference",
    "paired_verdict",
    "remove_periodic_checkpoints",
    "run_train_net",
    "scaled_schedule_opts",
    "seconds_per_iter",
    "train_run",
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

    A step must fall strictly inside the run (Detectron2's scheduler refuses one at
    ``MAX_ITER``), so on very short runs (a few iterations, for smoke tests) steps that round to
    ``MAX_ITER`` or coincide are dropped; from 20 iterations on both steps are kept.

    >>> scaled_schedule_opts(400, 4)
    ['SOLVER.MAX_ITER', '1600', 'SOLVER.STEPS', '(1280, 1520)']
    >>> scaled_schedule_opts(2, 2)
    ['SOLVER.MAX_ITER', '4', 'SOLVER.STEPS', '(3,)']
    """
    if base_iters < 1 or scale < 1:
        raise ValueError(f"base_iters and scale must be >= 1, got {base_iters} and {scale}")
    max_iter = base_iters * scale
    steps = sorted({int(round(f * max_iter)) for f in STEP_FRACTIONS} & set(range(1, max_iter)))
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(tuple(steps))]


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

    ``metric``: the flattened key of the evaluation results, ``"<task>/<metric>"`` with one test
    set (``"bbox/AP"``) and ``"<dataset>/<task>/<metric>"`` with several in ``DATASETS.TEST``
    (``"neon_trees_val/bbox/AP"``).
    """
    curve = {}
    for record in training_log(run_dir):
        if metric in record:
            curve[min(int(record["iteration"]) + 1, max_iter)] = float(record[metric])
    return [[it, value] for it, value in sorted(curve.items())]


def seconds_per_iter(run_dir: str) -> float:
    """Median seconds per training iteration (the ``time`` of detectron2's logged records, data
    loading included, evaluations not) in ``<run_dir>/metrics.json``; NaN without records."""
    times = [r["time"] for r in training_log(run_dir) if "time" in r]
    return statistics.median(times) if times else float("nan")


def load_results(path: str) -> dict:
    """The results file ``path`` (see :func:`update_results_json`) as a dict; ``{}`` if it does
    not exist yet."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def paired_difference(values: dict, reference: dict) -> tuple[float, float, int]:
    """Mean and std of ``values[seed] - reference[seed]`` over the seeds both have (NaN
    differences left out), and how many there are: the comparison of two methods paired by
    seed. ``values``, ``reference``: ``{seed: metric}``."""
    diffs = [values[s] - reference[s] for s in sorted(values) if s in reference]
    diffs = [d for d in diffs if not math.isnan(d)]
    mean, std = mean_std(diffs)
    return mean, std, len(diffs)


def paired_verdict(mean: float, std: float, n: int) -> str:
    """:func:`difference_verdict` of a paired difference (:func:`paired_difference`) against its
    std over seeds; undecided with fewer than 2 seeds."""
    if n < 2:
        return "n/a (fewer than 2 seeds)"
    return difference_verdict(mean, std)


# ------------------------------------------------------------------------------ runs on disk

#: the claim file :func:`claim_run` writes into a run's folder (the claiming process's pid)
CLAIM_FILE = "claimed_by.pid"


def _claim_is_held(path: str, empty_grace_s: float) -> bool:
    """Whether the claim file ``path`` belongs to a live process. An empty file is a claim being
    written (held) unless it is older than ``empty_grace_s``; a missing one is not held."""
    try:
        with open(path) as f:
            text = f.read().strip()
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return False
    if not text:
        return age < empty_grace_s
    try:
        pid = int(text)
    except ValueError:
        return False  # not a pid: garbage, not a claim
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's process
    return True


@contextlib.contextmanager
def claim_run(run_dir: str, empty_grace_s: float = 60.0):
    """Claim ``run_dir`` for this process while the ``with`` block runs, so that several
    processes can work through one list of runs without running any of them twice.

    Yields True when the claim is this process's: it created ``<run_dir>/claimed_by.pid``
    (:data:`CLAIM_FILE`, holding its pid) and removes it on leaving the block, also on an
    exception. Yields False, touching nothing, when a live process holds the claim. The claim of
    a process that is gone (its pid no longer runs, or the file stayed empty for longer than
    ``empty_grace_s`` seconds) is taken over. ``run_dir`` is created if needed.

    >>> with claim_run(run_dir) as mine:  # doctest: +SKIP
    ...     if mine:
    ...         train(run_dir)
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CLAIM_FILE)
    fd = None
    for _ in range(3):  # a stale claim may be taken over by another process at the same time
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if _claim_is_held(path, empty_grace_s):
                break
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # a stopped process's claim
    if fd is None:
        yield False
        return
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_periodic_checkpoints(run_dir: str) -> list[str]:
    """Delete the periodic checkpoints ``model_<iteration>.pth`` of a finished training (they
    are for resuming), keeping ``model_final.pth``; returns the removed paths."""
    removed = sorted(glob.glob(os.path.join(run_dir, "model_[0-9]*.pth")))
    for path in removed:
        os.remove(path)
    return removed


@contextlib.contextmanager
def detach_new_log_handlers():
    """Remove (and close) the logging handlers added while the block runs, when it ends.

    Detectron2's ``default_setup`` adds a console and a ``<OUTPUT_DIR>/log.txt`` handler for
    every new output folder and never removes them, so a process that trains several runs one
    after another would print each line several times and write later runs' lines into earlier
    runs' ``log.txt``."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    before = {id(logger): list(logger.handlers) for logger in loggers}
    try:
        yield
    finally:
        for logger in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
            if not isinstance(logger, logging.Logger):
                continue
            for handler in list(logger.handlers):
                if handler not in before.get(id(logger), []):
                    logger.removeHandler(handler)
                    handler.close()


def run_train_net(
    config: str, opts, *, eval_only: bool = False, resume: bool = False, trainer_cls=None
):
    """Run :func:`d2kit.engine.train_net.main` in this process, as
    ``python -m d2kit.engine.train_net --config-file config [--eval-only] [--resume] *opts``
    would (every installed project's config keys), and return its results: detectron2's
    ``{"bbox": {...}}`` for one test set, ``{dataset_name: {"bbox": {...}}}`` for several.

    ``trainer_cls``: a subclass of :class:`d2kit.engine.Trainer` (default: that class).
    """
    from detectron2.engine import default_argument_parser

    from .engine import Trainer, train_net
    from .projects import project_config_fns

    argv = ["--config-file", config] + (["--eval-only"] if eval_only else [])
    argv += ["--resume"] if resume else []
    args = default_argument_parser().parse_args(argv + [str(o) for o in opts])
    with detach_new_log_handlers():  # each run logs to its own log.txt only
        return train_net.main(
            args, config_fns=project_config_fns(), trainer_cls=trainer_cls or Trainer
        )


def train_run(config: str, opts, run_dir: str, *, trainer_cls=None) -> tuple[dict, str]:
    """Train ``config`` with ``opts`` into ``run_dir`` (``OUTPUT_DIR``), resuming from its last
    checkpoint when an earlier training there stopped (``SOLVER.CHECKPOINT_PERIOD``), then keep
    only the final weights (:func:`remove_periodic_checkpoints`).

    Returns the final evaluation's results (see :func:`run_train_net`) and the path of
    ``model_final.pth``.
    """
    resume = os.path.isfile(os.path.join(run_dir, "last_checkpoint"))
    results = run_train_net(
        config, [*opts, "OUTPUT_DIR", run_dir], resume=resume, trainer_cls=trainer_cls
    )
    remove_periodic_checkpoints(run_dir)
    return results, os.path.join(run_dir, "model_final.pth")


def evaluate_run(config: str, opts, weights: str, run_dir: str, *, trainer_cls=None) -> dict:
    """Evaluate ``weights`` (``MODEL.WEIGHTS``) under ``config`` with ``opts`` (e.g. another
    inference on a trained model's weights), writing into ``<run_dir>/eval``; returns the
    results (see :func:`run_train_net`).

    Raises:
        FileNotFoundError: ``weights`` is not a file.
    """
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights to evaluate not found: {weights}")
    opts = [*opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", os.path.join(run_dir, "eval")]
    return run_train_net(config, opts, eval_only=True, trainer_cls=trainer_cls)


def forward_timing_trainer():
    """A subclass of :class:`d2kit.engine.Trainer` whose ``build_model`` wraps the model's
    ``forward`` in a :class:`CallTimer`, kept as the class attribute ``timer`` (the last model
    built): evaluate with it (``trainer_cls`` of :func:`run_train_net`) to time inference per
    image."""
    from .engine import Trainer

    class ForwardTimingTrainer(Trainer):
        timer: CallTimer | None = None

        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            cls.timer = CallTimer(model.forward)
            model.forward = cls.timer
            return model

    return ForwardTimingTrainer
