"""End to end: both models train a few iterations through train_net.py, then evaluate the
saved weights with ``--eval-only`` (COCOEvaluator on synth_shapes_val_mini)."""

import pytest

from d2kit.testing import smoke_opts

QUICK = "configs/NoisyAnchors/quick_schedules"
SHORT = smoke_opts("synth_shapes_val_mini")


@pytest.mark.parametrize(
    "config",
    [
        "noisy_anchors_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        "noisy_anchors_released_retinanet_R_18_FPN_quick_synth_shapes.yaml",
        "noisy_anchors_faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
    ],
)
def test_train_and_evaluate_through_train_net(run_train_net, config, tmp_path):
    out = tmp_path / "run"
    run_train_net("NoisyAnchors", f"{QUICK}/{config}", *SHORT, output_dir=out)
    weights = out / "model_final.pth"
    assert weights.is_file()
    results = run_train_net(
        "NoisyAnchors", f"{QUICK}/{config}", *SHORT, "MODEL.WEIGHTS", weights, eval_only=True
    )
    ap = results["bbox"]["AP"]
    assert 0.0 <= ap <= 100.0  # a number (NaN fails), computed by COCOEvaluator
