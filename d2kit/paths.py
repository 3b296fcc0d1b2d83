"""Where things live: the repository's configs and the on-disk dataset cache."""

import os

__all__ = ["REPO_ROOT", "CONFIGS_ROOT", "datasets_root", "resolve_config_file"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_ROOT = os.path.join(REPO_ROOT, "configs")

#: Environment variable that relocates the dataset directory (synthetic caches + real datasets).
DATASETS_ENV = "D2KIT_DATASETS"


def datasets_root() -> str:
    """The dataset directory: ``$D2KIT_DATASETS`` if set, else ``<repo>/datasets``."""
    return os.path.abspath(os.environ.get(DATASETS_ENV, os.path.join(REPO_ROOT, "datasets")))


def resolve_config_file(path: str) -> str:
    """Find a config file given as a path or relative to the repository's ``configs/``.

    ``configs/HNMS/x.yaml``, ``HNMS/x.yaml`` and an absolute path all work from any directory.

    Raises:
        FileNotFoundError: naming every place that was looked at.
    """
    candidates = [path, os.path.join(REPO_ROOT, path), os.path.join(CONFIGS_ROOT, path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(
        f"Config file {path!r} not found; looked at {candidates}. "
        f"Pass a path to a YAML file, or one relative to {CONFIGS_ROOT}."
    )
