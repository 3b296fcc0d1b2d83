"""The package imports and works (pure torch) when hnms._C cannot be imported."""

import subprocess
import sys
import textwrap

from d2kit.testing import BLOCK_COMPILED_OP


def test_import_and_run_without_compiled_kernels():
    code = BLOCK_COMPILED_OP + textwrap.dedent(
        """
        import logging
        logging.basicConfig(level=logging.WARNING)
        import torch
        import hnms
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.2, 0.0, 10.2, 10.0], [50, 50, 60, 60.0]])
        scores = torch.tensor([0.5, 0.9, 0.3])
        print("keep", hnms.hnms(boxes, scores, 0.7).tolist())
        print("keep", hnms.batched_hnms(boxes, scores, torch.tensor([0, 1, 0]), 0.7).tolist())
        print("codes", hnms.iou_hash(boxes, 0.7).shape)
        keep, new = hnms.soft_nms(boxes, scores, "linear", iou_threshold=0.5)
        print("soft", keep.tolist(), [round(s, 3) for s in new.tolist()])
        print("has_c", hnms._ext.load() is not None, "hnms._C" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.splitlines()
    assert lines == [
        "keep [1, 2]",
        "keep [1, 0, 2]",
        "codes torch.Size([3, 4])",
        # box 0 has IoU 98 / 102 = 0.961 with box 1: its score decays to 0.5 (1 - 0.961) = 0.020
        "soft [1, 2, 0] [0.9, 0.3, 0.02]",
        "has_c False False",
    ]
    assert out.stderr.count("hnms._C is not built") == 1
