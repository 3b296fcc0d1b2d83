"""End to end through the shared train_net (every project's keys): each shipped combination trains
two iterations and is evaluated with COCOEvaluator; ``--eval-only`` reloads the weights."""

import math

import pytest
from composed_helpers import COMBINATIONS

from d2kit.testing import smoke_opts

SHORT = smoke_opts("synth_shapes_val_mini")


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_combination_trains_and_evaluates(run_composed_train_net, tmp_path, name):
    out = tmp_path / name
    results = run_composed_train_net(COMBINATIONS[name], *SHORT, output_dir=out)
    bbox = results["bbox"]
    assert not math.isnan(bbox["AP"]) and 0.0 <= bbox["AP"] <= 100.0
    for key in ("AP50", "AP60", "AP70", "AP80", "AP90"):
        assert 0.0 <= bbox[key] <= 100.0 or math.isnan(bbox[key]), key
    if name.startswith("mask"):
        assert 0.0 <= results["segm"]["AP"] <= 100.0
    assert (out / "model_final.pth").is_file()
    if name == "all_in_one":
        again = run_composed_train_net(
            COMBINATIONS[name], *SHORT, "MODEL.WEIGHTS", out / "model_final.pth",
            eval_only=True, output_dir=tmp_path / "eval",
        )  # fmt: skip
        assert again["bbox"]["AP"] == pytest.approx(bbox["AP"], abs=1e-9)
