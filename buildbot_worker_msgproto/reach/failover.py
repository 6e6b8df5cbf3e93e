"""Several masters: a worker's list, the order it tries them in, and failover.

A worker may know several masters of one Buildbot multi-master installation
(``create-worker ... MASTER1,MASTER2``).  :class:`MasterList` decides which to try: the
first is preferred (``master_order='preferred'``, the default: every worker goes back to
the first master when it can) or each worker starts at a random one and stays where it
got in (``'shuffle'``, which spreads the workers).  While a lost session may still resume,
the master that holds it is tried first.  A master that refuses the worker (connection
refused, no answer in time, closed with ``not_owner`` or ``shutdown``) is passed over for
the next one within the same attempt, after a random pause of up to ``spread`` seconds, so
that the workers of a dead master do not all reach the next one in the same instant.

:class:`FailoverEndpoint` is a Twisted client endpoint over one endpoint per master, so
every transport reconnects through it unchanged (``ClientService`` with the worker's
retry policy).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

ORDERS = ("preferred", "shuffle")
#: Seconds, at most, a worker waits before it tries the next master after one refused it.
DEFAULT_SPREAD = 3.0
#: Seconds a connection attempt to one master of a list may take before the next is tried
#: (a dead host answers nothing; TCP alone would wait 30 s or more).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a master that could not be reached is tried after the others.
DOWN_FOR = 15.0


class MasterList:
    """Which master a worker tries next, by ``order`` (one of :data:`ORDERS`)."""

    def __init__(self, masters: Sequence[str], order: str = "preferred",
                 rng: random.Random | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if not masters:
            raise ValueError("a worker needs at least one master")
        if order not in ORDERS:
            raise ValueError(f"master_order must be one of {ORDERS}, not {order!r}")
        self.masters = list(masters)
        self.order = order
        rng = rng or random.Random()
        #: The master of the last session that opened (the one to go back to).
        self.current = rng.randrange(len(self.masters)) if order == "shuffle" else 0
        #: Stay with ``current`` first (a session there may resume).
        self.pinned = False
        self.clock = clock
        #: Until when each master that could not be reached is tried last.
        self._down_until: dict[int, float] = {}

    def candidates(self) -> list[int]:
        """The masters to try, in order, for the next connection attempt: a master that
        could not be reached a moment ago comes last (a dead master is not tried, and
        waited for, on every attempt)."""
        n = len(self.masters)
        start = self.current if (self.pinned or self.order == "shuffle") else 0
        order = [(start + i) % n for i in range(n)]
        now = self.clock() if self.clock is not None else None
        if now is None:
            return order
        return sorted(order, key=lambda index: self._down_until.get(index, 0.0) > now)

    def unreachable(self, index: int) -> None:
        """Master ``index`` refused the connection or did not answer."""
        if self.clock is not None:
            self._down_until[index] = self.clock() + DOWN_FOR

    def connected(self, index: int) -> None:
        """A connection to master ``index`` was made."""
        self.current = index
        self._down_until.pop(index, None)

    def refused(self) -> None:
        """The current master refused the worker after connecting (``not_owner``,
        ``shutdown``, no handshake): start the next attempt at the next one."""
        self.pinned = False
        self.current = (self.current + 1) % len(self.masters)
        if self.order == "preferred":  # the preferred one is not tried first again
            self.pinned = True

    def back_to(self, index: int) -> None:
        """Master ``index`` holds a session that may resume and is alive (another master
        would not take the worker over): try it first again, even if it just could not be
        reached."""
        self.current = index
        self.pinned = True
        self._down_until.pop(index, None)

    def pin(self) -> None:
        """A session on the current master may resume: try it first."""
        self.pinned = True

    def unpin(self) -> None:
        """The session opened or ended: back to the normal order."""
        self.pinned = False


class FailoverEndpoint:
    """A client endpoint trying one endpoint per master, as :class:`MasterList` says."""

    def __init__(self, reactor: Any, endpoints: Sequence[Any], masters: MasterList,
                 spread: float = DEFAULT_SPREAD,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 jitter: Callable[[], float] = random.random) -> None:
        if len(endpoints) != len(masters.masters):
            raise ValueError("one endpoint per master")
        self.reactor = reactor
        self.endpoints = list(endpoints)
        self.masters = masters
        self.spread = spread
        self.connect_timeout = connect_timeout
        self.jitter = jitter

    @defer.inlineCallbacks
    def connect(self, factory: Any) -> Any:
        """Connect to the first master that accepts; fail with the last error if none."""
        error: Exception | None = None
        for attempt, index in enumerate(self.masters.candidates()):
            if attempt:  # failing over: do not arrive together with everyone else
                yield task.deferLater(self.reactor, self.spread * self.jitter(), lambda: None)
            try:
                connecting = self.endpoints[index].connect(factory)
                connecting.addTimeout(self.connect_timeout, self.reactor)
                protocol = yield connecting
            except Exception as e:
                error = e
                self.masters.unreachable(index)
                log.msg(f"msgproto: master {self.masters.masters[index]} refused the "
                        f"connection: {e}")
                continue
            if index != self.masters.current:
                log.msg(f"msgproto: connected to master {self.masters.masters[index]} "
                        f"(failing over from {self.masters.masters[self.masters.current]})")
            self.masters.connected(index)
            return protocol
        raise error
