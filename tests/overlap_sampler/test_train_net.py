"""End to end through train_net.py: Mask R-CNN with the Overlap Sampler trains a few iterations,
then its saved weights are evaluated with ``--eval-only`` (COCOEvaluator, box and mask AP on
synth_shapes_val_mini); the IoU-balanced baseline trains through the same script."""

from d2kit.testing import smoke_opts

QUICK = "configs/OverlapSampler/quick_schedules"
SHORT = smoke_opts("synth_shapes_val_mini")


def test_mask_rcnn_trains_and_evaluates(run_train_net, tmp_path):
    config = f"{QUICK}/mask_rcnn_R_18_FPN_quick_overlap_sampler_synth_shapes.yaml"
    out = tmp_path / "run"
    run_train_net("OverlapSampler", config, *SHORT, output_dir=out)
    weights = out / "model_final.pth"
    assert weights.is_file()
    results = run_train_net(
        "OverlapSampler", config, *SHORT, "MODEL.WEIGHTS", weights, eval_only=True
    )
    assert 0.0 <= results["bbox"]["AP"] <= 100.0  # a number (NaN fails)
    assert 0.0 <= results["segm"]["AP"] <= 100.0


def test_iou_balanced_baseline_trains(run_train_net, tmp_path):
    config = f"{QUICK}/faster_rcnn_R_18_FPN_quick_iou_balanced_synth_shapes.yaml"
    out = tmp_path / "run"
    run_train_net("OverlapSampler", config, *SHORT, "TEST.EVAL_PERIOD", "0", output_dir=out)
    assert (out / "model_final.pth").is_file()
