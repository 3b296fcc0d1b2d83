"""d2kit.benchmarking.CallTimer: records every call, returns the result, survives exceptions."""

import math

import pytest

from d2kit.benchmarking import CallTimer


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
