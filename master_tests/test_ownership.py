"""WorkerOwnership's wait for a lapsing lease, with a fake clock and a real SQLite table."""

from __future__ import annotations

import types

import pytest
from twisted.internet import defer
from twisted.internet import task

from buildbot_msgproto.lease import Owner
from buildbot_msgproto.lease import WorkerLeases
from buildbot_msgproto.ownership import LAPSE_MARGIN
from buildbot_msgproto.ownership import WorkerOwnership
from master_tests.test_lease import DURATION
from master_tests.test_lease import leases
from master_tests.test_lease import run_on


def ownership_of(engine, clock: task.Clock, masterid: int) -> WorkerOwnership:
    master = types.SimpleNamespace(db=types.SimpleNamespace(pool=types.SimpleNamespace(
        do=run_on(engine))), masterid=masterid, name=f"master-{masterid}", reactor=clock)
    return WorkerOwnership(master, DURATION, lost=lambda worker: None)


def outcome(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(100.0)
    return clock


def held_by_a(engine, at: float) -> WorkerLeases:
    a = leases(engine, 1)
    assert outcome(a.acquire("w1", at)) == [None]
    return a


def test_a_dead_owners_lease_is_taken_over_when_it_lapses(engine, clock):
    held_by_a(engine, 97.0)  # expires at 103
    b = ownership_of(engine, clock, 2)
    owner = outcome(b.claim("w1"))[0]
    assert owner == Owner(1, "master-1", 103.0)
    got = outcome(b.claim_when_lapsed("w1", owner, lambda: True))
    clock.advance(3.0)
    assert got == []  # still running: it waits for the lapse, not refused early
    clock.advance(LAPSE_MARGIN)
    assert got == [None]
    assert b.held == {"w1": 1}


def test_an_owner_that_renews_keeps_its_worker(engine, clock):
    a = held_by_a(engine, 97.0)
    b = ownership_of(engine, clock, 2)
    owner = outcome(b.claim("w1"))[0]
    got = outcome(b.claim_when_lapsed("w1", owner, lambda: True))
    assert outcome(a.renew(["w1"], 102.0)) == [[]]  # alive: renewed before the lapse
    clock.advance(3.0 + LAPSE_MARGIN)
    assert got == [Owner(1, "master-1", 108.0)]
    assert b.held == {}


def test_a_login_that_ended_meanwhile_claims_nothing(engine, clock):
    held_by_a(engine, 97.0)
    b = ownership_of(engine, clock, 2)
    owner = outcome(b.claim("w1"))[0]
    wanted = [True]
    got = outcome(b.claim_when_lapsed("w1", owner, lambda: wanted[0]))
    wanted[0] = False
    clock.advance(3.0 + LAPSE_MARGIN)
    assert got == [owner]
    assert b.held == {}


def test_a_lease_beyond_one_period_is_not_waited_for(engine, clock):
    held_by_a(engine, 97.0)
    b = ownership_of(engine, clock, 2)
    skewed = Owner(1, "master-1", clock.seconds() + DURATION + 1.0)  # a clock ahead
    assert outcome(b.claim_when_lapsed("w1", skewed, lambda: True)) == [skewed]
    assert clock.getDelayedCalls() == []
