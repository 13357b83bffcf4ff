"""The reconnect backoff policy: bounds, jitter, down after N failures, the slow rate, reset on success."""

from __future__ import annotations

import random

import pytest

from streamer.config import ReconnectConfig
from streamer.sources.reconnect import Backoff, BackoffPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _delays(policy: BackoffPolicy, n: int, seed: int = 0) -> list[float]:
    backoff = Backoff(policy, random.Random(seed))
    return [backoff.failed().delay_s for _ in range(n)]


def test_without_jitter_delays_grow_by_the_multiplier_up_to_max() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=30, multiplier=2, jitter=0, down_after=100)
    assert _delays(policy, 8) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert _delays(BackoffPolicy(initial_s=0.5, max_s=2, multiplier=3, jitter=0, down_after=100), 4) == [
        0.5, 1.5, 2, 2,
    ]  # fmt: skip
    assert _delays(BackoffPolicy(initial_s=2, max_s=2, multiplier=1, jitter=0, down_after=100), 3) == [
        2,
        2,
        2,
    ]


def test_jitter_spreads_each_delay_within_its_range_and_never_past_max() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=10, multiplier=2, jitter=0.2, down_after=100)
    rng = random.Random(7)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)]:
        backoff = Backoff(policy, rng)
        samples = []
        for _ in range(400):
            backoff.failures = failures - 1
            samples.append(backoff.failed().delay_s)
        lo, hi = policy.delay_range(failures)
        assert (lo, hi) == (pytest.approx(min(10, base * 0.8)), pytest.approx(min(10, base * 1.2)))
        assert all(lo <= d <= hi for d in samples)
        if hi > lo:  # really random, over the whole range: cameras that failed together spread out
            assert min(samples) < lo + 0.05 * (hi - lo) and max(samples) > hi - 0.05 * (hi - lo)
            assert len(set(samples)) == len(samples)
    assert policy.delay_range(6) == (10, 10)  # past max_s: exactly max_s


def test_down_after_n_failures_once_then_the_slow_rate() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=8, multiplier=2, jitter=0.1, down_after=3, down_retry_s=60)
    backoff = Backoff(policy, random.Random(1))
    retries = [backoff.failed() for _ in range(6)]
    assert [r.attempt for r in retries] == [1, 2, 3, 4, 5, 6]
    assert [r.went_down for r in retries] == [False, False, True, False, False, False]
    assert backoff.down
    assert 0.9 <= retries[0].delay_s <= 1.1 and 1.8 <= retries[1].delay_s <= 2.2
    assert all(54 <= r.delay_s <= 66 for r in retries[2:])  # down_retry_s ± 10 %, not capped by max_s


def test_down_after_one_goes_down_at_the_first_failure() -> None:
    backoff = Backoff(BackoffPolicy(down_after=1, down_retry_s=5, jitter=0))
    retry = backoff.failed()
    assert retry.went_down and retry.delay_s == 5


def test_a_success_reports_the_outage_and_starts_over() -> None:
    clock = Clock()
    policy = BackoffPolicy(initial_s=1, max_s=30, multiplier=2, jitter=0, down_after=3, down_retry_s=60)
    backoff = Backoff(policy, clock=clock)
    assert backoff.succeeded() is None  # nothing to recover from
    for _ in range(4):
        backoff.failed()
        clock.now += 10
    recovery = backoff.succeeded()
    assert recovery is not None
    assert (recovery.failures, recovery.downtime_s, recovery.was_down) == (4, 40.0, True)
    assert (backoff.failures, backoff.down) == (0, False)
    assert backoff.succeeded() is None
    # A new outage backs off from the start again, and is marked down again.
    again = [backoff.failed() for _ in range(3)]
    assert [r.delay_s for r in again] == [1, 2, 60] and [r.went_down for r in again] == [False, False, True]
    clock.now += 1.5
    short = Backoff(policy, clock=clock)
    short.failed()
    clock.now += 1.5
    assert short.succeeded() == type(recovery)(1, 1.5, False)


@pytest.mark.parametrize(
    "policy",
    [
        BackoffPolicy(),
        BackoffPolicy(initial_s=0.5, max_s=2, jitter=0.5, down_after=10, down_retry_s=1),
        BackoffPolicy(initial_s=3, max_s=3, down_after=1, down_retry_s=0.5),
        BackoffPolicy(initial_s=1, max_s=1000, multiplier=10, jitter=0.3, down_after=3, down_retry_s=5),
    ],
)
def test_longest_delay_bounds_every_delay(policy: BackoffPolicy) -> None:
    assert max(_delays(policy, 200, seed=3)) <= policy.longest_delay_s
    lows_and_highs = [policy.delay_range(n) for n in range(1, policy.down_after + 2)]
    assert max(hi for _, hi in lows_and_highs) == pytest.approx(policy.longest_delay_s)


def test_many_failures_do_not_overflow() -> None:
    policy = BackoffPolicy(initial_s=1, max_s=30, multiplier=1000, jitter=0, down_after=10_000)
    assert policy.delay_range(5000) == (30, 30)


def test_the_policy_follows_the_config_and_its_defaults() -> None:
    assert BackoffPolicy.from_config(ReconnectConfig()) == BackoffPolicy(1, 30, 2, 0.2, 5, 60)
    cfg = ReconnectConfig(initial_s=0.5, max_s=4, multiplier=3, jitter=0, down_after=2, down_retry_s=9)
    assert BackoffPolicy.from_config(cfg) == BackoffPolicy(0.5, 4, 3, 0, 2, 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0},
        {"initial_s": 5, "max_s": 1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"down_after": 0},
        {"down_retry_s": 0},
    ],
)
def test_an_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
