"""ConnectionStatus (buildbot_msgproto/status.py) on a fake clock: what is measured and
when the worker info is written (only on change).  The real thing, against a real master
and a browser, is master_tests/e2e/test_web_status.py."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import task

from buildbot_msgproto import status
from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session


class Transport:
    transport_name = "tcp"

    def encryption(self) -> str:
        return "none"


class Driver:
    """The parts of a SessionDriver the status reads; requests are answered by hand."""

    def __init__(self) -> None:
        self.session = Session(Role.MASTER)
        self.session.version = 1
        self.session.features = frozenset({"blob"})
        self.session.auth_mechanism = auth.SCRAM
        self.session._state = self.session._state.OPEN
        self.transport: Any = Transport()
        self.peer = "127.0.0.1:1"
        self.requests: list[defer.Deferred] = []

    def request(self, message_type: str) -> defer.Deferred:
        assert message_type == "keepalive"
        d: defer.Deferred = defer.Deferred()
        self.requests.append(d)
        return d


def make(interval: float = 10.0) -> tuple[status.ConnectionStatus, Driver, task.Clock, list]:
    clock, driver, writes = task.Clock(), Driver(), []
    connection = status.ConnectionStatus(clock, "master-1", driver, interval, writes.append)
    return connection, driver, clock, writes


def test_round_trip_is_smoothed_and_changes_are_thresholded():
    rtt = status.RoundTrip()
    rtt.add(0.010)
    assert rtt.ms == 10.0
    rtt.add(0.018)
    assert rtt.ms == 11.0  # 10 + (18 - 10) / 8
    assert status.rtt_changed(None, 1.0)
    assert not status.rtt_changed(10.0, 11.9)  # < 20 %
    assert status.rtt_changed(10.0, 12.1)
    assert not status.rtt_changed(1.0, 1.4)  # 40 %, but < 0.5 ms


def test_start_publishes_every_field_then_probes_on_the_interval():
    connection, driver, clock, writes = make()
    connection.start()
    assert writes == [{"msg_protocol": "msg v1 (blob)", "msg_transport": "tcp",
                       "msg_encryption": "none", "msg_auth": "password",
                       "msg_master": "master-1", "msg_rtt_ms": None, "msg_resumes": 0}]
    assert len(driver.requests) == 1  # the first probe, at once
    clock.advance(0.004)
    driver.requests[0].callback(None)
    assert writes[-1] == {"msg_rtt_ms": 4.0}
    clock.advance(9.996)
    assert len(driver.requests) == 2
    clock.advance(0.0041)
    driver.requests[1].callback(None)  # 4.1 ms: not worth a write
    assert len(writes) == 2


def test_nothing_is_written_when_nothing_changed():
    connection, driver, clock, writes = make()
    connection.start()
    connection.refresh()
    connection.refresh()
    assert len(writes) == 1


def test_no_probe_while_suspended_and_a_sample_across_a_resume_is_dropped():
    connection, driver, clock, writes = make()
    connection.start()
    driver.session.resumes = 1  # the session resumed while the first probe was out
    clock.pump([10.0, 10.0])
    driver.requests[0].callback(None)
    assert connection.rtt.ms is None
    driver.session._state = driver.session._state.SUSPENDED
    clock.pump([10.0, 10.0])
    assert len(driver.requests) == 3  # at 0, 10 and 20 s, none while suspended


def test_a_resume_is_published_with_its_time():
    connection, driver, clock, writes = make(interval=0)
    connection.start()
    driver.session.resumes = 2
    driver.session.last_resumed_at = 0.0
    connection.refresh()
    assert writes[-1] == {"msg_resumes": 2, "msg_last_resume": "1970-01-01 00:00:00 UTC"}
    assert driver.requests == []  # interval 0: no probes


def test_writes_do_not_overlap_and_a_change_meanwhile_is_written_after():
    clock, driver = task.Clock(), Driver()
    pending: list[defer.Deferred] = []
    writes: list[dict] = []

    def publish(fields: dict) -> defer.Deferred:
        writes.append(fields)
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d

    connection = status.ConnectionStatus(clock, "m", driver, 0, publish)
    connection.start()
    driver.session.resumes = 1
    connection.refresh()  # a write is in flight: remembered, not started
    assert len(writes) == 1
    pending[0].callback(None)
    assert writes[-1] == {"msg_resumes": 1}
    pending[1].callback(None)
    connection.stop()
    driver.session.resumes = 2
    connection.refresh()
    assert len(writes) == 2  # stopped: nothing more
