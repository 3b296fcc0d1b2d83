"""The project packages of this repository, found by name (none is imported by d2kit itself)."""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["PROJECT_PACKAGES", "project_config_fns"]

#: Every paper package; each has ``add_<name>_config``.
PROJECT_PACKAGES = ("hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms")


def project_config_fns() -> list:
    """``add_<name>_config`` of every installed project package, importing it (which also
    registers its models, components and suppressions). The composed configs
    (``configs/Composed/``) need them all; a package that is not installed is skipped."""
    fns = []
    for name in PROJECT_PACKAGES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        fns.append(getattr(module, f"add_{name}_config"))
    return fns
