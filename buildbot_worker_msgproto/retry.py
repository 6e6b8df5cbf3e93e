"""The worker's reconnect policy: buildbot-worker's backoff, growing until a login works.

Twisted's ``ClientService`` passes its retry policy the number of failed *connects* since
the last successful one, so a master that accepts the TCP connection and then refuses
the worker (wrong password or certificate, a WebSocket path that answers 404, a TLS
certificate the worker rejects) would be retried every 1-3 s forever.  This policy counts
every retry since the last session that opened (msg) or login that worked (PB), and uses
the larger count for the delay.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.internet import backoffPolicy


class RetryPolicy:
    """A ``ClientService`` ``retryPolicy`` with buildbot-worker's ``maxRetries``.

    ``stop`` is called once ``max_retries`` consecutive failures were counted (by
    ``ClientService`` or by :meth:`check_failures`), as buildbot-worker stops its reactor.
    """

    def __init__(self, max_retries: int | None, stop: Callable[[], None],
                 backoff: Callable[[int], float] | None = None) -> None:
        self.max_retries = max_retries
        self.stop = stop
        # as buildbot-worker: 1 s growing by 1.5x to 60 s, with jitter
        self.backoff = backoff or backoffPolicy()
        self.retries_since_login = 0

    def __call__(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (failed connects since the last connect)."""
        self.check_failures(attempt)
        self.retries_since_login += 1
        return self.backoff(max(attempt, self.retries_since_login))

    def check_failures(self, failures: int) -> None:
        """Stop the worker if ``failures`` consecutive failures reach ``max_retries``."""
        if self.max_retries and failures >= self.max_retries:
            self.stop()

    def logged_in(self) -> None:
        """A session opened (or a PB login worked): the next retry starts short again."""
        self.retries_since_login = 0
