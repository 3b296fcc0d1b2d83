"""Where things live: the config files and the on-disk dataset cache.

The package runs in one of two ways, and every function here works in both:

* **From a source checkout** (``make setup``, ``pip install -e .``): the package's parent
  directory holds ``setup.py`` and ``configs/``. Configs are read from ``<checkout>/configs/``
  (edit them there) and datasets are cached under ``<checkout>/datasets/``.
* **Installed from a wheel or an sdist** (``pip install .``): the build copies ``configs/`` into
  the package as ``d2kit/model_zoo/configs/``, and datasets are cached in a per-user directory
  (``$XDG_CACHE_HOME/d2kit/datasets``, by default ``~/.cache/d2kit/datasets``).

``$D2KIT_DATASETS`` relocates the dataset cache in both cases.
"""

from __future__ import annotations

import difflib
import os

__all__ = [
    "REPO_ROOT",
    "CONFIGS_ROOT",
    "DATASETS_ENV",
    "configs_root",
    "datasets_root",
    "get_config_file",
    "is_source_checkout",
    "list_config_files",
    "resolve_config_file",
]

#: Directory of the ``d2kit`` package.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: The package's parent directory: the repository root in a source checkout; the installation
#: directory (e.g. ``site-packages``) when installed. :func:`is_source_checkout` tells which.
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
#: Where a wheel or sdist build puts the configs inside the package (absent in a checkout).
PACKAGED_CONFIGS_ROOT = os.path.join(PACKAGE_DIR, "model_zoo", "configs")

#: Environment variable that relocates the dataset directory (synthetic caches + real datasets).
DATASETS_ENV = "D2KIT_DATASETS"

_CONFIGS_PREFIX = "configs" + os.sep


def is_source_checkout(root: str | None = None) -> bool:
    """Whether ``root`` (default: :data:`REPO_ROOT`, the package's parent) is a source checkout
    of this repository: it holds ``setup.py`` and a ``configs/`` directory.

    An installation directory such as ``site-packages`` has neither.
    """
    root = REPO_ROOT if root is None else root
    return os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(
        os.path.join(root, "configs")
    )


def configs_root() -> str:
    """The directory that config names are relative to: ``<checkout>/configs`` in a source
    checkout, else the configs shipped in the package (``d2kit/model_zoo/configs``)."""
    if is_source_checkout():
        return os.path.join(REPO_ROOT, "configs")
    return PACKAGED_CONFIGS_ROOT


#: :func:`configs_root` at import time.
CONFIGS_ROOT = configs_root()


def datasets_root() -> str:
    """The dataset directory (synthetic caches, and the default root of the referring data).

    In this order:

    1. ``$D2KIT_DATASETS`` when set and not empty (relative paths are taken from the current
       directory);
    2. ``<checkout>/datasets`` when the package runs from a source checkout
       (:func:`is_source_checkout`);
    3. otherwise a per-user cache: ``$XDG_CACHE_HOME/d2kit/datasets`` when ``XDG_CACHE_HOME`` is
       set to an absolute path, else ``~/.cache/d2kit/datasets``.

    Returns:
        an absolute path; the directory is not created here.
    """
    env = os.environ.get(DATASETS_ENV)
    if env:
        return os.path.abspath(env)
    if is_source_checkout():
        return os.path.join(REPO_ROOT, "datasets")
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "d2kit", "datasets")


def list_config_files() -> list[str]:
    """Names of every YAML under :func:`configs_root`, relative to it, sorted
    (e.g. ``"HNMS/hnms_faster_rcnn_R_50_FPN_1x.yaml"``)."""
    root = configs_root()
    names = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            if filename.endswith((".yaml", ".yml")):
                rel = os.path.relpath(os.path.join(dirpath, filename), root)
                names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def get_config_file(config_path: str) -> str:
    """Absolute path of a config by its name relative to ``configs/``, from a checkout or from
    the installed package alike: ``get_config_file("HNMS/hnms_faster_rcnn_R_50_FPN_1x.yaml")``.

    Its ``_BASE_`` files sit beside it as in the repository, so relative ``_BASE_`` references
    resolve when detectron2 merges it.

    Raises:
        FileNotFoundError: naming the configs directory and the closest config names.
    """
    root = configs_root()
    name = config_path.replace("/", os.sep)
    path = os.path.normpath(os.path.join(root, name))
    if os.path.isfile(path) and not os.path.relpath(path, root).startswith(os.pardir):
        return path
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Config {config_path!r} not found: there is no configs directory at {root} "
            "(a build of this package copies configs/ into d2kit/model_zoo/configs)."
        )
    close = difflib.get_close_matches(config_path, list_config_files(), n=3, cutoff=0.5)
    hint = f" Closest names: {close}." if close else ""
    raise FileNotFoundError(f"Config {config_path!r} not found under {root}.{hint}")


def resolve_config_file(path: str) -> str:
    """Find a config file given as a path or as a name relative to ``configs/``.

    ``configs/HNMS/x.yaml``, ``HNMS/x.yaml`` and an absolute path all work from any directory,
    in a source checkout and in an installed package (where ``configs/HNMS/x.yaml`` means the
    shipped ``HNMS/x.yaml``). A path to an existing file (absolute, or relative to the current
    directory) is taken first.

    Raises:
        FileNotFoundError: naming every place that was looked at.
    """
    root = configs_root()
    candidates = [path]
    if is_source_checkout():
        candidates.append(os.path.join(REPO_ROOT, path))
    candidates.append(os.path.join(root, path))
    normalized = os.path.normpath(path)
    if normalized.startswith(_CONFIGS_PREFIX):
        candidates.append(os.path.join(root, normalized[len(_CONFIGS_PREFIX) :]))
    candidates = list(dict.fromkeys(candidates))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(
        f"Config file {path!r} not found; looked at {candidates}. "
        f"Pass a path to a YAML file, or a name relative to {root} "
        "(d2kit.paths.list_config_files() lists them)."
    )
