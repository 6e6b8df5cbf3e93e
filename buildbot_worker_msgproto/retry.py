"""The worker's reconnect policy: buildbot-worker's backoff, growing until a login works,
and quick, jittered retries while a lost session may still resume.

Twisted's ``ClientService`` passes its retry policy the number of failed *connects* since
the last successful one, so a master that accepts the TCP connection and then refuses
the worker (wrong password or certificate, a WebSocket path that answers 404, a TLS
certificate the worker rejects) would be retried every 1-3 s forever.  This policy counts
every retry since the last session that opened (msg) or login that worked (PB), and uses
the larger count for the delay.

While a suspended session can resume (docs/protocol.rst, session resume) the policy
retries at once, then with a jittered delay that doubles up to ``RESUME_MAX_DELAY``, so
that a blip costs under a second and a thousand workers of one master do not all come
back in the same instant; these retries do not count against ``maxRetries``.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.application.internet import backoffPolicy

#: The first delay between resume attempts after the immediate one, and the largest.
RESUME_FIRST_DELAY = 0.25
RESUME_MAX_DELAY = 4.0


class RetryPolicy:
    """A ``ClientService`` ``retryPolicy`` with buildbot-worker's ``maxRetries``.

    ``stop`` is called once ``max_retries`` consecutive failures were counted (by
    ``ClientService`` or by :meth:`check_failures`), as buildbot-worker stops its reactor.
    ``clock`` (the reactor's ``seconds``) times the resume window.
    """

    def __init__(self, max_retries: int | None, stop: Callable[[], None],
                 backoff: Callable[[int], float] | None = None,
                 clock: Callable[[], float] | None = None,
                 jitter: Callable[[], float] = random.random) -> None:
        self.max_retries = max_retries
        self.stop = stop
        # as buildbot-worker: 1 s growing by 1.5x to 60 s, with jitter
        self.backoff = backoff or backoffPolicy()
        self.clock = clock
        self.jitter = jitter
        self.retries_since_login = 0
        self._resume_until: float | None = None
        self._resume_attempts = 0

    def __call__(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (failed connects since the last connect)."""
        if self.resuming:
            return self._resume_delay()
        self.check_failures(attempt)
        self.retries_since_login += 1
        return self.backoff(max(attempt, self.retries_since_login))

    @property
    def resuming(self) -> bool:
        if self._resume_until is None or self.clock is None:
            return False
        if self.clock() >= self._resume_until:
            self._resume_until = None
            return False
        return True

    def _resume_delay(self) -> float:
        attempt, self._resume_attempts = self._resume_attempts, self._resume_attempts + 1
        if attempt == 0:
            return 0.0
        ceiling = min(RESUME_MAX_DELAY, RESUME_FIRST_DELAY * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.jitter())

    def check_failures(self, failures: int) -> None:
        """Stop the worker if ``failures`` consecutive failures reach ``max_retries``."""
        if self.max_retries and failures >= self.max_retries:
            self.stop()

    def logged_in(self) -> None:
        """A session opened or resumed (or a PB login worked): retries start short again."""
        self.retries_since_login = 0
        self._resume_until = None

    def resume_until(self, deadline: float) -> None:
        """A session was suspended: retry quickly until ``deadline`` (a ``clock`` time)."""
        self._resume_until = deadline
        self._resume_attempts = 0

    def failover(self) -> None:
        """A master refused the worker after connecting (another master owns it, it is
        shutting down): try the next master soon, not after a growing backoff (the
        failover endpoint spreads the workers)."""
        self.retries_since_login = 0

    def resume_over(self) -> None:
        """The suspended session ended (expired or refused): back to the normal backoff."""
        self._resume_until = None
