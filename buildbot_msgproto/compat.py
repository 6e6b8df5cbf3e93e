"""Every place where the master side touches private Buildbot or Twisted internals.

Each touch is a small function or class here, with a test in
``master_tests/test_compat_internals.py`` that fails loudly (naming the internal) when
Buildbot or Twisted changes underneath it.  Nothing else in ``buildbot_msgproto`` may use
an underscore name of another package.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.spread import banana
from twisted.spread import pb

#: Twisted's bound on a banana length prefix (``banana._PREFIX_LIMIT``): a broker that
#: skips its own dialect offer must still set it, as ``Banana.connectionMade`` does.
PB_PREFIX_LIMIT: int = banana._PREFIX_LIMIT


class PreNegotiatedBroker(pb.Broker):
    """A PB server broker that does not send its dialect list: the negotiating port
    already did (``buildbot_msgproto.negotiation``).

    ``Banana.connectionMade`` sends the offer and resets ``currentDialect``; this does the
    same without the offer.  The client's dialect choice is then replayed into it, so
    banana selects ``pb`` through its normal path.
    """

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.setPrefixLimit(PB_PREFIX_LIMIT)
        self.currentDialect = None


def use_pre_negotiated_broker(pb_factory: pb.PBServerFactory) -> None:
    """Make Buildbot's PB server factory build :class:`PreNegotiatedBroker` brokers
    (``PBServerFactory.protocol`` is a class attribute Twisted's Factory reads)."""
    pb_factory.protocol = PreNegotiatedBroker


def create_pb_connection(master: Any, mind: Any, worker_name: str) -> Any:
    """Attach a legacy PB worker that logged in on our port exactly as Buildbot's own PB
    port would: ``UpdateRegistrationListener._create_connection`` of the master's PB
    listener builds Buildbot's PB ``Connection`` and runs the duplicate-worker check."""
    return master.workers.pb._create_connection(mind, worker_name)


@defer.inlineCallbacks
def update_worker_info(master: Any, workerid: int, fields: dict[str, Any]) -> Any:
    """Merge ``fields`` into the stored info of worker ``workerid`` (the ``info`` column of
    Buildbot's ``workers`` table, ``workerinfo`` in the data API) and tell the data API's
    consumers with the ``state_updated`` event Buildbot itself sends when a worker is
    paused: the web UI refreshes the worker, chat bots ignore it (a second ``connected``
    event, which ``workerConnected`` would send, announces the worker anew).  Buildbot has
    no update method for the info alone: ``workerConnected`` writes all of it, and also
    (re)inserts the connected row."""
    import sqlalchemy as sa

    def update(conn: Any) -> None:
        table = master.db.model.workers
        row = conn.execute(sa.select(table.c.info).where(table.c.id == workerid)).fetchone()
        if row is None:
            return
        info = dict(row.info or {})
        info.update(fields)
        conn.execute(table.update().where(table.c.id == workerid).values(info=info))

    yield master.db.pool.do_with_transaction(update)
    worker = yield master.data.get(("workers", workerid))
    if worker is not None:
        master.data.rtypes.worker.produceEvent(worker, "state_updated")


def unclaim_build_requests_of(master: Any, brids: list[int], masterid: int) -> Any:
    """Unclaim build requests claimed by *another* (stopped) master.

    Buildbot's public ``unclaimBuildRequests`` deletes only the claims of the calling
    master (``WHERE masterid = <own id>``), so after a master died its requests stayed
    claimed forever; ``BuildRequestsConnectorComponent._unclaim_buildrequests_for_master``
    takes the masterid.
    """
    return master.db.buildrequests._unclaim_buildrequests_for_master(brids, masterid)
