"""Circuit breakers for model backends.

Why: a backend that is down or overloaded fails slowly (connection timeouts,
deadlines) or makes things worse when retried (429). After a few consecutive
failures its breaker *opens* and the chain skips the backend at once, so the
next one answers without paying the dead one's deadline on every request.
After a cool-down the breaker lets a single trial request through
(*half-open*): its success closes the breaker, its failure opens it again for
another cool-down. Requests cancelled by the client count as neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from services.generation import metrics


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open
    after `reset_seconds` (one trial call) → closed on its success."""

    def __init__(
        self,
        backend: str,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.backend = backend
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        metrics.CIRCUIT_BREAKER_OPEN.labels(backend=backend).set(0)

    @property
    def state(self) -> BreakerState:
        """The state, moving OPEN to HALF_OPEN once the cool-down has passed."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_seconds
        ):
            self._state = BreakerState.HALF_OPEN
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through."""
        return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def allow(self) -> bool:
        """Whether a call may go to the backend now (claims the half-open trial)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def record_cancelled(self) -> None:
        """The caller gave up: the call proved nothing either way."""
        self._trial_in_flight = False

    def _set(self, state: BreakerState) -> None:
        self._state = state
        metrics.CIRCUIT_BREAKER_OPEN.labels(backend=self.backend).set(
            0 if state is BreakerState.CLOSED else 1
        )
