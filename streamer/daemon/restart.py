"""When to restart a worker that crashed: exponential backoff, and a cap on restarts per time window.

Pure logic (the clock is injected), used by the supervisor for source and inference workers alike.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 0.5
    """Delay before the first restart after a crash."""
    max_s: float = 30.0
    """Longest delay between restarts; also how long a worker must run to count as healthy again."""
    multiplier: float = 2.0
    max_restarts: int = 5
    """At most this many restarts within `window_s`; one more crash gives up on the worker."""
    window_s: float = 60.0


class RestartTracker:
    """The restart history of one worker."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._restarts: deque[float] = deque()
        self._delay = 0.0
        self._started = clock()

    def started(self) -> None:
        """The worker (re)started now."""
        self._started = self._clock()

    def crashed(self) -> float | None:
        """The delay before restarting the worker that just crashed, or None: too many restarts, give up."""
        now = self._clock()
        if now - self._started >= self.policy.max_s:
            self._delay = 0.0  # it ran long enough to count as healthy: start the backoff over
        while self._restarts and now - self._restarts[0] > self.policy.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.policy.max_restarts:
            return None
        self._restarts.append(now)
        p = self.policy
        self._delay = p.initial_s if self._delay == 0.0 else min(self._delay * p.multiplier, p.max_s)
        return self._delay
