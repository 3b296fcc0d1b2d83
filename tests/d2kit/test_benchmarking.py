"""d2kit.benchmarking: CallTimer records every call, returns the result, survives exceptions;
mean_std and training_log, the statistics and the training log the benchmarks share."""

import json
import math

import pytest

from d2kit.benchmarking import CallTimer, mean_std, training_log


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
