"""The retry policy's waits: exponential with jitter, a fixed schedule, Retry-After honoured."""

from __future__ import annotations

from core.retry import RetryPolicy


def test_exponential_backoff_with_jitter_stays_in_its_band() -> None:
    policy = RetryPolicy(base_seconds=2, max_seconds=100, jitter=0.2)
    for attempt, base in ((1, 2), (2, 4), (3, 8), (7, 100), (20, 100)):
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(base * 0.8 <= w <= base * 1.2 for w in waits)
        assert len(set(waits)) > 1  # jittered, not constant


def test_fixed_schedule_is_followed_and_its_last_step_repeats() -> None:
    policy = RetryPolicy(schedule=(0, 5, 300), jitter=0.2)
    assert policy.delay(1) == 0
    assert 4 <= policy.delay(2) <= 6
    assert 240 <= policy.delay(3) <= 360
    assert 240 <= policy.delay(9) <= 360


def test_retry_after_is_honoured_and_clamped() -> None:
    policy = RetryPolicy(max_seconds=60)
    assert policy.delay(1, retry_after=7) == 7
    assert policy.delay(1, retry_after=10_000) == 60
