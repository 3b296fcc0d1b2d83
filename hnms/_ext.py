"""Loads the compiled kernels (``hnms._C``) if they were built; the pure-torch path works without.

``load()`` returns the module or ``None``. Without it every function of :mod:`hnms` falls back to
the pure-torch reference (:mod:`hnms.reference`); this is logged once.
"""

import importlib
import logging

__all__ = ["load", "has_cuda_kernels"]

logger = logging.getLogger(__name__)

_STATE = {"loaded": False, "module": None}


def load():
    """Import ``hnms._C`` once (which registers ``torch.ops.hnms.*``); ``None`` if unavailable."""
    if not _STATE["loaded"]:
        _STATE["loaded"] = True
        try:
            _STATE["module"] = importlib.import_module("hnms._C")
        except ImportError as e:
            _STATE["module"] = None
            logger.warning(
                "hnms._C is not built (%s); using the pure-torch HNMS. Build the C++/CUDA kernels "
                "with `pip install --no-build-isolation -e .` (FORCE_CUDA=1 for CUDA).",
                e,
            )
    return _STATE["module"]


def has_cuda_kernels() -> bool:
    """Whether ``hnms._C`` is loaded and was compiled with the CUDA kernels."""
    mod = load()
    return mod is not None and bool(mod.compiled_with_cuda())
