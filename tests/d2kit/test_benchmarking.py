"""d2kit.benchmarking: CallTimer records every call, returns the result, survives exceptions;
mean_std and training_log, the statistics and the training log the benchmarks share; the
convergence protocol (scaled schedules, converged_scale, learning curves); paired differences;
the run folders on disk (claims, periodic checkpoints, the results file)."""

import json
import math
import os
import subprocess
import sys

import pytest

from d2kit.benchmarking import (
    CLAIM_FILE,
    CallTimer,
    claim_run,
    converged_scale,
    learning_curve,
    load_results,
    mean_std,
    paired_difference,
    paired_verdict,
    remove_periodic_checkpoints,
    scaled_schedule_opts,
    seconds_per_iter,
    training_log,
    update_results_json,
)


def test_call_timer_records_every_call_and_returns_the_result():
    timer = CallTimer(lambda x, y=1: x + y)
    assert math.isnan(timer.mean_ms())
    assert timer(1) == 2 and timer(2, y=3) == 5
    assert len(timer.times) == 2 and all(t >= 0 for t in timer.times)
    assert timer.total == pytest.approx(sum(timer.times))
    # the first call is left out of the mean unless it is the only one
    assert timer.mean_ms() == pytest.approx(1e3 * timer.times[1])
    assert timer.mean_ms(skip=0) == pytest.approx(1e3 * timer.total / 2)
    assert timer.mean_ms(skip=5) == pytest.approx(1e3 * timer.total / 2)


def test_call_timer_records_a_call_that_raises():
    def fail():
        raise ValueError("boom")

    timer = CallTimer(fail)
    with pytest.raises(ValueError, match="boom"):
        timer()
    assert len(timer.times) == 1


def test_mean_std_is_the_sample_statistic_with_defined_edge_cases():
    assert mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0)))
    assert mean_std(x for x in [4.0]) == (4.0, 0.0)  # one seed: no spread
    assert all(math.isnan(v) for v in mean_std([]))


def test_training_log_reads_every_record_and_is_empty_without_the_file(tmp_path):
    records = [{"iteration": 19, "time": 0.5}, {"iteration": 39, "time": 0.4, "bbox/AP": 1.0}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert training_log(str(tmp_path)) == records
    assert training_log(str(tmp_path / "missing")) == []


def test_scaled_schedule_keeps_the_step_fractions_of_the_quick_schedule():
    # the quick configs: 400 iterations, steps at 320 and 380
    assert scaled_schedule_opts(400, 1) == [
        "SOLVER.MAX_ITER", "400", "SOLVER.STEPS", "(320, 380)"
    ]  # fmt: skip
    assert scaled_schedule_opts(400, 8)[1:] == ["3200", "SOLVER.STEPS", "(2560, 3040)"]
    with pytest.raises(ValueError, match="scale"):
        scaled_schedule_opts(400, 0)


def test_scaled_schedule_keeps_every_step_strictly_inside_a_very_short_run():
    # 0.8 * 4 = 3.2 -> 3; 0.95 * 4 = 3.8 -> 4 = MAX_ITER: dropped (the scheduler refuses it)
    assert scaled_schedule_opts(4, 1) == ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)"]
    assert scaled_schedule_opts(1, 1)[3] == "()"
    assert scaled_schedule_opts(10, 1)[3] == "(8,)"  # 9.5 rounds to 10 = MAX_ITER
    assert scaled_schedule_opts(20, 1)[3] == "(16, 19)"


def test_converged_scale_is_the_shortest_doubling_within_the_seed_std():
    ap = {
        1: [60.0, 62.0, 64.0],  # mean 62, std 2
        2: [75.0, 77.0, 79.0],  # mean 77: +15 > 2, still improving
        4: [84.0, 87.0, 90.0],  # mean 87, std 3: +10 > 3
        8: [86.0, 88.0, 90.0],  # mean 88, std 2: +1 < max(3, 2)
    }
    found, rows = converged_scale(ap)
    assert found == 4
    assert [(r["scale"], r["converged"]) for r in rows] == [(1, False), (2, False), (4, True)]
    assert rows[2]["delta"] == pytest.approx(1.0) and rows[2]["std"] == pytest.approx(3.0)
    # a drop beyond the std is not convergence either, and nothing qualifies without 2x
    assert converged_scale({1: [80.0, 81.0], 2: [70.0, 71.0]})[0] is None
    assert converged_scale({4: [1.0, 2.0, 3.0]}) == (None, [])
    # one seed has no spread: it cannot decide
    assert converged_scale({1: [50.0], 2: [50.0]}) == (None, [])


def test_learning_curve_reads_the_evaluations_and_the_last_record_wins(tmp_path):
    records = [
        {"iteration": 99, "total_loss": 1.0},
        {"iteration": 199, "bbox/AP": 10.0},
        {"iteration": 399, "bbox/AP": 20.0},
        {"iteration": 399, "bbox/AP": 21.0},  # re-evaluated after a resume
        {"iteration": 600, "bbox/AP": 30.0},  # the final evaluation, after the loop
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records))
    assert learning_curve(str(tmp_path), 600) == [[200, 10.0], [400, 21.0], [600, 30.0]]
    assert learning_curve(str(tmp_path / "missing"), 600) == []


def test_learning_curve_reads_one_test_set_of_several(tmp_path):
    # several DATASETS.TEST: detectron2 flattens the results as <dataset>/<task>/<metric>
    records = [
        {"iteration": 1, "neon_trees_val/bbox/AP": 5.0, "neon_trees_test/bbox/AP": 7.0},
        {"iteration": 4, "neon_trees_val/bbox/AP": 6.0, "neon_trees_val/bbox/AP50": 9.0},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records))
    assert learning_curve(str(tmp_path), 4) == []
    assert learning_curve(str(tmp_path), 4, "neon_trees_val/bbox/AP") == [[2, 5.0], [4, 6.0]]
    assert learning_curve(str(tmp_path), 4, "neon_trees_val/bbox/AP50") == [[4, 9.0]]


def test_seconds_per_iter_is_the_median_of_the_logged_times(tmp_path):
    records = [{"iteration": 19, "time": 0.5}, {"iteration": 39, "time": 3.0},
               {"iteration": 39, "bbox/AP": 1.0}, {"iteration": 59, "time": 0.7}]  # fmt: skip
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records))
    assert seconds_per_iter(str(tmp_path)) == pytest.approx(0.7)
    assert math.isnan(seconds_per_iter(str(tmp_path / "missing")))


def test_paired_difference_uses_the_seeds_both_have_and_skips_nan():
    values = {1: 12.0, 2: 14.0, 3: 20.0, 4: float("nan")}
    reference = {1: 10.0, 2: 10.0, 4: 5.0, 5: 1.0}
    mean, std, n = paired_difference(values, reference)
    assert n == 2 and mean == pytest.approx(3.0) and std == pytest.approx(math.sqrt(2.0))
    assert paired_verdict(mean, std, n) == "gain"
    assert paired_verdict(-3.0, 1.0, 3) == "loss"
    assert paired_verdict(0.5, 1.0, 3) == "no difference"
    assert paired_verdict(5.0, 0.0, 1).startswith("n/a")
    assert paired_difference({}, reference)[2] == 0


def test_load_results_reads_what_update_results_json_wrote(tmp_path):
    path = str(tmp_path / "results" / "r.json")
    assert load_results(path) == {}
    update_results_json(path, "search", "gn/x1/s1", {"AP": 1.5})
    update_results_json(path, "search", "gn/x1/s2", {"AP": 2.5})
    assert load_results(path) == {"search": {"gn/x1/s1": {"AP": 1.5}, "gn/x1/s2": {"AP": 2.5}}}


def test_remove_periodic_checkpoints_keeps_the_final_weights(tmp_path):
    for name in ("model_0000399.pth", "model_0000799.pth", "model_final.pth", "last_checkpoint"):
        (tmp_path / name).write_text("x")
    removed = remove_periodic_checkpoints(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == ["model_0000399.pth", "model_0000799.pth"]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_run_claims_a_free_run_and_releases_it(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    claim = run_dir / CLAIM_FILE
    with claim_run(str(run_dir)) as mine:
        assert mine
        assert claim.read_text() == str(os.getpid())
        # a second claim of the same run, held by a live process (this one), is refused
        with claim_run(str(run_dir)) as again:
            assert not again
        assert claim.exists()
    assert not claim.exists()
    # released on an exception too
    with pytest.raises(RuntimeError):
        with claim_run(str(run_dir)) as mine:
            assert mine
            raise RuntimeError("training failed")
    assert not claim.exists()


def test_claim_run_refuses_a_live_claim_and_takes_over_a_stale_one(tmp_path):
    claim = tmp_path / CLAIM_FILE
    claim.write_text(str(os.getppid()))  # a live process that is not this one
    with claim_run(str(tmp_path)) as mine:
        assert not mine
    assert claim.read_text() == str(os.getppid())  # untouched
    for stale in (str(_dead_pid()), "not a pid", "-3"):
        claim.write_text(stale)
        with claim_run(str(tmp_path)) as mine:
            assert mine and claim.read_text() == str(os.getpid())
        assert not claim.exists()


def test_claim_run_treats_a_fresh_empty_claim_as_held_and_an_old_one_as_stale(tmp_path):
    claim = tmp_path / CLAIM_FILE
    claim.write_text("")  # another process between creating the file and writing its pid
    with claim_run(str(tmp_path)) as mine:
        assert not mine
    old = claim.stat().st_mtime - 120
    os.utime(claim, (old, old))
    with claim_run(str(tmp_path), empty_grace_s=60.0) as mine:
        assert mine


def test_forward_timing_trainer_times_every_forward_of_the_model_it_builds():
    import torch
    from detectron2.config import get_cfg

    from d2kit.benchmarking import forward_timing_trainer
    from d2kit.config import add_d2kit_config
    from d2kit.engine import Trainer
    from d2kit.paths import resolve_config_file

    cfg = get_cfg()
    add_d2kit_config(cfg)
    cfg.merge_from_file(
        resolve_config_file("quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml")
    )
    trainer_cls = forward_timing_trainer()
    assert issubclass(trainer_cls, Trainer) and trainer_cls.timer is None
    model = trainer_cls.build_model(cfg).eval()
    with torch.no_grad():
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}])
    assert isinstance(trainer_cls.timer, CallTimer) and len(trainer_cls.timer.times) == 1


def test_detach_new_log_handlers_removes_only_what_the_block_added(tmp_path):
    import logging

    from d2kit.benchmarking import detach_new_log_handlers

    logger = logging.getLogger("d2kit.test_detach")
    kept = logging.StreamHandler()
    logger.addHandler(kept)
    try:
        with detach_new_log_handlers():
            added = logging.FileHandler(tmp_path / "log.txt")
            logger.addHandler(added)
            logging.getLogger("d2kit.test_detach.child").addHandler(logging.NullHandler())
            logger.warning("inside")
        assert logger.handlers == [kept]
        assert logging.getLogger("d2kit.test_detach.child").handlers == []
        logger.warning("outside")  # not written to the run's file any more
        assert (tmp_path / "log.txt").read_text().splitlines() == ["inside"]
    finally:
        logger.removeHandler(kept)
