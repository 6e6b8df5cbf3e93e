"""The Twisted glue of a session (SessionDriver), with a fake clock and in-memory links.

Two real drivers, a master's and a worker's, with real sessions, talk over a pair of
in-memory frame transports that deliver on the next clock turn, so every timer
(heartbeats, acks, resume windows) runs on ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import task

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import RemoteError
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.driver import SessionLost
from buildbot_worker_msgproto.driver import listener
from buildbot_worker_msgproto.driver import responder
from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import TransportGuarantees

LIMITS = Limits(auth_iterations=16, heartbeat_interval=1, heartbeat_timeout=3,
                resume_window=10, handshake_timeout=5)
CREDENTIALS = auth.ScramCredentials.from_password("pw", 16)


class MemoryTransport(FrameTransport):
    """One end of an in-memory connection; frames arrive on the next clock turn."""

    guarantees = TransportGuarantees(ordered=True, reliable=True, max_frame_size=None,
                                     encrypted=False)

    def __init__(self, clock: task.Clock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.other: MemoryTransport | None = None
        self.receiver: Any = None
        self.open = True
        self.dropping = False  # a dead path: frames are lost, nobody notices
        self.sent = 0

    def send_frames(self, frames: list[bytes]) -> None:
        if self.open and not self.dropping and self.other is not None:
            self.sent += len(frames)
            for frame in frames:
                self.clock.callLater(0, self.other.deliver, frame)

    def deliver(self, frame: bytes) -> None:
        if self.open:
            self.receiver.frame_received(frame)

    def close(self) -> None:
        self.clock.callLater(0, self.cut, "closed")

    def abort(self) -> None:
        self.cut("aborted")

    def cut(self, reason: str = "cut") -> None:
        """The connection dies; both ends hear it, unless the path is dead (then only
        this end knows)."""
        ends = (self,) if self.dropping else (self, self.other)
        for end in ends:
            if end is not None and end.open:
                end.open = False
                end.receiver.transport_closed(reason)

    def peer(self) -> str:
        return f"127.0.0.1:{'1' if self.name == 'worker' else '2'}"


def connect(clock: task.Clock, master_receiver: Any, worker_receiver: Any) -> MemoryTransport:
    """Open a connection; returns the worker's end."""
    worker_end, master_end = MemoryTransport(clock, "worker"), MemoryTransport(clock, "master")
    worker_end.other, master_end.other = master_end, worker_end
    worker_end.receiver, master_end.receiver = worker_receiver, master_receiver
    master_receiver.transport_opened(master_end)
    worker_receiver.transport_opened(worker_end)
    return worker_end


class Handler(MessageHandler):
    """Records what the driver tells it; answers the master's handshake."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, bool]] = []
        self.lost: list[Any] = []
        self.resumed_events: list[Any] = []
        self.updates: list[Any] = []
        self.writable: list[bool] = []
        self.fail_hello = False

    def hello_received(self, driver: SessionDriver, event: Any) -> None:
        if self.fail_hello:
            raise RuntimeError("a bug in the handshake handler")
        target = self.registry.get(event.resume) if event.resume else None
        driver.answer_hello(CREDENTIALS, resume=target.session if target else None)

    def authenticated(self, driver: SessionDriver, event: Any) -> None:
        if driver.session.role is Role.MASTER:  # the master's resumable sessions
            self.registry[driver.session.session_id] = driver

    def resumed(self, driver: SessionDriver, event: Any) -> None:
        if event.session is not driver.session:  # the master's new connection
            self.registry[event.session_id].adopt(driver, event)
        else:
            self.resumed_events.append(event)

    def link_lost(self, driver: SessionDriver, event: Any) -> None:
        self.lost.append(event)

    def writable_changed(self, driver: SessionDriver, writable: bool) -> None:
        self.writable.append(writable)

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        self.ended.append((code, by_peer))

    @responder("print")
    def on_print(self, message: dict[str, Any]) -> str:
        return f"printed {message['message']}"

    @responder("keepalive")
    def on_keepalive(self, message: dict[str, Any]) -> Any:
        return defer.Deferred()  # never answered: the test decides

    @listener("update")
    def on_update(self, message: dict[str, Any]) -> None:
        if message["updates"] == [["stdout", "MALFORMED"]]:
            raise ProtocolError("a malformed update", code="bad_message")
        self.updates.append(message["updates"])


Handler.registry: dict[str, SessionDriver] = {}


@pytest.fixture
def pair():
    clock = task.Clock()
    Handler.registry = {}
    master_handler, worker_handler = Handler(), Handler()
    master = SessionDriver(Session(Role.MASTER, LIMITS, now=0), master_handler, clock)
    worker = SessionDriver(Session(Role.WORKER, LIMITS, now=0, worker_name="w1", password="pw"),
                           worker_handler, clock)
    wire = connect(clock, master, worker)
    clock.advance(0)
    clock.pump([0] * 20)
    assert master.session.is_open and worker.session.is_open
    return clock, master, worker, wire, master_handler, worker_handler


def settle(clock: task.Clock) -> None:
    clock.pump([0] * 20)


def result_of(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0] if out else None


def test_a_request_gets_its_answer(pair):
    clock, master, worker, *_ = pair
    d = master.request("print", message="hello")
    settle(clock)
    assert result_of(d) == "printed hello"


def test_a_request_without_responder_fails_with_unknown_command(pair):
    clock, master, worker, *_ = pair
    d = worker.request("request_shutdown")
    settle(clock)
    failure = result_of(d)
    assert failure.check(RemoteError) and failure.value.code == "unknown_command"


def test_a_malformed_notification_closes_the_session(pair):
    clock, master, worker, wire, master_handler, worker_handler = pair
    worker.notify("update", command_id=1, updates=[["stdout", "ok\n"]])
    worker.notify("update", command_id=1, updates=[["stdout", "MALFORMED"]])
    settle(clock)
    assert master_handler.updates == [[["stdout", "ok\n"]]]
    assert master_handler.ended == [("bad_message", False)]
    assert worker_handler.ended == [("bad_message", True)]


def test_heartbeats_flow_on_an_idle_session(pair):
    clock, master, worker, wire, master_handler, worker_handler = pair
    sent = wire.sent
    for _ in range(10):  # 10 s idle: pings and acks keep both sides alive
        clock.advance(1)
        settle(clock)
    assert wire.sent > sent
    assert master.session.is_open and worker.session.is_open
    assert not master_handler.lost and not worker_handler.lost


def test_a_lost_connection_suspends_and_a_new_one_resumes_with_the_request_answered(pair):
    clock, master, worker, wire, master_handler, worker_handler = pair
    wire.cut()
    assert master.session.is_suspended and worker.session.is_suspended
    assert len(master_handler.lost) == len(worker_handler.lost) == 1
    d = master.request("print", message="while away")  # waits in the stream
    settle(clock)
    assert not d.called
    new_master = SessionDriver(Session(Role.MASTER, LIMITS, now=clock.seconds()),
                               master_handler, clock)
    connect(clock, new_master, worker.new_port())
    settle(clock)
    assert result_of(d) == "printed while away"
    assert master.session.is_open and master.session.resumes == 1
    assert [e.session_id for e in worker_handler.resumed_events] == [master.session.session_id]
    assert master_handler.resumed_events  # the master's own driver heard it too
    assert not master_handler.ended and not worker_handler.ended


def test_a_silent_peer_suspends_the_session_then_the_window_ends_it(pair):
    clock, master, worker, wire, master_handler, worker_handler = pair
    wire.dropping = wire.other.dropping = True  # a dead path: nothing arrives
    d = master.request("print", message="never answered")
    clock.advance(LIMITS.heartbeat_timeout)
    settle(clock)
    assert worker_handler.lost and worker_handler.lost[0].code == "heartbeat_timeout"
    assert master_handler.lost
    clock.advance(LIMITS.resume_window)  # the worker gives up first ...
    assert worker_handler.ended == [("resume_window_expired", False)]
    assert not master_handler.ended
    clock.advance(LIMITS.heartbeat_timeout)  # ... the master one heartbeat timeout later
    assert master_handler.ended == [("resume_window_expired", False)]
    assert result_of(d).check(SessionLost)


def test_an_error_in_the_handshake_handler_closes_at_once():
    clock = task.Clock()
    handler = Handler()
    handler.fail_hello = True
    master = SessionDriver(Session(Role.MASTER, LIMITS, now=0), handler, clock)
    worker_handler = Handler()
    worker = SessionDriver(Session(Role.WORKER, LIMITS, now=0, worker_name="w1", password="pw"),
                           worker_handler, clock)
    connect(clock, master, worker)
    settle(clock)
    assert handler.ended == [("internal_error", False)]
    assert worker_handler.ended == [("internal_error", True)]
    assert clock.seconds() < LIMITS.handshake_timeout


def test_close_ends_both_sides_and_fails_pending_requests(pair):
    clock, master, worker, wire, master_handler, worker_handler = pair
    d = master.request("keepalive")
    settle(clock)
    master.close("normal", "done")
    settle(clock)
    assert result_of(d).check(SessionLost)
    assert master_handler.ended == [("normal", False)]
    assert worker_handler.ended == [("normal", True)]
    assert not wire.open


def test_a_full_replay_buffer_makes_the_session_unwritable_until_acked():
    clock = task.Clock()
    Handler.registry = {}
    limits = LIMITS.replace(max_replay_bytes=16 * 1024, max_handshake_frame_size=16 * 1024)
    master_handler, worker_handler = Handler(), Handler()
    master = SessionDriver(Session(Role.MASTER, limits, now=0), master_handler, clock)
    worker = SessionDriver(Session(Role.WORKER, limits, now=0, worker_name="w1", password="pw"),
                           worker_handler, clock)
    wire = connect(clock, master, worker)
    settle(clock)
    wire.dropping = True  # the worker's frames go nowhere for now: nothing is acked
    text = "x" * 4000 + "\n"
    for _ in range(5):
        worker.notify("update", command_id=1, updates=[["stdout", text]])
    assert not worker.writable and worker_handler.writable == [False]
    waiting = worker.wait_writable()
    assert not waiting.called
    wire.cut()  # the link dies; a resume resends everything and the acks free room
    new_master = SessionDriver(Session(Role.MASTER, limits, now=clock.seconds()),
                               master_handler, clock)
    connect(clock, new_master, worker.new_port())
    settle(clock)
    clock.advance(limits.ack_delay)
    settle(clock)
    assert worker.writable and waiting.called and worker_handler.writable == [False, True]
    assert len(master_handler.updates) == 5
