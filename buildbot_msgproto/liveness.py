"""Several masters: find a dead master in seconds, and run its build requests again.

Buildbot marks a master dead only after 10 minutes without its heartbeat
(``EXPIRE_MINUTES``), and even then its build requests stay claimed by it: the surviving
master's housekeeping unclaims only requests ``WHERE masterid = <its own id>`` (Buildbot
4.3), so nothing runs them again until the dead master itself restarts.

With worker ownership on (several masters), each master with this plugin renews its row
in ``msgproto_masters`` every few seconds.  A master whose row has not been renewed for
``master_timeout`` seconds is declared dead by the first survivor that notices (a
conditional DELETE makes exactly one of them do it): it runs Buildbot's own
``masterStopped`` housekeeping for it (its running builds end RETRY, its workers are
shown disconnected from it) and unclaims the dead master's build requests, so that they
run again on a live master.  The same unclaim is applied when Buildbot's own expiry
stops a master (the ``masters ... stopped`` message).

A master that finds its own row gone (it was declared dead while merely stalled) fences
itself: it drops its msg workers at once, so their builds end there (RETRY) rather than
run twice.  ``master_timeout`` is therefore a trade-off: shorter reruns a dead master's
builds sooner, but a master stalled that long (a frozen process, a long database outage)
loses its builds.  The default, 60 s, is 15 times the worker lease.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_msgproto import compat
from buildbot_msgproto.lease import METADATA
from buildbot_msgproto.lease import ensure_tables

#: Seconds without renewal after which a master is declared dead (0: never; Buildbot's
#: own 10-minute expiry still applies, and its requests are then unclaimed).
DEFAULT_MASTER_TIMEOUT = 60.0
#: Seconds between renewals of this master's row (and checks of the others').
RENEW_EVERY = 2.0

MASTERS = sa.Table(
    "msgproto_masters", METADATA,
    sa.Column("masterid", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(191), nullable=False),
    sa.Column("alive_at", sa.Float, nullable=False),
)


class MasterLiveness(service.Service):
    """Renews this master's row; declares stale masters dead (see the module doc)."""

    name = "msgproto_liveness"

    def __init__(self, master: Any, timeout: float, fence: Callable[[], None]) -> None:
        self.master = master
        self.timeout = timeout
        self.fence = fence
        self._loop: task.LoopingCall | None = None
        self._created = False
        self._consumer: Any = None
        self._unclaiming = defer.DeferredLock()

    @defer.inlineCallbacks
    def startService(self) -> Any:  # noqa: N802 - Twisted's name
        super().startService()
        yield self.master.db.pool.do(self._register)
        self._consumer = yield self.master.mq.startConsuming(
            self._master_stopped, ("masters", None, "stopped"))
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.master.reactor
        self._loop.start(RENEW_EVERY, now=False).addErrback(
            log.err, "msgproto: master liveness")

    def stopService(self) -> Any:  # noqa: N802
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        return super().stopService()

    # ------------------------------------------------------------------ database
    def _ensure_table(self, conn: Any) -> None:
        if not self._created:
            ensure_tables(conn)
            self._created = True

    def _register(self, conn: Any) -> None:
        self._ensure_table(conn)
        now = self.master.reactor.seconds()
        conn.execute(MASTERS.delete().where(MASTERS.c.masterid == self.master.masterid))
        conn.execute(MASTERS.insert(), [{"masterid": self.master.masterid,
                                         "name": self.master.name, "alive_at": now}])
        conn.commit()

    def _renew_and_reap(self, conn: Any, now: float) -> tuple[bool, list[tuple[int, str]]]:
        """Renew our row (False if it is gone: we were declared dead) and take the masters
        that are stale for good (each taken by exactly one survivor)."""
        self._ensure_table(conn)
        renewed = conn.execute(MASTERS.update()
                               .where(MASTERS.c.masterid == self.master.masterid)
                               .values(alive_at=now)).rowcount == 1
        dead = []
        if renewed and self.timeout > 0:
            stale = conn.execute(sa.select(MASTERS.c.masterid, MASTERS.c.name)
                                 .where(MASTERS.c.alive_at < now - self.timeout)).all()
            for masterid, name in stale:
                taken = conn.execute(MASTERS.delete()
                                     .where(MASTERS.c.masterid == masterid)
                                     .where(MASTERS.c.alive_at < now - self.timeout))
                if taken.rowcount == 1:
                    dead.append((masterid, name))
        conn.commit()
        return renewed, dead

    # ------------------------------------------------------------------ the loop
    @defer.inlineCallbacks
    def _tick(self) -> Any:
        now = self.master.reactor.seconds()
        try:
            renewed, dead = yield self.master.db.pool.do(self._renew_and_reap, now)
        except Exception as e:
            log.msg(f"msgproto: could not renew this master's liveness ({e}); retrying")
            return
        if not renewed:
            log.msg("msgproto: another master declared this master dead (it could not renew "
                    f"its liveness within {self.timeout:g} s): dropping its msg workers, "
                    "whose builds now run elsewhere")
            self.fence()
            yield self.master.db.pool.do(self._register)
        for masterid, name in dead:
            log.msg(f"msgproto: master {name!r} (id {masterid}) renewed nothing for "
                    f"{self.timeout:g} s: declaring it dead and running its build requests "
                    "again")
            try:
                yield self.master.data.updates.masterStopped(name=name, masterid=masterid)
                yield self._unclaim(masterid)
                yield self._disconnect_workers(masterid)
            except Exception:
                log.err(None, f"msgproto: housekeeping of dead master {name!r}")

    def _master_stopped(self, key: Any, message: dict[str, Any]) -> Any:
        """Buildbot stopped a master (its own 10-minute expiry, or ours): make sure its
        build requests are unclaimed (Buildbot unclaims only its own)."""
        masterid = message.get("masterid")
        if masterid is None or masterid == self.master.masterid:
            return None
        return self._unclaim(masterid)

    @defer.inlineCallbacks
    def _disconnect_workers(self, masterid: int) -> Any:
        """A dead master's workers are no longer connected to it (Buildbot's housekeeping
        leaves its ``connected_workers`` rows, so the API would show them connected)."""
        workers = yield self.master.data.get(("workers",))
        for worker in workers:
            if any(entry["masterid"] == masterid for entry in worker["connected_to"]):
                yield self.master.data.updates.workerDisconnected(
                    workerid=worker["workerid"], masterid=masterid)

    def _unclaim(self, masterid: int) -> Any:
        return self._unclaiming.run(self._unclaim_now, masterid)

    @defer.inlineCallbacks
    def _unclaim_now(self, masterid: int) -> Any:
        requests = yield self.master.db.buildrequests.getBuildRequests(
            complete=False, claimed=masterid)
        brids = [request.buildrequestid for request in requests]
        if brids:
            yield compat.unclaim_build_requests_of(self.master, brids, masterid)
            # as Buildbot's own unclaimBuildRequests: every master's distributor hears it
            yield self.master.data.rtypes.buildrequest.generateEvent(brids, "unclaimed")
            log.msg(f"msgproto: unclaimed build requests {brids} of stopped master "
                    f"{masterid}; a live master runs them again")
