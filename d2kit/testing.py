"""Helpers for the tests of every project."""

__all__ = ["BLOCK_COMPILED_OP", "smoke_opts"]

#: Python source that, run first in a fresh interpreter (``python -c``), makes ``import hnms._C``
#: fail, as on a machine where the op was never compiled.
BLOCK_COMPILED_OP = """
import importlib.abc, sys

class _BlockCompiledOp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hnms._C":
            raise ImportError("blocked for the test")
        return None

sys.meta_path.insert(0, _BlockCompiledOp())
"""


def smoke_opts(test_set: str, iters: int = 2) -> tuple[str, ...]:
    """Config overrides for a smoke run: ``iters`` iterations of batch 2, then COCO evaluation.

    A model trained for a few iterations from scratch scores below the default test thresholds
    (0.05); they are set to 0 so that COCOEvaluator has detections to score and AP is a number.

    Args:
        test_set: the registered dataset to evaluate on, e.g. ``"synth_shapes_val_mini"``.
        iters: SOLVER.MAX_ITER.
    """
    return (
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TEST", f"('{test_set}',)",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    )  # fmt: skip
