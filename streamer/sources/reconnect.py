"""When to try a live stream again: exponential backoff with jitter, then a slow rate once it is down.

Pure logic (the random numbers and the clock are injected), used by the source worker. After failure
``n`` in a row (``n >= 1``) the next attempt waits

- ``min(max_s, initial_s * multiplier ** (n - 1) * u)`` while ``n < down_after``,
- ``down_retry_s * u`` from failure ``down_after`` on, when the stream is reported down,

where ``u`` is uniform in ``[1 - jitter, 1 + jitter]``, so that cameras that failed together (a switch
rebooted) do not all come back at the same instant. A success resets everything.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.config import ReconnectConfig


@dataclass(frozen=True)
class BackoffPolicy:
    """The settings of `streamer.config.ReconnectConfig`, checked again here for direct users."""

    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    down_after: int = 5
    down_retry_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                f"need multiplier >= 1 and 0 <= jitter < 1, got {self.multiplier}, {self.jitter}"
            )
        if self.down_after < 1 or self.down_retry_s <= 0:
            raise ValueError(
                f"need down_after >= 1 and down_retry_s > 0, got {self.down_after}, {self.down_retry_s}"
            )

    @classmethod
    def from_config(cls, cfg: ReconnectConfig) -> BackoffPolicy:
        return cls(cfg.initial_s, cfg.max_s, cfg.multiplier, cfg.jitter, cfg.down_after, cfg.down_retry_s)

    def delay_range(self, failures: int) -> tuple[float, float]:
        """The shortest and longest delay after `failures` (>= 1) failures in a row."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
        if failures >= self.down_after:
            return self.down_retry_s * lo, self.down_retry_s * hi
        try:
            base = self.initial_s * float(self.multiplier) ** (failures - 1)
        except OverflowError:
            base = self.max_s
        return min(self.max_s, base * lo), min(self.max_s, base * hi)

    @property
    def longest_delay_s(self) -> float:
        """No delay is ever longer than this: the bound on how long a recovered camera waits."""
        ramp = self.delay_range(self.down_after - 1)[1] if self.down_after > 1 else 0.0  # (delays only grow)
        return max(ramp, self.delay_range(self.down_after)[1])


@dataclass(frozen=True)
class Retry:
    """What follows a failure: wait `delay_s`, then make attempt number `attempt`."""

    attempt: int
    """Failures in a row so far (1 for the first retry)."""
    delay_s: float
    went_down: bool
    """This failure is the one that marks the stream down (once per outage)."""


@dataclass(frozen=True)
class Recovery:
    """A stream that works again after `failures` failures in a row."""

    failures: int
    downtime_s: float
    """From the first failure of the run to the success."""
    was_down: bool


class Backoff:
    """The failure history of one stream, turning each failure into a delay (`BackoffPolicy`)."""

    def __init__(
        self,
        policy: BackoffPolicy,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._clock = clock
        self.failures = 0
        self.down = False
        self._first_failure_at = 0.0

    def failed(self) -> Retry:
        """Record a failure (connection refused, timeout, end of stream, frozen picture...)."""
        if self.failures == 0:
            self._first_failure_at = self._clock()
        self.failures += 1
        went_down = not self.down and self.failures >= self.policy.down_after
        self.down = self.down or went_down
        lo, hi = self.policy.delay_range(self.failures)
        return Retry(self.failures, self._rng.uniform(lo, hi), went_down)

    def succeeded(self) -> Recovery | None:
        """Record a success; the recovery from earlier failures, or None if there were none."""
        if self.failures == 0:
            return None
        recovery = Recovery(self.failures, self._clock() - self._first_failure_at, self.down)
        self.failures, self.down = 0, False
        return recovery
