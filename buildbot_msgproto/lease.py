"""One owner per worker across masters: a lease in the masters' shared database.

Buildbot's own multi-master mode lets two masters accept the same worker name at once
(``connected_workers`` is per master, ``max_builds`` too).  With several masters the plugin
gives each worker one owner: the master that attaches a msg worker first takes a lease on
its name, renews it while the worker's session lives (suspended sessions too: the worker
comes back to the same master first), and releases it when the session ends.  Another
master refuses the worker (close code ``not_owner``) until the lease lapses, which takes
``lease_seconds`` (not Buildbot's 10 minutes) after its owner stopped renewing: a killed
master's workers are taken over within seconds.

The claim is Buildbot's insert-or-conflict pattern (``buildrequest_claims``): an INSERT,
and on an IntegrityError one conditional UPDATE that succeeds only if the lease is ours or
has lapsed.  Every master renews all of its leases with one UPDATE.  A master that finds
a lease it held taken by another (it could not renew in time) drops that worker: the old
owner always gives a worker up before a new owner can have started a build on it.

Times are the masters' clocks (``reactor.seconds()``): keep them in sync (NTP); a skew
of ``s`` seconds shortens or lengthens the takeover by ``s``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable

import sqlalchemy as sa

#: The table, in Buildbot's database, created on first use.
TABLE_NAME = "msgproto_worker_leases"

METADATA = sa.MetaData()
LEASES = sa.Table(
    TABLE_NAME, METADATA,
    sa.Column("worker", sa.String(191), primary_key=True),
    sa.Column("masterid", sa.Integer, nullable=False),
    sa.Column("master_name", sa.String(191), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

#: Runs a function with a SQLAlchemy connection in the database thread pool and returns a
#: Deferred of its result: Buildbot's ``master.db.pool.do``.
RunInPool = Callable[[Callable[[Any], Any]], Any]

#: Workers per statement when renewing (SQLite bounds the parameters of one statement).
BATCH = 500


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who holds a worker's lease."""

    masterid: int
    master_name: str
    expires_at: float


def ensure_tables(conn: Any) -> None:
    """Create the plugin's tables in Buildbot's database if they are missing.  Several
    masters start at once: when another one created a table first (PostgreSQL reports a
    unique violation of its catalog), that is fine."""
    try:
        METADATA.create_all(bind=conn, checkfirst=True)
        conn.commit()
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        conn.rollback()
        missing = set(METADATA.tables) - set(sa.inspect(conn).get_table_names())
        if missing:
            raise


def _insert_or_nothing(conn: Any) -> Any:
    """An INSERT that does nothing if the worker's row exists (rowcount 0), where the
    database can say so without an error (PostgreSQL and SQLite would otherwise log every
    refused claim as an error); elsewhere a plain INSERT and its IntegrityError."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(LEASES).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(LEASES).on_conflict_do_nothing()
    return LEASES.insert()


class WorkerLeases:
    """The leases of one master (``masterid``, ``master_name``) in the shared database."""

    def __init__(self, run: RunInPool, masterid: int, master_name: str,
                 duration: float) -> None:
        self.run = run
        self.masterid = masterid
        self.master_name = master_name
        self.duration = duration
        self._created = False

    def _ensure_table(self, conn: Any) -> None:
        if not self._created:
            ensure_tables(conn)
            self._created = True

    # ------------------------------------------------------------------ claims
    def acquire(self, worker: str, now: float) -> Any:
        """Take or renew the lease of ``worker``: a Deferred firing with None when this
        master holds it, or with the :class:`Owner` that holds it still."""
        return self.run(lambda conn: self._acquire(conn, worker, now))

    def _acquire(self, conn: Any, worker: str, now: float) -> Owner | None:
        self._ensure_table(conn)
        row = {"worker": worker, "masterid": self.masterid, "master_name": self.master_name,
               "expires_at": now + self.duration}
        try:
            inserted = conn.execute(_insert_or_nothing(conn), [row]).rowcount
            conn.commit()
            if inserted == 1:
                return None
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            conn.rollback()
        taken = conn.execute(
            LEASES.update()
            .where(LEASES.c.worker == worker)
            .where(sa.or_(LEASES.c.masterid == self.masterid, LEASES.c.expires_at < now))
            .values(masterid=self.masterid, master_name=self.master_name,
                    expires_at=now + self.duration))
        conn.commit()
        if taken.rowcount == 1:
            return None
        current = conn.execute(sa.select(LEASES.c.masterid, LEASES.c.master_name,
                                         LEASES.c.expires_at)
                               .where(LEASES.c.worker == worker)).first()
        if current is None:  # released between our two statements: try once more
            return self._acquire(conn, worker, now)
        return Owner(*current)

    def renew(self, workers: list[str], now: float) -> Any:
        """Extend this master's leases of ``workers``: a Deferred firing with the names
        among them whose lease this master no longer holds (taken over by another)."""
        return self.run(lambda conn: self._renew(conn, list(workers), now))

    def _renew(self, conn: Any, workers: list[str], now: float) -> list[str]:
        self._ensure_table(conn)
        held: set[str] = set()
        for start in range(0, len(workers), BATCH):
            batch = workers[start:start + BATCH]
            mine = (LEASES.c.masterid == self.masterid) & LEASES.c.worker.in_(batch)
            conn.execute(LEASES.update().where(mine).values(expires_at=now + self.duration))
            held.update(name for (name,) in conn.execute(sa.select(LEASES.c.worker)
                                                         .where(mine)))
        conn.commit()
        return [worker for worker in workers if worker not in held]

    def release(self, worker: str) -> Any:
        """Give up the lease of ``worker`` (if this master holds it)."""
        return self.run(lambda conn: self._release(conn, worker))

    def _release(self, conn: Any, worker: str) -> None:
        self._ensure_table(conn)
        conn.execute(LEASES.delete().where(LEASES.c.worker == worker)
                     .where(LEASES.c.masterid == self.masterid))
        conn.commit()

    def release_all(self) -> Any:
        """Give up every lease this master holds (at start: a previous run's leftovers)."""
        def delete(conn: Any) -> None:
            self._ensure_table(conn)
            conn.execute(LEASES.delete().where(LEASES.c.masterid == self.masterid))
            conn.commit()
        return self.run(delete)

    def owner(self, worker: str) -> Any:
        """The current :class:`Owner` of ``worker``'s lease, or None (a Deferred)."""
        def read(conn: Any) -> Owner | None:
            self._ensure_table(conn)
            row = conn.execute(sa.select(LEASES.c.masterid, LEASES.c.master_name,
                                         LEASES.c.expires_at)
                               .where(LEASES.c.worker == worker)).first()
            return Owner(*row) if row is not None else None
        return self.run(read)
