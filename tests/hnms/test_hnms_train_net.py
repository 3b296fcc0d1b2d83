"""End to end: projects/HNMS/train_net.py trains 2 iterations on synth_crowd, then evaluates the
saved weights with ``--eval-only`` (COCOEvaluator on synth_crowd_val_mini)."""

import pytest

from d2kit.testing import smoke_opts

pytest.importorskip("detectron2")

QUICK = "configs/HNMS/quick_schedules"
SHORT = smoke_opts("synth_crowd_val_mini")


def _train_then_eval(run_train_net, config, out, *eval_configs):
    run_train_net("HNMS", f"{QUICK}/{config}", *SHORT, output_dir=out)
    weights = out / "model_final.pth"
    assert weights.is_file()
    aps = []
    for cfg in (config, *eval_configs):
        results = run_train_net(
            "HNMS", f"{QUICK}/{cfg}", *SHORT, "MODEL.WEIGHTS", weights, eval_only=True
        )
        aps.append(results["bbox"]["AP"])
    return aps


def test_hash_rpn_and_roi_prefilter_train_and_evaluate(run_train_net, tmp_path):
    aps = _train_then_eval(
        run_train_net,
        "hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml",
        tmp_path / "rcnn",
        "hnms_faster_rcnn_R_18_FPN_quick_synth_crowd_roi_prefilter.yaml",
    )
    for ap in aps:
        assert 0.0 <= ap <= 100.0  # a number (NaN fails), computed by COCOEvaluator


def test_prefiltered_retinanet_trains_and_evaluates(run_train_net, tmp_path):
    aps = _train_then_eval(
        run_train_net,
        "hnms_retinanet_R_18_FPN_quick_synth_crowd.yaml",
        tmp_path / "retina",
        "hnms_retinanet_soft_nms_R_18_FPN_quick_synth_crowd.yaml",  # Appendix C.3
    )
    for ap in aps:
        assert 0.0 <= ap <= 100.0
