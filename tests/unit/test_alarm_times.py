"""Alarm time conversion and the retry schedule (no processes)."""

import datetime as dt
import math
import random

import pytest

from stateroom.supervisor.alarms import MAX_RETRIES, retry_delay_s
from stateroom.worker.alarms import alarm_time_ms


def test_epoch_milliseconds_pass_through_and_fractions_round_up():
    assert alarm_time_ms(1_700_000_000_123) == 1_700_000_000_123
    assert alarm_time_ms(1_700_000_000_123.2) == 1_700_000_000_124
    assert alarm_time_ms(1) == 1


def test_datetimes_become_epoch_milliseconds_never_earlier():
    utc = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert alarm_time_ms(utc) == int(utc.timestamp()) * 1000 + 678
    plus2 = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert alarm_time_ms(plus2) == alarm_time_ms(utc)
    assert alarm_time_ms(utc + dt.timedelta(microseconds=1)) == alarm_time_ms(utc) + 1
    naive = dt.datetime(2030, 1, 2, 3, 4, 5)
    assert alarm_time_ms(naive) == int(naive.astimezone().timestamp() * 1000)


@pytest.mark.parametrize("bad", [0, -1, -0.5, dt.datetime(1969, 12, 31, tzinfo=dt.UTC)])
def test_times_at_or_before_the_epoch_are_refused(bad):
    with pytest.raises(ValueError, match="> 0"):
        alarm_time_ms(bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 10**20])
def test_times_that_are_not_finite_or_too_far_are_refused(bad):
    with pytest.raises(ValueError):
        alarm_time_ms(bad)


@pytest.mark.parametrize("bad", ["1000", None, True, [1], dt.date(2030, 1, 1)])
def test_other_types_are_refused_naming_the_type(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        alarm_time_ms(bad)


def test_retry_k_waits_two_to_the_k_seconds_plus_at_most_a_quarter():
    rng = random.Random(7)
    for k in range(1, MAX_RETRIES + 1):
        delays = [retry_delay_s(k, 2.0, rng) for _ in range(500)]
        assert min(delays) >= 2**k
        assert max(delays) <= 2**k * 1.25
        assert max(delays) - min(delays) > 2**k * 0.2, "jitter spreads retries"
