"""The project packages of this repository, found by name (none is imported by d2kit itself)."""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["PROJECT_PACKAGES", "project_config_fns", "project_trainer"]

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


def project_trainer(meta_architecture: str):
    """The Trainer class a project package names for ``meta_architecture`` in its ``TRAINERS``
    (``{META_ARCHITECTURE: "module:Class"}``, e.g. Ref-NMS's relatedness model), or None when
    no installed package needs its own (the shared :class:`d2kit.engine.Trainer` trains it)."""
    for name in PROJECT_PACKAGES:
        if importlib.util.find_spec(name) is None:
            continue
        target = getattr(importlib.import_module(name), "TRAINERS", {}).get(meta_architecture)
        if target is not None:
            module, _, cls = target.partition(":")
            return getattr(importlib.import_module(module), cls)
    return None
