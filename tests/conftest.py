"""Shared test fixtures: run a project's train_net in-process on the synthetic data."""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable

import pytest
from detectron2.engine import default_argument_parser
from hypothesis import HealthCheck, settings

from d2kit.paths import REPO_ROOT

# Property-based tests (tests/*/test_*properties.py). "ci", the default: a fixed, derandomized set
# of examples (the same on every run and machine), no example database, no deadline (a loaded
# CI machine must not fail a test for being slow); all of them together take well under a minute.
# "dev" (HYPOTHESIS_PROFILE=dev): random, 4x the examples, for hunting bugs locally.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PROJECTS_ROOT = os.path.join(REPO_ROOT, "projects")


def load_train_net_main(project: str | None) -> Callable:
    """``main`` of ``projects/<project>/train_net.py``; ``None``: d2kit's baseline train_net."""
    if project is None:
        from d2kit.engine import train_net

        return train_net.main
    path = os.path.join(PROJECTS_ROOT, project, "train_net.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no train_net.py for project {project!r} at {path}")
    return runpy.run_path(path, run_name=f"train_net_{project}")["main"]


@pytest.fixture
def run_train_net(tmp_path):
    """Run a project's train_net ``main`` in this process; return its evaluation results.

    Usage: ``run_train_net("HNMS", "configs/HNMS/x.yaml", "SOLVER.MAX_ITER", "2")``; keyword
    arguments ``eval_only``, ``resume`` and ``output_dir`` (default: a fresh tmp dir) map to the
    train_net flags. Returns detectron2's results dict, e.g. ``{"bbox": {"AP": ...}}``.
    """

    def run(project, config_file, *opts, eval_only=False, resume=False, output_dir=None):
        main = load_train_net_main(project)
        output_dir = str(output_dir or tmp_path / "output")
        argv = ["--config-file", config_file]
        argv += ["--eval-only"] if eval_only else []
        argv += ["--resume"] if resume else []
        argv += ["OUTPUT_DIR", output_dir, *[str(o) for o in opts]]
        return main(default_argument_parser().parse_args(argv))

    return run
