"""d2kit.benchmarking: CallTimer records every call, returns the result, survives exceptions;
mean_std and training_log, the statistics and the training log the benchmarks share; the
convergence protocol (scaled schedules, converged_scale, learning curves)."""

import json
import math

import pytest

from d2kit.benchmarking import (
    CallTimer,
    converged_scale,
    learning_curve,
    mean_std,
    scaled_schedule_opts,
    training_log,
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
