"""Every package imports (and the shared op works, in pure torch) without the compiled hnms._C."""

import importlib.util
import os
import subprocess
import sys
import textwrap

from d2kit.paths import REPO_ROOT

PACKAGES = ["d2kit", "hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms"]

BLOCK_AND_IMPORT = textwrap.dedent(
    """
    import importlib, sys

    class BlockCompiledOp:
        def find_spec(self, name, path=None, target=None):
            if name == "hnms._C":
                raise ImportError("hnms._C blocked for this test")

    sys.meta_path.insert(0, BlockCompiledOp())
    for name in sys.argv[1:]:
        importlib.import_module(name)
    import torch
    import hnms
    boxes = torch.tensor([[0., 0., 10., 10.], [0.2, 0., 10.2, 10.], [50., 50., 60., 60.]])
    keep = hnms.hnms(boxes, torch.tensor([0.9, 0.8, 0.7]), alpha=0.7)
    assert keep.tolist() == [0, 2], keep
    print("imported", *sys.argv[1:])
    """
)


def test_packages_import_without_compiled_op():
    present = [p for p in PACKAGES if importlib.util.find_spec(p) is not None]
    assert {"d2kit", "hnms"} <= set(present)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_IMPORT, *present],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imported " + " ".join(present) in proc.stdout
