"""A worker's list of masters: the order it tries them in, and failover between them."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet import error
from twisted.internet import task

from buildbot_worker_msgproto.client import WorkerSessions
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.reach.failover import FailoverEndpoint
from buildbot_worker_msgproto.reach.failover import MasterList
from worker_tests.test_driver import LIMITS
from worker_tests.test_driver import Handler
from worker_tests.test_driver import connect as connect_in_memory
from worker_tests.test_driver import settle

MASTERS = ["a:9989", "b:9989", "c:9989"]


def test_preferred_order_starts_at_the_first_master_every_time():
    masters = MasterList(MASTERS)
    assert masters.candidates() == [0, 1, 2]
    masters.connected(1)
    assert masters.candidates() == [0, 1, 2]  # back to the first when it can


def test_a_session_that_may_resume_goes_back_to_its_master_first():
    masters = MasterList(MASTERS)
    masters.connected(2)
    masters.pin()
    assert masters.candidates() == [2, 0, 1]
    masters.unpin()
    assert masters.candidates() == [0, 1, 2]


def test_a_refusal_moves_on_to_the_next_master():
    masters = MasterList(MASTERS)
    masters.connected(0)
    masters.refused()  # e.g. not_owner: another master owns the worker
    assert masters.candidates() == [1, 2, 0]


def test_shuffle_starts_at_a_random_master_and_stays_where_it_got_in():
    starts = {MasterList(MASTERS, "shuffle", random.Random(seed)).candidates()[0]
              for seed in range(30)}
    assert starts == {0, 1, 2}
    masters = MasterList(MASTERS, "shuffle", random.Random(1))
    masters.connected(2)
    assert masters.candidates()[0] == 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        MasterList([])
    with pytest.raises(ValueError, match="master_order"):
        MasterList(MASTERS, "round-robin")


class Endpoint:
    """Connects, refuses, or never answers."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if self.behaviour == "accept":
            return defer.succeed(f"protocol of {factory}")
        if self.behaviour == "refuse":
            return defer.fail(error.ConnectionRefusedError())
        return defer.Deferred()  # a dead host: cancelled by the timeout


def connect(clock, endpoints, masters, jitter=0.5):
    failover = FailoverEndpoint(clock, endpoints, masters, spread=2.0, connect_timeout=5.0,
                                jitter=lambda: jitter)
    results = []
    failover.connect("factory").addBoth(results.append)
    return results


def test_the_next_master_is_tried_within_the_same_attempt_after_a_spread_pause():
    clock = task.Clock()
    endpoints = [Endpoint("refuse"), Endpoint("accept"), Endpoint("accept")]
    masters = MasterList(MASTERS)
    results = connect(clock, endpoints, masters)
    assert results == [] and endpoints[1].attempts == 0
    clock.advance(0.99)  # spread 2 s x jitter 0.5
    assert results == []
    clock.advance(0.02)
    assert results == ["protocol of factory"] and masters.current == 1


def test_a_silent_master_is_given_up_after_the_connect_timeout():
    clock = task.Clock()
    endpoints = [Endpoint("hang"), Endpoint("accept"), Endpoint("accept")]
    masters = MasterList(MASTERS)
    results = connect(clock, endpoints, masters, jitter=0.0)
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    assert results == ["protocol of factory"] and masters.current == 1


def test_when_every_master_refuses_the_attempt_fails():
    clock = task.Clock()
    endpoints = [Endpoint("refuse") for _ in MASTERS]
    results = connect(clock, endpoints, MasterList(MASTERS), jitter=0.0)
    clock.advance(1)
    assert len(results) == 1 and results[0].check(error.ConnectionRefusedError)
    assert [e.attempts for e in endpoints] == [1, 1, 1]


def test_a_master_that_could_not_be_reached_is_tried_last_for_a_while():
    clock = task.Clock()
    masters = MasterList(MASTERS, clock=clock.seconds)
    masters.unreachable(0)
    assert masters.candidates() == [1, 2, 0]
    clock.advance(16)
    assert masters.candidates() == [0, 1, 2]
    masters.unreachable(0)
    masters.connected(0)  # it answered again after all
    assert masters.candidates() == [0, 1, 2]


# ---------------------------------------------------------------- a suspended session
def _suspended_on_first_master():
    """A worker's session, opened on master 0 of three, whose link was just cut."""
    clock = task.Clock()
    Handler.registry = {}
    masters = MasterList(MASTERS)
    handler = Handler()
    sessions = WorkerSessions(handler, "w1", "pw", clock, LIMITS, masters=masters)
    master = SessionDriver(Session(Role.MASTER, LIMITS, now=0), Handler(), clock)
    masters.connected(0)
    wire = connect_in_memory(clock, master, sessions.new_driver())
    settle(clock)
    old = sessions.driver
    assert old.session.is_open
    wire.cut()
    assert old.session.is_suspended
    return sessions, masters, old, handler


def test_a_suspended_session_resumes_on_its_own_master():
    sessions, masters, old, handler = _suspended_on_first_master()
    masters.connected(0)
    receiver = sessions.new_driver()
    assert not isinstance(receiver, SessionDriver)  # a new port of the old session
    assert sessions.driver is old and old.session.is_suspended
    assert handler.ended == []


def _log_in_to_second_master(sessions, masters):
    """The first master could not be reached; the second let the worker in."""
    masters.unreachable(0)
    masters.connected(1)
    receiver = sessions.new_driver()
    assert isinstance(receiver, SessionDriver)  # a fresh login, not a resume
    second = SessionDriver(Session(Role.MASTER, LIMITS, now=0), Handler(), receiver.reactor)
    connect_in_memory(receiver.reactor, second, receiver)
    settle(receiver.reactor)
    assert receiver.session.is_open and second.session.is_open
    return receiver, second


def test_a_failed_over_worker_keeps_its_session_until_the_other_master_takes_it_over():
    """Sessions live in one master's memory: the worker logs in to the other master but
    keeps its suspended session (and its commands) until that master's first message
    says it took the worker over; then the old session ends."""
    sessions, masters, old, handler = _suspended_on_first_master()
    new, second = _log_in_to_second_master(sessions, masters)
    assert sessions.driver is old and old.session.is_suspended  # on probation
    assert handler.ended == []
    answer = second.request("print", message="taken over")
    settle(new.reactor)
    assert old.session.is_closed and handler.ended == [("session_expired", False)]
    assert sessions.driver is new and new.session.is_open
    assert answer.called and answer.result == "printed taken over"


def test_a_worker_refused_by_the_other_master_resumes_on_its_own():
    """The other master refused the worker (its own master is alive and renewed the
    lease): the suspended session is untouched and its master is tried first again."""
    sessions, masters, old, handler = _suspended_on_first_master()
    new, second = _log_in_to_second_master(sessions, masters)
    second.close("not_owner", "master a owns this worker")
    settle(new.reactor)
    assert new.session.is_closed
    assert sessions.driver is old and old.session.is_suspended and old.session.may_resume
    assert handler.ended == []  # the bot heard nothing of the refused login
    assert masters.candidates()[0] == 0  # back to its own master, reachable or not
    masters.connected(0)
    assert not isinstance(sessions.new_driver(), SessionDriver)  # it resumes
