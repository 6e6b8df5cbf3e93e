"""Worker leases in a real SQL database (SQLite here; PostgreSQL in the multi-master tests)."""

from __future__ import annotations

from twisted.internet import defer

from buildbot_msgproto.lease import Owner
from buildbot_msgproto.lease import WorkerLeases

DURATION = 6.0


def run_on(engine):
    """The database runner WorkerLeases takes (Buildbot's ``db.pool.do``), in-thread."""
    def run(fn):
        with engine.connect() as conn:
            return defer.succeed(fn(conn))
    return run


def leases(engine, masterid: int) -> WorkerLeases:
    return WorkerLeases(run_on(engine), masterid, f"master-{masterid}", DURATION)


def result(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_the_first_master_gets_the_lease_the_second_is_told_who_has_it(engine):
    a, b = leases(engine, 1), leases(engine, 2)
    assert result(a.acquire("w1", 100.0)) is None
    assert result(b.acquire("w1", 101.0)) == Owner(1, "master-1", 100.0 + DURATION)
    assert result(a.acquire("w1", 102.0)) is None  # the owner renews by acquiring again


def test_a_lapsed_lease_is_taken_over_and_the_old_owner_learns_it(engine):
    a, b = leases(engine, 1), leases(engine, 2)
    result(a.acquire("w1", 100.0))
    assert result(b.acquire("w1", 100.0 + DURATION - 0.1)) is not None
    assert result(b.acquire("w1", 100.0 + DURATION + 0.1)) is None
    assert result(a.renew(["w1"], 107.0)) == ["w1"]  # a must drop the worker


def test_renewal_keeps_the_lease(engine):
    a, b = leases(engine, 1), leases(engine, 2)
    result(a.acquire("w1", 100.0))
    assert result(a.renew(["w1"], 105.0)) == []
    assert result(b.acquire("w1", 100.0 + DURATION + 1)) == Owner(1, "master-1", 105 + DURATION)


def test_release_frees_the_worker_at_once(engine):
    a, b = leases(engine, 1), leases(engine, 2)
    result(a.acquire("w1", 100.0))
    result(b.release("w1"))  # only the owner can release
    assert result(b.acquire("w1", 101.0)) is not None
    result(a.release("w1"))
    assert result(b.acquire("w1", 101.0)) is None


def test_release_all_clears_a_previous_runs_leases(engine):
    a = leases(engine, 1)
    for name in ("w1", "w2"):
        result(a.acquire(name, 100.0))
    result(a.release_all())
    assert result(a.owner("w1")) is None and result(a.owner("w2")) is None


def test_renewal_in_batches_covers_many_workers(engine):
    a = leases(engine, 1)
    names = [f"w{i}" for i in range(1200)]
    for name in names:
        result(a.acquire(name, 100.0))
    assert result(a.renew(names, 103.0)) == []
    assert result(a.owner("w1199")).expires_at == 103.0 + DURATION
