"""The master's side of worker ownership: claim, renew and release worker leases.

On with Buildbot's multi-master mode (``c['multiMaster'] = True``), off otherwise: a
single master changes nothing.  ``lease_seconds`` in ``c['protocols']['msg']`` sets the
lease (default :data:`DEFAULT_LEASE_SECONDS`; 0 turns ownership off).  See
:mod:`buildbot_msgproto.lease` for the database side.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_msgproto.lease import Owner
from buildbot_msgproto.lease import WorkerLeases

#: Seconds a lease lasts without renewal: how long a dead master keeps its workers.  A
#: master that merely stalls keeps its leases (they are renewed whatever their expiry)
#: unless a worker actually moved to another master meanwhile.
DEFAULT_LEASE_SECONDS = 4.0
#: Renewals per lease period (a lease survives this many minus one missed renewals).
RENEWALS_PER_LEASE = 3
#: Seconds past a lease's expiry at which a waiting login claims it again.
LAPSE_MARGIN = 0.05


class WorkerOwnership(service.Service):
    """Leases of the msg workers attached to this master.

    ``lost`` is called with a worker name when another master took its lease over (this
    master could not renew it in time): its session must end.
    """

    name = "msgproto_ownership"

    def __init__(self, master: Any, duration: float, lost: Callable[[str], None]) -> None:
        self.master = master
        self.duration = duration
        self.lost = lost
        self.leases = WorkerLeases(master.db.pool.do, master.masterid, master.name, duration)
        #: Sessions per worker holding its lease (a new login may overlap an old session).
        self.held: dict[str, int] = {}
        self._loop: task.LoopingCall | None = None

    @defer.inlineCallbacks
    def startService(self) -> Any:  # noqa: N802 - Twisted's name
        super().startService()
        yield self.leases.release_all()  # what a previous run of this master left
        self._loop = task.LoopingCall(self._renew)
        self._loop.clock = self.master.reactor
        self._loop.start(self.duration / RENEWALS_PER_LEASE, now=False).addErrback(
            log.err, "msgproto: renewing worker leases")

    def stopService(self) -> Any:  # noqa: N802
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def now(self) -> float:
        return self.master.reactor.seconds()

    @defer.inlineCallbacks
    def claim(self, worker: str) -> Any:
        """Take ``worker``'s lease: None if this master holds it now, else its Owner."""
        owner: Owner | None = yield self.leases.acquire(worker, self.now())
        if owner is None:
            self.held[worker] = self.held.get(worker, 0) + 1
        return owner

    @defer.inlineCallbacks
    def claim_when_lapsed(self, worker: str, owner: Owner,
                          still_wanted: Callable[[], bool]) -> Any:
        """Wait for ``owner``'s lease on ``worker`` to lapse, then claim it again: None if
        this master holds it now, else the Owner (who renewed it: that master is alive).

        A killed master's workers come to the next master while their leases still run;
        holding their logins until the leases lapse (at most ``duration``) takes them over
        at once, instead of a refusal and a round of reconnects per worker.  A lease that
        runs longer than ``duration`` (a skewed clock), or a login that ended meanwhile
        (``still_wanted()`` false), is not waited for.
        """
        wait = owner.expires_at - self.now()
        if wait > self.duration or not still_wanted():
            return owner
        yield task.deferLater(self.master.reactor, max(0.0, wait) + LAPSE_MARGIN,
                              lambda: None)
        if not still_wanted():
            return owner
        return (yield self.claim(worker))

    @defer.inlineCallbacks
    def release(self, worker: str) -> Any:
        """A session that held ``worker``'s lease ended; the last one gives it up."""
        count = self.held.get(worker, 0) - 1
        if count > 0:
            self.held[worker] = count
            return
        self.held.pop(worker, None)
        try:
            yield self.leases.release(worker)
        except Exception as e:  # it lapses by itself
            log.msg(f"msgproto: could not release the lease of worker {worker!r}: {e}")

    @defer.inlineCallbacks
    def _renew(self) -> Any:
        if not self.held:
            return
        try:
            lost = yield self.leases.renew(sorted(self.held), self.now())
        except Exception as e:
            log.msg(f"msgproto: could not renew worker leases ({e}); retrying")
            return
        for worker in lost:
            if worker in self.held:
                del self.held[worker]
                log.msg(f"msgproto: another master took over worker {worker!r} (this master "
                        f"could not renew its lease within {self.duration:g} s): dropping it")
                self.lost(worker)


def refusal_reason(worker: str, owner: Owner, now: float) -> str:
    """The close reason a worker gets when another master owns it."""
    left = max(0.0, owner.expires_at - now)
    return (f"worker {worker!r} is attached to master {owner.master_name!r}; that master "
            f"owns it (its lease runs {left:.0f} s more unless renewed): try another master")
