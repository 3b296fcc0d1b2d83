"""End to end through projects/RankNMS/train_net.py: each quick config trains two iterations and
is evaluated with COCOEvaluator (AP and AP at IoU 0.5 ... 0.9); ``--eval-only`` on the saved
weights reproduces the AP."""

import math

import pytest

from d2kit.testing import smoke_opts

QUICK = "configs/RankNMS/quick_schedules"
SHORT = smoke_opts("synth_shapes_val_mini")


@pytest.mark.parametrize("kind", ["faster", "mask", "cascade"])
def test_quick_config_trains_and_evaluates(run_train_net, tmp_path, kind):
    config = f"{QUICK}/rank_nms_{kind}_rcnn_R_18_FPN_quick_synth_shapes.yaml"
    out = tmp_path / "run"
    results = run_train_net("RankNMS", config, *SHORT, output_dir=out)
    bbox = results["bbox"]
    for key in ("AP", "AP50", "AP60", "AP70", "AP80", "AP90", "AP50:90"):
        assert 0.0 <= bbox[key] <= 100.0 or math.isnan(bbox[key]), key
    assert not math.isnan(bbox["AP"])
    if kind == "mask":
        assert 0.0 <= results["segm"]["AP"] <= 100.0
    if kind == "faster":
        again = run_train_net(
            "RankNMS", config, *SHORT, "MODEL.WEIGHTS", out / "model_final.pth", eval_only=True
        )
        assert again["bbox"]["AP"] == pytest.approx(bbox["AP"], abs=1e-9)
        assert again["bbox"]["AP80"] == pytest.approx(bbox["AP80"], abs=1e-9, nan_ok=True)
