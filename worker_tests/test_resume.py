"""Session resume in the sans-IO core: links come and go, the stream goes on.

Everything runs in memory with a fake clock.  A "connection" is a pair of frame lists
moved by hand; cutting it loses whatever is in flight, exactly as a dropped TCP
connection does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import Event
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.events import LinkLost
from buildbot_worker_msgproto.protocol.events import NotificationReceived
from buildbot_worker_msgproto.protocol.events import RequestReceived
from buildbot_worker_msgproto.protocol.events import ResponseReceived
from buildbot_worker_msgproto.protocol.events import Resumed
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.protocol.session import State
from worker_tests.strategies import examples

PASSWORD = "pw"
ITERATIONS = 16
LIMITS = Limits(auth_iterations=ITERATIONS, heartbeat_interval=1, heartbeat_timeout=3,
                resume_window=20, handshake_timeout=5)
CREDENTIALS = auth.ScramCredentials.from_password(PASSWORD, ITERATIONS)


def decoded(frames: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in frames]


class Master:
    """The master's side: a registry of sessions, a new Session per connection."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.current: Session | None = None  # the session the current connection drives

    def connect(self, now: float) -> Session:
        self.current = Session(Role.MASTER, self.limits, now=now)
        return self.current

    def handle(self, events: list[Event], now: float) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, HelloReceived):
                target = self.sessions.get(event.resume or "")
                out += self.handle(self.current.answer_hello(CREDENTIALS, now, target), now)
            elif isinstance(event, Authenticated):
                self.sessions[self.current.session_id] = self.current
                out.append(event)
            elif isinstance(event, Resumed):
                self.current = event.session  # the connection now drives that session
                out.append(event)
            else:
                out.append(event)
        return out


class Wire:
    """One connection between the worker session and the master's current session."""

    def __init__(self, master: Master, worker: Session, now: float,
                 first: bool = False) -> None:
        self.master = master
        self.worker = worker
        master.connect(now)
        if not first:
            worker.new_link(now)
        worker.start(now)
        self.master_events: list[Event] = []
        self.worker_events: list[Event] = []

    def pump(self, now: float, rounds: int = 10) -> None:
        """Deliver everything both ways until quiet."""
        for _ in range(rounds):
            moved = False
            for frame in self.worker.frames_to_send():
                moved = True
                events = self.master.current.receive_frame(frame, now)
                self.master_events += self.master.handle(events, now)
            for frame in self.master.current.frames_to_send():
                moved = True
                self.worker_events += self.worker.receive_frame(frame, now)
            if not moved:
                return

    def cut(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """Drop the connection: whatever was queued is lost; both sides notice."""
        lost = (self.worker.frames_to_send(), self.master.current.frames_to_send())
        self.worker_events += self.worker.link_lost(self.worker.link, "cut", now)
        self.master_events += self.master.current.link_lost(self.master.current.link,
                                                           "cut", now)
        return lost


def make_worker(limits: Limits = LIMITS, **kwargs: Any) -> Session:
    return Session(Role.WORKER, limits, worker_name="w1", password=PASSWORD, **kwargs)


def open_wire() -> tuple[Master, Session, Wire]:
    master, worker = Master(), make_worker()
    wire = Wire(master, worker, 0.0, first=True)
    wire.pump(0.0)
    assert worker.is_open and master.current.is_open
    assert worker.resumable and master.current.resumable
    return master, worker, wire


def send_updates(worker: Session, now: float, n: int, start: int = 0) -> None:
    """``worker`` sends ``n`` updates of command c1, lines ``start`` to ``start + n - 1``."""
    for i in range(start, start + n):
        worker.send_notification("update", {"command_id": "c1",
                                            "updates": [["stdout", f"line {i}\n"]]}, now)


def received_lines(events: list[Event]) -> list[str]:
    return [e.message["updates"][0][1] for e in events
            if isinstance(e, NotificationReceived)]


# ----------------------------------------------------------------------------- basics
def test_a_lost_link_suspends_both_sides_with_the_window():
    master, worker, wire = open_wire()
    session = master.current
    wire.cut(5.0)
    assert worker.is_suspended and session.is_suspended
    assert [type(e) for e in wire.worker_events[-1:]] == [LinkLost]
    assert wire.worker_events[-1].window == LIMITS.resume_window
    # the worker gives up after the window, the master one heartbeat timeout later
    assert worker.next_deadline() == 5.0 + LIMITS.resume_window
    assert session.next_deadline() == 5.0 + LIMITS.resume_window + LIMITS.heartbeat_timeout


def test_resume_delivers_everything_exactly_once_in_order_both_ways():
    master, worker, wire = open_wire()
    session = master.current
    send_updates(worker, 1.0, 5)
    wire.pump(1.0)
    send_updates(worker, 2.0, 5, 5)  # sent, then lost in flight
    request_id = session.send_request("print", {"message": "lost in flight"}, 2.0)
    wire.cut(2.0)
    send_updates(worker, 3.0, 5, 10)  # produced while suspended: kept for the resume
    wire2 = Wire(master, worker, 4.0)
    wire2.pump(4.0)
    assert worker.is_open and session.is_open and master.current is session
    lines = received_lines(wire.master_events + wire2.master_events)
    assert lines == [f"line {i}\n" for i in range(15)]
    [request] = [e for e in wire2.worker_events if isinstance(e, RequestReceived)]
    assert request.request_id == request_id
    worker.send_response(request_id, None, 5.0)
    wire2.pump(5.0)
    assert [e for e in wire2.master_events if isinstance(e, ResponseReceived)] == [
        ResponseReceived(request_id, None)]
    [resumed] = [e for e in wire2.worker_events if isinstance(e, Resumed)]
    assert resumed.session_id == session.session_id and resumed.replayed == 10
    assert resumed.suspended_for == pytest.approx(2.0)
    assert worker.resumes == session.resumes == 1


def test_frames_that_did_arrive_are_not_delivered_twice():
    """The peer got them but the ack did not come back before the cut: they are replayed
    (the sender cannot know), and dropped by seq."""
    master, worker, wire = open_wire()
    send_updates(worker, 1.0, 3)
    for frame in worker.frames_to_send():  # delivered, but the master's ack is lost
        wire.master_events += master.handle(master.current.receive_frame(frame, 1.0), 1.0)
    wire.cut(1.5)
    wire2 = Wire(master, worker, 2.0)
    wire2.pump(2.0)
    assert received_lines(wire.master_events + wire2.master_events) == [
        "line 0\n", "line 1\n", "line 2\n"]


def test_binary_side_frames_are_replayed_with_their_message():
    master, worker, wire = open_wire()
    session = master.current
    request_id = worker.send_request("write_file", {"command_id": "c1"}, 1.0,
                                     blob=b"\x00\x01" * 1000)
    wire.cut(1.0)
    wire2 = Wire(master, worker, 2.0)
    wire2.pump(2.0)
    [request] = [e for e in wire2.master_events if isinstance(e, RequestReceived)]
    assert request.request_id == request_id and request.message["blob"] == b"\x00\x01" * 1000
    assert session.is_open


def test_a_message_whose_side_frame_was_lost_is_replayed():
    """The link dies after a message that announces a side frame but before the side
    frame (a cut in the middle of a file block): the message does not count as received,
    so the resume sends it again, and it is delivered once, with its bytes.  (Found by
    the fault tests: an upload over amqp stalled for good after such a cut.)"""
    master, worker, wire = open_wire()
    session = master.current
    block = b"\x00\x01" * 1000
    request_id = worker.send_request("write_file", {"command_id": "c1"}, 1.0, blob=block)
    message, side_frame = worker.frames_to_send()
    assert master.current.receive_frame(message, 1.0) == []  # waits for its side frame
    assert session.recv_seq == 0  # not received yet: a resume must send it again
    wire.cut(1.5)
    wire2 = Wire(master, worker, 2.0)
    wire2.pump(2.0)
    [request] = [e for e in wire2.master_events if isinstance(e, RequestReceived)]
    assert request.request_id == request_id and request.message["blob"] == block
    # the same for an answer with a side frame (as of a download), master to worker
    session.send_response(request_id, None, 3.0, blob=block)
    message, side_frame = session.frames_to_send()
    assert worker.receive_frame(message, 3.0) == []
    wire2.cut(3.5)
    wire3 = Wire(master, worker, 4.0)
    wire3.pump(4.0)
    assert [e for e in wire3.worker_events if isinstance(e, ResponseReceived)] == [
        ResponseReceived(request_id, None, block)]
    assert worker.is_open and session.is_open


def test_acks_free_the_replay_buffer():
    master, worker, wire = open_wire()
    send_updates(worker, 1.0, 3)
    assert worker.unacked_sent == 3 and worker.replay_bytes > 0
    wire.pump(1.0)
    master.current.tick(2.0)  # the ack delay has passed: a standalone ack
    wire.pump(2.0)
    assert worker.unacked_sent == 0 and worker.replay_bytes == 0


def test_a_full_replay_buffer_is_reported_and_frees_with_acks():
    limits = LIMITS.replace(max_replay_bytes=8192, max_handshake_frame_size=8192)
    master = Master(limits)
    worker = make_worker(limits)
    wire = Wire(master, worker, 0.0, first=True)
    wire.pump(0.0)
    big = {"command_id": "c1", "updates": [["stdout", "x" * 3000 + "\n"]]}
    worker.send_notification("update", big, 1.0)
    assert not worker.buffer_full
    worker.send_notification("update", big, 1.0)
    worker.send_notification("update", big, 1.0)
    assert worker.buffer_full
    wire.pump(1.0)
    master.current.tick(2.0)  # the ack delay has passed: a standalone ack
    wire.pump(2.0)
    assert not worker.buffer_full


# ----------------------------------------------------------------------------- refusals
def test_an_unknown_session_is_refused_with_session_expired():
    master, worker, wire = open_wire()
    wire.cut(1.0)
    master.sessions.clear()  # as after a master restart
    wire2 = Wire(master, worker, 2.0)
    wire2.pump(2.0)
    assert worker.is_closed and worker.close_code == "session_expired"
    assert wire2.worker_events[-1] == Closed("session_expired", worker.close_reason,
                                             by_peer=True)


def test_a_wrong_resume_proof_fails_like_a_wrong_password():
    master, worker, wire = open_wire()
    wire.cut(1.0)
    worker.resume_key = b"\x00" * 32  # not the key of that session
    wire2 = Wire(master, worker, 2.0)
    wire2.pump(2.0)
    assert worker.is_closed and worker.close_code == "authentication_failed"
    assert master.sessions[worker.session_id].is_suspended  # the real session waits on


def test_another_workers_session_cannot_be_resumed():
    master, worker, wire = open_wire()
    wire.cut(1.0)
    intruder = make_worker()
    intruder.worker_name = "w2"
    intruder.stream, intruder.session_id = worker.stream, worker.session_id
    intruder.resume_key, intruder._state = worker.resume_key, worker._state
    intruder.link = None
    wire2 = Wire(master, intruder, 2.0)
    master.current = master.connect(2.0)
    wire2.pump(2.0)
    assert intruder.is_closed and intruder.close_code in ("session_expired",
                                                           "authentication_failed")


def test_the_resume_proof_is_bound_to_the_new_handshake():
    """Replaying a recorded resume (hello + authenticate) into a new connection fails:
    the master's nonce is new, so the proof no longer matches."""
    master, worker, wire = open_wire()
    wire.cut(1.0)
    master.connect(2.0)
    worker.new_link(2.0)
    worker.start(2.0)
    [hello] = worker.frames_to_send()
    master.handle(master.current.receive_frame(hello, 2.0), 2.0)
    worker.receive_frame(master.current.frames_to_send()[0], 2.0)
    [authenticate] = worker.frames_to_send()
    replay = master.connect(3.0)
    events = master.handle(replay.receive_frame(hello, 3.0), 3.0)
    replay.frames_to_send()
    events = replay.receive_frame(authenticate, 3.0)
    assert replay.is_closed and replay.close_code == "authentication_failed"
    assert [type(e).__name__ for e in events][-1] == "Closed"


# ----------------------------------------------------------------------------- time
def test_the_window_expires_without_a_resume():
    master, worker, wire = open_wire()
    session = master.current
    wire.cut(10.0)
    assert worker.tick(10.0 + LIMITS.resume_window - 0.1) == []
    events = worker.tick(10.0 + LIMITS.resume_window)
    assert events == [Closed("resume_window_expired", events[0].reason, by_peer=False)]
    assert worker.frames_to_send() == []  # no connection: nothing to say
    expiry = 10.0 + LIMITS.resume_window + LIMITS.heartbeat_timeout
    assert session.tick(expiry - 0.1) == []
    assert [e.code for e in session.tick(expiry)] == ["resume_window_expired"]


def test_a_heartbeat_timeout_suspends_without_a_close_frame():
    master, worker, wire = open_wire()
    events = worker.tick(LIMITS.heartbeat_timeout)
    assert [type(e) for e in events] == [LinkLost]
    assert events[0].code == "heartbeat_timeout"
    assert worker.is_suspended and worker.frames_to_send() == []


def test_a_resume_link_that_times_out_keeps_the_session_suspended():
    master, worker, wire = open_wire()
    wire.cut(1.0)
    worker.new_link(2.0)
    worker.start(2.0)
    worker.frames_to_send()  # the hello goes nowhere
    worker.tick(2.0 + LIMITS.handshake_timeout)
    assert worker.is_suspended and worker.link.is_closed
    wire2 = Wire(master, worker, 3.0 + LIMITS.handshake_timeout)
    wire2.pump(3.0 + LIMITS.handshake_timeout)
    assert worker.is_open


def test_a_new_connection_replaces_a_half_open_one():
    """The master still believes the old connection alive; the worker resumes over a new
    one: the master drops the old link and goes on over the new one."""
    master, worker, wire = open_wire()
    session = master.current
    old_link = session.link
    worker.link_lost(worker.link, "reset", 1.0)  # only the worker noticed
    wire2 = Wire(master, worker, 1.5)
    wire2.pump(1.5)
    assert session.is_open and session.link is not old_link
    assert old_link.ending == "abort"


# ----------------------------------------------------------------------------- off
def test_with_resume_off_a_lost_link_ends_the_session():
    master = Master(LIMITS.replace(resume_window=0))
    worker = make_worker()
    wire = Wire(master, worker, 0.0, first=True)
    wire.pump(0.0)
    assert "resume" not in worker.features and not worker.resumable
    wire.cut(1.0)
    assert worker.is_closed and master.current.is_closed
    assert worker.close_code == "connection_lost"


# ----------------------------------------------------------------------------- property
@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["worker", "master", "pump", "cut", "half"]),
                          st.integers(1, 4)), min_size=1, max_size=40))
def test_any_schedule_of_cuts_delivers_every_message_once_in_order(schedule):
    """Whatever the cuts, both sides see exactly the peer's messages, once, in order."""
    master, worker, wire = open_wire()
    session = master.current
    now = 1.0
    sent_by_worker: list[str] = []
    sent_by_master: list[str] = []
    worker_events: list[Event] = []
    master_events: list[Event] = []
    for action, n in schedule:
        now += 0.5
        if action == "worker":
            for _ in range(n):
                text = f"w{len(sent_by_worker)}\n"
                sent_by_worker.append(text)
                worker.send_notification("update", {"command_id": 1,
                                                    "updates": [["stdout", text]]}, now)
        elif action == "master":
            for _ in range(n):
                text = f"m{len(sent_by_master)}"
                sent_by_master.append(text)
                session.send_request("print", {"message": text}, now)
        elif action == "pump" and wire is not None:
            wire.pump(now, rounds=n)
        elif action in ("cut", "half") and wire is not None:
            if action == "cut":
                wire.cut(now)
            else:  # only the worker notices; the master's link is half-open
                worker.link_lost(worker.link, "reset", now)
            worker_events += wire.worker_events
            master_events += wire.master_events
            wire = None
        if wire is None and action == "pump":
            wire = Wire(master, worker, now)
        if wire is not None:
            assert not worker.is_closed and not session.is_closed
    if wire is None:
        wire = Wire(master, worker, now)
    wire.pump(now, rounds=50)
    worker_events += wire.worker_events
    master_events += wire.master_events
    assert received_lines(master_events) == sent_by_worker
    assert [e.message["message"] for e in worker_events
            if isinstance(e, RequestReceived)] == sent_by_master
    assert worker.state is State.OPEN and session.state is State.OPEN


def test_welcome_of_a_resume_repeats_the_session_and_names_the_last_seq():
    master, worker, wire = open_wire()
    session = master.current
    send_updates(worker, 1.0, 4)
    wire.pump(1.0)
    wire.cut(2.0)
    master.connect(3.0)
    worker.new_link(3.0)
    worker.start(3.0)
    [hello] = decoded(worker.frames_to_send())
    assert hello["resume"] == {"session": session.session_id, "last_seq": 0}
    master.handle(master.current.receive_frame(codec.encode(hello), 3.0), 3.0)
    worker.receive_frame(master.current.frames_to_send()[0], 3.0)
    [authenticate] = decoded(worker.frames_to_send())
    assert "resume_proof" in authenticate
    master.handle(master.current.receive_frame(codec.encode(authenticate), 3.0), 3.0)
    [welcome] = decoded(master.current.frames_to_send())
    assert welcome["session"] == session.session_id
    assert welcome["resumed"] == {"last_seq": 4}
    assert welcome["resume_window"] == LIMITS.resume_window
