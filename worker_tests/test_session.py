"""The session state machine: handshake, authentication, sequencing, heartbeats, close.

Everything runs in memory with a fake clock: frames are moved between a master and a
worker session by hand, so every interleaving is under the test's control.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.errors import FrameTooLarge
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import AuthenticationFailed
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import ErrorReceived
from buildbot_worker_msgproto.protocol.events import Event
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.events import NotificationReceived
from buildbot_worker_msgproto.protocol.events import RequestReceived
from buildbot_worker_msgproto.protocol.events import ResponseReceived
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MIN_FRAME_SIZE
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.protocol.session import State
from worker_tests.strategies import JSON_VALUES
from worker_tests.strategies import bodies_of
from worker_tests.strategies import examples
from worker_tests.strategies import frame
from worker_tests.strategies import mutated_frames
from worker_tests.strategies import valid_messages

PASSWORD = "s3cret \u00e9"
ITERATIONS = 16  # keep PBKDF2 cheap in tests; the default is 4096
LIMITS = Limits(auth_iterations=ITERATIONS)
CREDENTIALS = auth.ScramCredentials.from_password(PASSWORD, ITERATIONS)
WRONG_CREDENTIALS = auth.ScramCredentials.from_password("not the password", ITERATIONS)


def decoded(frames: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in frames]


def types(frames: list[bytes]) -> list[str]:
    return [m["type"] for m in decoded(frames)]


def make_worker(limits: Limits = LIMITS, password: str = PASSWORD, name: str = "w1",
                **kwargs: Any) -> Session:
    return Session(Role.WORKER, limits, worker_name=name, password=password, **kwargs)


def make_master(limits: Limits = LIMITS, **kwargs: Any) -> Session:
    return Session(Role.MASTER, limits, **kwargs)


def deliver(src: Session, dst: Session, now: float = 0.0) -> list[Event]:
    """Move every queued frame of ``src`` into ``dst``; return dst's events."""
    events: list[Event] = []
    for f in src.frames_to_send():
        events.extend(dst.receive_frame(f, now))
    return events


def handshake(master: Session | None = None, worker: Session | None = None,
              credentials: auth.ScramCredentials | None = CREDENTIALS, now: float = 0.0
              ) -> tuple[Session, Session, list[Event], list[Event]]:
    """Run a complete handshake; return (master, worker, master events, worker events)."""
    master = master or make_master()
    worker = worker or make_worker()
    worker.start(now)
    master_events = deliver(worker, master, now)
    if master.state is State.AWAIT_CREDENTIALS:
        master_events += master.answer_hello(credentials, now)
    worker_events = deliver(master, worker, now)
    master_events += deliver(worker, master, now)
    worker_events += deliver(master, worker, now)
    return master, worker, master_events, worker_events


def awaiting_welcome() -> tuple[Session, Session]:
    """(worker, master) one step before the end of the handshake: the master's
    ``welcome`` is queued, not delivered."""
    worker, master = make_worker(), make_master()
    worker.start(0)
    deliver(worker, master)
    master.answer_hello(CREDENTIALS, 0)
    deliver(master, worker)
    deliver(worker, master)
    return worker, master


def open_pair(**kwargs: Any) -> tuple[Session, Session]:
    master, worker, _, _ = handshake(**kwargs)
    assert master.is_open and worker.is_open
    return master, worker


def peer_frame(session: Session, message: dict[str, Any]) -> bytes:
    """A frame as the peer would send it next: correct seq and ack filled in."""
    envelope = {"seq": session.recv_seq + 1, "ack": session.send_seq}
    return codec.encode({**envelope, **message})


def assert_failed(session: Session, events: list[Event], code: str) -> dict[str, Any]:
    """The session closed itself with ``code`` and queued exactly one close frame."""
    assert session.state is State.CLOSED
    assert session.close_code == code
    assert events and events[-1] == Closed(code, events[-1].reason, by_peer=False)
    frames = decoded(session.frames_to_send())
    assert [m["type"] for m in frames] == ["close"]
    assert frames[0]["code"] == code
    assert session.frames_to_send() == []
    return frames[0]


# ============================================================================= handshake
def test_full_handshake():
    master = make_master()
    worker = make_worker(software={"buildbot-worker": "4.3.0"})
    assert worker.state is State.IDLE and master.state is State.AWAIT_HELLO
    assert worker.next_deadline() == LIMITS.handshake_timeout

    worker.start(1.0)
    assert worker.state is State.AWAIT_CHALLENGE
    [hello] = decoded(worker.frames_to_send())
    assert hello["type"] == "hello" and hello["seq"] == 1 and hello["ack"] == 0
    assert hello["versions"] == [1] and hello["worker"] == "w1"
    assert hello["software"] == {"buildbot-worker": "4.3.0"}
    assert hello["max_frame_size"] == LIMITS.max_frame_size
    assert PASSWORD not in json.dumps(hello)

    events = master.receive_frame(codec.encode(hello), 1.0)
    assert events == [HelloReceived("w1", (1,), {"buildbot-worker": "4.3.0"})]
    assert master.state is State.AWAIT_CREDENTIALS and master.frames_to_send() == []

    assert master.answer_hello(CREDENTIALS, 1.0) == []
    assert master.state is State.AWAIT_AUTHENTICATE
    [challenge] = decoded(master.frames_to_send())
    assert challenge["type"] == "challenge" and challenge["seq"] == 1 and challenge["ack"] == 1
    assert challenge["version"] == 1 and challenge["iterations"] == ITERATIONS
    assert challenge["salt"] == CREDENTIALS.salt_b64
    assert challenge["nonce"].startswith(hello["nonce"])
    assert len(challenge["nonce"]) == len(hello["nonce"]) + 32

    assert worker.receive_frame(codec.encode(challenge), 1.0) == []
    assert worker.state is State.AWAIT_WELCOME
    [authenticate] = decoded(worker.frames_to_send())
    assert authenticate["type"] == "authenticate" and authenticate["seq"] == 2
    # The proof is exactly RFC 5802's ClientProof over the documented transcript.
    transcript = auth.auth_message(1, "w1", hello["nonce"], challenge["nonce"],
                                   challenge["salt"], ITERATIONS)
    proof, server_signature = auth.client_proof(PASSWORD, CREDENTIALS.salt, ITERATIONS,
                                                transcript)
    assert authenticate["proof"] == codec.b64encode(proof)

    events = master.receive_frame(codec.encode(authenticate), 2.0)
    assert master.state is State.OPEN
    [welcome] = decoded(master.frames_to_send())
    assert welcome["type"] == "welcome" and welcome["seq"] == 2 and welcome["ack"] == 2
    assert welcome["signature"] == codec.b64encode(server_signature)
    assert welcome["heartbeat_interval"] == LIMITS.heartbeat_interval
    assert welcome["heartbeat_timeout"] == LIMITS.heartbeat_timeout
    assert welcome["max_frame_size"] == LIMITS.max_frame_size
    assert events == [Authenticated("w1", 1, welcome["session"])]

    events = worker.receive_frame(codec.encode(welcome), 2.0)
    assert events == [Authenticated("w1", 1, welcome["session"])]
    assert worker.is_open and worker.session_id == master.session_id
    assert worker.version == master.version == 1
    assert worker.resumable and worker.password == PASSWORD  # kept for resumed logins
    assert welcome["features"] == ["blob", "pipelined_close", "pushed_download", "resume"]
    assert welcome["resume_window"] == LIMITS.resume_window
    assert worker.max_incoming_frame_size == LIMITS.max_frame_size
    assert worker.frames_to_send() == []


def test_without_resume_the_worker_forgets_its_password():
    master, worker = open_pair(worker=make_worker(LIMITS.replace(resume_window=0)))
    assert not worker.resumable and not master.resumable and worker.password is None
    assert "resume" not in worker.features


def test_handshake_with_default_limits():
    credentials = auth.ScramCredentials.from_password("pw", DEFAULT_LIMITS.auth_iterations)
    master, worker = open_pair(master=make_master(DEFAULT_LIMITS),
                               worker=make_worker(DEFAULT_LIMITS, password="pw"),
                               credentials=credentials)
    assert master.version == worker.version == 1


def test_version_negotiation_picks_highest_common():
    master, worker = open_pair(master=make_master(versions=(1, 2, 3)),
                               worker=make_worker(versions=(1, 2, 5)))
    assert master.version == worker.version == 2


def test_no_common_version():
    master = make_master(versions=(1,))
    worker = make_worker(versions=(7, 8))
    worker.start(0)
    assert deliver(worker, master) == [HelloReceived("w1", (7, 8), {})]
    events = master.answer_hello(CREDENTIALS, 0)
    assert_failed(master, events, "unsupported_version")


def test_no_common_version_reaches_worker():
    master = make_master(versions=(1,))
    worker = make_worker(versions=(7,))
    worker.start(0)
    deliver(worker, master)
    master.answer_hello(CREDENTIALS, 0)
    events = deliver(master, worker)
    assert events == [Closed("unsupported_version", events[0].reason, by_peer=True)]
    assert worker.is_closed and worker.frames_to_send() == []


def test_worker_rejects_a_version_it_did_not_offer():
    worker = make_worker(versions=(1,))
    worker.start(0)
    hello = decoded(worker.frames_to_send())[0]
    challenge = {"type": "challenge", "version": 2, "salt": CREDENTIALS.salt_b64,
                 "iterations": ITERATIONS, "nonce": hello["nonce"] + "x" * 32}
    events = worker.receive_frame(peer_frame(worker, challenge), 0)
    assert_failed(worker, events, "unsupported_version")


def test_negotiated_frame_limit_is_the_smaller():
    master = make_master(LIMITS.replace(max_frame_size=1 << 20))
    worker = make_worker(LIMITS.replace(max_frame_size=1 << 18))
    master, worker = open_pair(master=master, worker=worker)
    assert master.max_incoming_frame_size == worker.max_incoming_frame_size == 1 << 18
    assert master.max_outgoing_frame_size == 1 << 18


def test_welcome_heartbeat_values_are_adopted_by_the_worker():
    master = make_master(LIMITS.replace(heartbeat_interval=3, heartbeat_timeout=7))
    master, worker = open_pair(master=master)
    assert (worker.heartbeat_interval, worker.heartbeat_timeout) == (3, 7)


# ============================================================================= authentication
def test_wrong_password():
    master, worker, master_events, worker_events = handshake(
        worker=make_worker(password="wrong"))
    assert master_events[0] == HelloReceived("w1", (1,), {})
    assert isinstance(master_events[1], AuthenticationFailed)
    assert master_events[1].worker == "w1"
    assert master_events[2:] == [Closed("authentication_failed", master_events[2].reason,
                                        by_peer=False)]
    assert master.is_closed and master.close_code == "authentication_failed"
    # The close frame reached the worker, which learns why.
    assert worker_events == [Closed("authentication_failed", worker_events[0].reason,
                                    by_peer=True)]
    assert worker.is_closed and worker.session_id is None


def test_wrong_password_close_frame():
    master = make_master()
    worker = make_worker(password="wrong")
    worker.start(0)
    deliver(worker, master)
    master.answer_hello(CREDENTIALS, 0)
    deliver(master, worker)
    events = deliver(worker, master)
    assert [type(e) for e in events] == [AuthenticationFailed, Closed]
    close = assert_failed(master, events, "authentication_failed")
    assert "w1" in close["reason"] and PASSWORD not in close["reason"]


def test_unknown_worker_fails_like_a_wrong_password():
    master, worker, master_events, worker_events = handshake(credentials=None)
    assert [type(e) for e in master_events] == [HelloReceived, AuthenticationFailed, Closed]
    assert master_events[-1].code == "authentication_failed"
    assert worker_events[-1] == Closed("authentication_failed", worker_events[-1].reason,
                                       by_peer=True)
    # The unknown worker was challenged like a known one (no name probing).
    assert master.close_code == "authentication_failed"


def _challenge_for(name: str, credentials: auth.ScramCredentials | None) -> dict[str, Any]:
    master = make_master()
    worker = make_worker(name=name)
    worker.start(0)
    deliver(worker, master)
    master.answer_hello(credentials, 0)
    [challenge] = decoded(master.frames_to_send())
    assert challenge["type"] == "challenge"
    return challenge


def test_unknown_worker_names_cannot_be_probed():
    """A decoy challenge looks like a registered worker's: same salt on every attempt."""
    known = [_challenge_for("w1", CREDENTIALS) for _ in range(2)]
    unknown = [_challenge_for("nobody", None) for _ in range(2)]
    other = _challenge_for("somebody else", None)
    for challenge in known + unknown + [other]:
        assert challenge["iterations"] == ITERATIONS
        assert len(codec.b64decode(challenge["salt"])) == auth.SALT_BYTES
    assert known[0]["salt"] == known[1]["salt"]  # the master caches credentials ...
    assert unknown[0]["salt"] == unknown[1]["salt"]  # ... so a decoy's salt is stable too
    assert other["salt"] != unknown[0]["salt"]
    assert unknown[0]["nonce"] != unknown[1]["nonce"]


def test_decoy_credentials_never_verify():
    decoy = auth.decoy_credentials("w\ud800", 16)  # even a lone surrogate is fine
    assert decoy.salt == auth.decoy_credentials("w\ud800", 16).salt
    assert decoy.salt != auth.decoy_credentials("w", 16).salt
    proof, _ = auth.client_proof("", decoy.salt, 16, b"m")
    assert not decoy.verify_proof(b"m", proof)


def test_impostor_master_is_detected():
    """A master that does not know the password cannot fake the welcome signature."""

    class Gullible(auth.ScramCredentials):
        def verify_proof(self, message: bytes, proof: bytes) -> bool:
            return True  # the impostor accepts any proof ...

    impostor = Gullible(WRONG_CREDENTIALS.salt, ITERATIONS, WRONG_CREDENTIALS.stored_key,
                        WRONG_CREDENTIALS.server_key)
    master, worker, master_events, worker_events = handshake(credentials=impostor)
    assert master.is_open  # ... and believes the session is open,
    assert [type(e) for e in worker_events] == [Closed]  # but the worker never opens it.
    assert worker_events[0].code == "master_not_authenticated"
    assert worker_events[0].by_peer is False
    assert worker.is_closed and worker.close_code == "master_not_authenticated"
    [close] = decoded(worker.frames_to_send())
    assert close["type"] == "close" and close["code"] == "master_not_authenticated"


def challenge_for(worker: Session) -> dict[str, Any]:
    """Start ``worker``; a valid challenge (as a message) for its hello."""
    worker.start(0)
    hello = decoded(worker.frames_to_send())[0]
    return {"type": "challenge", "version": 1, "salt": CREDENTIALS.salt_b64,
            "iterations": ITERATIONS, "nonce": hello["nonce"] + "m" * 32}


def challenged_worker() -> Session:
    """A password worker that answered a valid challenge and now awaits ``welcome``."""
    worker = make_worker()
    worker.receive_frame(peer_frame(worker, challenge_for(worker)), 0)
    worker.frames_to_send()
    return worker


def test_forged_welcome_signature_is_detected():
    worker = challenged_worker()
    welcome = {"type": "welcome", "signature": codec.b64encode(b"\0" * 32), "session": "s",
               "heartbeat_interval": 1, "heartbeat_timeout": 2, "max_frame_size": 1 << 20}
    events = worker.receive_frame(peer_frame(worker, welcome), 0)
    assert_failed(worker, events, "master_not_authenticated")


def test_replayed_authenticate_fails_in_a_new_session():
    master = make_master()
    worker = make_worker()
    worker.start(0)
    [hello] = worker.frames_to_send()
    master.receive_frame(hello, 0)
    master.answer_hello(CREDENTIALS, 0)
    worker.receive_frame(master.frames_to_send()[0], 0)
    [authenticate] = worker.frames_to_send()
    master.receive_frame(authenticate, 0)
    assert master.is_open  # the recorded exchange was genuine

    # An eavesdropper replays hello and authenticate into a new master session.
    replay = make_master()
    assert replay.receive_frame(hello, 5) == [HelloReceived("w1", (1,), {})]
    replay.answer_hello(CREDENTIALS, 5)
    [challenge] = decoded(replay.frames_to_send())
    events = replay.receive_frame(authenticate, 5)
    assert_failed(replay, events, "authentication_failed")
    # ... because the master's half of the nonce is fresh every time.
    original = decoded([hello])[0]["nonce"]
    assert challenge["nonce"].startswith(original)
    assert challenge["nonce"] != master.link._nonce


@pytest.mark.parametrize("challenge_patch, code", [
    ({"iterations": DEFAULT_LIMITS.max_auth_iterations + 1}, "bad_message"),
    ({"nonce": "someone else's nonce" * 4}, "bad_message"),
    ({"nonce": None}, "bad_message"),  # replaced below by the client nonce alone
    ({"salt": "not base64!"}, "bad_message"),
    ({"salt": 7}, "bad_message"),
])
def test_worker_checks_the_challenge(challenge_patch, code):
    worker = make_worker()
    worker.start(0)
    hello = decoded(worker.frames_to_send())[0]
    challenge = {"type": "challenge", "version": 1, "salt": CREDENTIALS.salt_b64,
                 "iterations": ITERATIONS, "nonce": hello["nonce"] + "m" * 32}
    challenge.update(challenge_patch)
    if challenge["nonce"] is None:
        challenge["nonce"] = hello["nonce"]  # does not extend ours with a nonce of its own
    events = worker.receive_frame(peer_frame(worker, challenge), 0)
    assert_failed(worker, events, code)


@pytest.mark.parametrize("hello_patch", [
    {"versions": []},
    {"versions": [True]},
    {"versions": ["1"]},
    {"nonce": "short"},
    {"nonce": "n" * 257},
    {"worker": ""},
    {"worker": "w" * 513},
    {"max_frame_size": MIN_FRAME_SIZE - 1},
    {"max_frame_size": 1},
])
def test_master_checks_the_hello(hello_patch):
    master = make_master()
    hello = {"type": "hello", "versions": [1], "worker": "w1", "nonce": "n" * 32}
    hello.update(hello_patch)
    events = master.receive_frame(peer_frame(master, hello), 0)
    assert_failed(master, events, "bad_message")


def test_worker_checks_the_welcome_frame_limit():
    worker, master = awaiting_welcome()
    [welcome] = decoded(master.frames_to_send())
    welcome["max_frame_size"] = MIN_FRAME_SIZE - 1
    events = worker.receive_frame(codec.encode(welcome), 0)
    assert_failed(worker, events, "bad_message")


@pytest.mark.parametrize("interval, timeout", [(0, 5), (5, 5), (5, 1), (-1, 5), (10**400, 10**401)],
                         ids=["zero", "equal", "inverted", "negative", "overflow"])
def test_unusable_welcome_heartbeats_keep_local_values(interval, timeout):
    worker, master = awaiting_welcome()
    [welcome] = decoded(master.frames_to_send())
    welcome.update(heartbeat_interval=interval, heartbeat_timeout=timeout)
    assert [type(e) for e in worker.receive_frame(codec.encode(welcome), 0)] == [Authenticated]
    assert worker.heartbeat_interval == LIMITS.heartbeat_interval
    assert worker.heartbeat_timeout == LIMITS.heartbeat_timeout
    assert worker.next_deadline() == LIMITS.heartbeat_interval


# ============================================================================= before auth
@pytest.mark.parametrize("message, code", [
    ({"type": "update", "command_id": 1, "updates": []}, "unexpected_message"),
    ({"type": "ping"}, "unexpected_message"),
    ({"type": "ack"}, "unexpected_message"),
    ({"type": "keepalive", "id": 1}, "unexpected_message"),
    ({"type": "response", "reply_to": 1}, "unexpected_message"),
    ({"type": "authenticate", "proof": "AAAA"}, "unexpected_message"),
    ({"type": "challenge", "version": 1, "salt": "", "iterations": 1, "nonce": "x" * 64},
     "unexpected_message"),  # a worker may never send it
    ({"type": "teleport"}, "unknown_type"),
    ({"type": "teleport", "id": 3}, "unknown_type"),
])
def test_master_refuses_messages_before_hello(message, code):
    master = make_master()
    events = master.receive_frame(peer_frame(master, message), 0)
    assert_failed(master, events, code)


@pytest.mark.parametrize("message", [
    {"type": "print", "id": 1, "message": "hi"},
    {"type": "welcome", "signature": "", "session": "s", "heartbeat_interval": 1,
     "heartbeat_timeout": 2, "max_frame_size": 1 << 20},
    {"type": "ping"},
])
def test_worker_refuses_messages_before_the_challenge(message):
    worker = make_worker()
    worker.start(0)
    worker.frames_to_send()
    events = worker.receive_frame(peer_frame(worker, message), 0)
    assert_failed(worker, events, "unexpected_message")


def test_idle_worker_refuses_everything():
    worker = make_worker()
    events = worker.receive_frame(peer_frame(worker, {"type": "ping"}), 0)
    assert_failed(worker, events, "unexpected_message")


def test_master_refuses_messages_while_waiting_for_credentials():
    master = make_master()
    worker = make_worker()
    worker.start(0)
    deliver(worker, master)
    events = master.receive_frame(peer_frame(master, {"type": "authenticate", "proof": ""}), 0)
    assert_failed(master, events, "unexpected_message")
    assert master.answer_hello(CREDENTIALS, 0) == []  # too late: nothing happens


def test_peer_close_during_handshake():
    master = make_master()
    close = {"type": "close", "code": "shutdown", "reason": "bye"}
    assert master.receive_frame(peer_frame(master, close), 0) == [
        Closed("shutdown", "bye", by_peer=True)]
    assert master.is_closed and master.frames_to_send() == []


def test_oversized_handshake_frame():
    master = make_master()
    hello = {"type": "hello", "versions": [1], "worker": "w1", "nonce": "n" * 32,
             "software": {"x": "y" * LIMITS.max_handshake_frame_size}}
    events = master.receive_frame(peer_frame(master, hello), 0)
    assert_failed(master, events, "frame_too_large")


def test_handshake_messages_after_the_handshake():
    master, worker = open_pair()
    hello = {"type": "hello", "versions": [1], "worker": "w1", "nonce": "n" * 32}
    events = master.receive_frame(peer_frame(master, hello), 0)
    assert_failed(master, events, "unexpected_message")


def test_messages_from_the_wrong_side_when_open():
    master, worker = open_pair()
    events = worker.receive_frame(
        peer_frame(worker, {"type": "update", "command_id": 1, "updates": []}), 0)
    assert_failed(worker, events, "unexpected_message")


# ============================================================================= open session
def test_request_response_correlation():
    master, worker = open_pair()
    assert master.send_request("print", {"message": "hello"}, 1) == 1
    assert master.send_request("get_worker_info", {}, 1) == 2
    assert master.pending_requests == 2
    events = deliver(master, worker, 1)
    assert [(e.request_id, e.type) for e in events] == [(1, "print"), (2, "get_worker_info")]
    assert events[0].message["message"] == "hello"
    worker.send_response(2, {"host": "h"}, 2)
    worker.send_error(1, "failed", "no printer", 2)
    events = deliver(worker, master, 2)
    assert events == [ResponseReceived(2, {"host": "h"}), ErrorReceived(1, "failed", "no printer")]
    assert master.pending_requests == 0


def test_notifications_and_worker_requests():
    master, worker = open_pair()
    worker.send_notification("update", {"command_id": "c1", "updates": [["stdout", "x"]]}, 0)
    worker.send_notification("complete", {"command_id": "c1", "failure": None}, 0)
    request_id = worker.send_request("write_file", {"command_id": "c1",
                                                    "data": codec.b64encode(b"\0\1")}, 0)
    events = deliver(worker, master)
    assert [type(e) for e in events] == [NotificationReceived, NotificationReceived,
                                         RequestReceived]
    assert events[0].message["updates"] == [["stdout", "x"]]
    assert codec.b64decode(events[2].message["data"]) == b"\0\1"
    master.send_response(request_id, None, 0)
    assert deliver(master, worker) == [ResponseReceived(request_id, None)]


def test_keepalive_both_ways():
    master, worker = open_pair()
    master.send_request("keepalive", {}, 0)
    worker.send_request("keepalive", {}, 0)
    [m_req] = deliver(master, worker)
    [w_req] = deliver(worker, master)
    worker.send_response(m_req.request_id, None, 0)
    master.send_response(w_req.request_id, None, 0)
    assert deliver(worker, master) == [ResponseReceived(1, None)]
    assert deliver(master, worker) == [ResponseReceived(1, None)]


def test_unknown_type_after_auth_gets_an_error_reply():
    master, worker = open_pair()
    events = master.receive_frame(peer_frame(master, {"type": "teleport", "id": 7, "x": 1}), 0)
    # the master itself received the unknown type (and told the worker)
    assert events == [ErrorReceived(None, "unknown_type", events[0].message, by_peer=False)]
    assert master.is_open
    [error] = decoded(master.frames_to_send())
    assert error["type"] == "error" and error["code"] == "unknown_type"
    assert error["reply_to"] == 7 and "teleport" in error["message"]
    # Without an id the error answers nothing.
    master.receive_frame(peer_frame(master, {"type": "teleport"}), 0)
    [error] = decoded(master.frames_to_send())
    assert "reply_to" not in error
    # The sequence numbers of the unknown messages were accounted for.
    assert master.receive_frame(peer_frame(master, {"type": "ping"}), 0) == []
    assert master.is_open


def test_unknown_type_after_auth_still_checks_seq():
    master, worker = open_pair()
    bad = codec.encode({"type": "teleport", "seq": master.recv_seq + 2, "ack": 0})
    assert_failed(master, master.receive_frame(bad, 0), "bad_sequence")


def test_unknown_error_reaches_the_worker_peer_as_an_error_event():
    master, worker = open_pair()
    # As a newer worker would send it (its seq counts the frame).
    worker.stream.send_seq += 1
    teleport = {"type": "teleport", "seq": worker.send_seq, "ack": worker.recv_seq}
    master.receive_frame(codec.encode(teleport), 0)
    assert deliver(master, worker) == [ErrorReceived(None, "unknown_type",
                                                     "unknown message type 'teleport'")]
    assert worker.is_open


@pytest.mark.parametrize("gap", [2, 3, 100])
def test_out_of_order_seq(gap):
    master, worker = open_pair()
    seq = master.recv_seq + gap
    events = master.receive_frame(codec.encode({"type": "ping", "seq": seq, "ack": 0}), 0)
    assert_failed(master, events, "bad_sequence")


def test_duplicated_frame_is_bad_sequence_without_resume():
    no_resume = LIMITS.replace(resume_window=0)
    master, worker = open_pair(master=make_master(no_resume))
    worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    [f] = worker.frames_to_send()
    master.receive_frame(f, 0)
    assert_failed(master, master.receive_frame(f, 0), "bad_sequence")


def test_duplicated_frame_is_dropped_with_resume():
    """A resume may replay frames that did arrive: the receiver drops them by seq."""
    master, worker = open_pair()
    worker.send_notification("update", {"command_id": 1, "updates": [["stdout", "x"]]}, 0)
    [f] = worker.frames_to_send()
    assert len(master.receive_frame(f, 0)) == 1
    assert master.receive_frame(f, 0) == [] and master.is_open
    assert master.frames_to_send() == []


def test_ack_beyond_what_was_sent_is_bad_sequence():
    master, worker = open_pair()
    frame = codec.encode({"type": "ping", "seq": master.recv_seq + 1,
                          "ack": master.send_seq + 1})
    assert_failed(master, master.receive_frame(frame, 0), "bad_sequence")


def test_a_stale_ack_is_ignored():
    """Replayed frames carry the ack of when they were first sent: lower acks are no
    error, they just acknowledge nothing new."""
    master, worker = open_pair()
    master.send_request("print", {"message": "x"}, 0)
    deliver(master, worker)
    worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    deliver(worker, master)
    assert master.peer_ack == 1
    frame = codec.encode({"type": "ping", "seq": master.recv_seq + 1, "ack": 0})
    assert master.receive_frame(frame, 0) == [] and master.is_open
    assert master.peer_ack == 1


def test_acks_and_unacked_count():
    master, worker = open_pair()
    assert master.unacked_sent == 0  # with resume, the stream numbers from 1 after welcome
    master.send_request("print", {"message": "x"}, 0)
    assert master.unacked_sent == 1 and master.replay_bytes > 0
    deliver(master, worker)
    worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    deliver(worker, master)
    assert master.unacked_sent == 0 and master.peer_ack == 1 and master.replay_bytes == 0


def test_without_resume_the_stream_continues_the_handshake_numbers():
    no_resume = LIMITS.replace(resume_window=0)
    master, worker = open_pair(master=make_master(no_resume))
    assert master.send_seq == 2  # challenge and welcome, as before resume existed
    master.send_request("print", {"message": "x"}, 0)
    [request] = decoded(master.frames_to_send())
    assert request["seq"] == 3 and request["ack"] == 2
    assert master.replay_bytes == 0  # nothing is kept for a replay


@pytest.mark.parametrize("message, code", [
    ({"type": "response", "reply_to": 1, "result": None}, "bad_reply"),
    ({"type": "error", "reply_to": 9, "code": "failed", "message": "x"}, "bad_reply"),
])
def test_answers_to_unknown_requests(message, code):
    master, worker = open_pair()
    assert_failed(master, master.receive_frame(peer_frame(master, message), 0), code)


def test_a_request_is_answered_only_once():
    master, worker = open_pair()
    request_id = master.send_request("shutdown", {}, 0)
    deliver(master, worker)
    worker.send_response(request_id, None, 0)
    deliver(worker, master)
    again = {"type": "response", "reply_to": request_id, "result": None}
    assert_failed(master, master.receive_frame(peer_frame(master, again), 0), "bad_reply")


def test_duplicate_request_id_from_the_peer():
    master, worker = open_pair()
    request = {"type": "keepalive", "id": 5}
    assert [type(e) for e in master.receive_frame(peer_frame(master, request), 0)] == [
        RequestReceived]
    assert_failed(master, master.receive_frame(peer_frame(master, request), 0), "bad_message")


def test_a_request_id_may_be_reused_once_answered():
    master, worker = open_pair()
    request = {"type": "keepalive", "id": 5}
    master.receive_frame(peer_frame(master, request), 0)
    master.send_response(5, None, 0)
    assert len(master.receive_frame(peer_frame(master, request), 0)) == 1


def test_standalone_acks():
    limits = LIMITS.replace(ack_every=3)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    for _ in range(2):
        worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    deliver(worker, master)
    assert master.frames_to_send() == []
    worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    deliver(worker, master)
    [ack] = decoded(master.frames_to_send())
    assert ack == {"type": "ack", "seq": 1, "ack": 3}


def test_standalone_acks_are_not_acked():
    limits = LIMITS.replace(ack_every=1)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    worker.send_notification("update", {"command_id": 1, "updates": []}, 0)
    deliver(worker, master)
    [ack] = master.frames_to_send()
    assert types([ack]) == ["ack"]
    assert worker.receive_frame(ack, 0) == []
    assert worker.frames_to_send() == []  # no ack ping-pong: an ack is never acked ...
    master.send_request("print", {"message": "x"}, 0)
    deliver(master, worker)
    [ack] = worker.frames_to_send()
    assert types([ack]) == ["ack"]  # ... but every other frame is
    assert master.receive_frame(ack, 0) == []
    assert master.frames_to_send() == []
    assert master.is_open and worker.is_open


def test_peer_close_when_open():
    master, worker = open_pair()
    master.send_request("print", {"message": "x"}, 0)
    master.frames_to_send()  # lost in flight
    worker.close("shutdown", "worker going away", 0)
    assert worker.is_closed and worker.pending_requests == 0
    events = deliver(worker, master)
    assert events == [Closed("shutdown", "worker going away", by_peer=True)]
    assert master.is_closed and master.pending_requests == 0
    assert master.frames_to_send() == []
    # Anything that still arrives is ignored; nothing is emitted any more.
    assert deliver(master, worker) == []
    assert worker.receive_frame(b"garbage", 0) == []
    assert worker.tick(1e9) == [] and worker.next_deadline() is None
    assert worker.frames_to_send() == []


def test_peer_close_reason_is_bounded():
    master, worker = open_pair()
    close = {"type": "close", "code": "c" * 1000, "reason": "r" * 100000}
    [event] = master.receive_frame(peer_frame(master, close), 0)
    assert len(event.code) <= 64 and len(event.reason) <= 512


def test_fail_and_close_are_idempotent():
    master, worker = open_pair()
    events = master.fail(FrameTooLarge(10**9, 100), 0)
    assert_failed(master, events, "frame_too_large")
    assert master.fail(ProtocolError("again"), 0) == []
    master.close("normal", "again", 0)
    assert master.frames_to_send() == []
    assert master.close_code == "frame_too_large"


def test_long_reason_still_fits_the_smallest_frame_limit():
    limits = LIMITS.replace(max_frame_size=MIN_FRAME_SIZE, max_handshake_frame_size=MIN_FRAME_SIZE)
    master = make_master(limits)
    name = "\U0001f600" * 2000  # 4 bytes in the frame, 12 once \u-escaped
    message = {"type": name, "seq": 1, "ack": 0}
    events = master.receive_frame(frame(message), 0)  # raw UTF-8, not \u-escaped
    close = assert_failed(master, events, "unknown_type")
    assert len(close["reason"]) <= 512


# ============================================================================= local errors
def test_local_misuse_raises_local_protocol_error():
    worker = make_worker()
    with pytest.raises(LocalProtocolError):
        worker.send_request("print", {"message": "x"}, 0)  # not open (and worker)
    with pytest.raises(LocalProtocolError):
        Session(Role.WORKER, LIMITS, worker_name="w")  # no password
    worker.start(0)
    with pytest.raises(LocalProtocolError):
        worker.start(0)
    master = make_master()
    with pytest.raises(LocalProtocolError):
        master.answer_hello(CREDENTIALS, 0)  # no hello yet
    with pytest.raises(LocalProtocolError):
        master.send_response(1, None, 0)

    master, worker = open_pair()
    with pytest.raises(LocalProtocolError):
        master.send_request("update", {"command_id": 1, "updates": []}, 0)  # a notification
    with pytest.raises(LocalProtocolError):
        master.send_notification("update", {"command_id": 1, "updates": []}, 0)  # worker's
    with pytest.raises(LocalProtocolError):
        worker.send_request("print", {"message": "x"}, 0)  # master's
    with pytest.raises(LocalProtocolError):
        master.send_request("teleport", {}, 0)
    with pytest.raises(LocalProtocolError):
        master.send_request("print", {}, 0)  # missing field
    with pytest.raises(LocalProtocolError):
        master.send_request("print", {"message": 3}, 0)  # wrong type
    for reserved in ("id", "seq", "ack", "type", "reply_to"):
        with pytest.raises(LocalProtocolError):
            master.send_request("print", {"message": "x", reserved: 5}, 0)
    with pytest.raises(LocalProtocolError):
        master.send_response(1, None, 0)  # the worker asked nothing
    with pytest.raises(LocalProtocolError):
        master.send_error(1, "failed", "x", 0)
    with pytest.raises(LocalProtocolError):
        master.send_request("print", {"message": "x" * (1 << 24)}, 0)  # too large
    assert master.frames_to_send() == [] and master.pending_requests == 0

    master.close("normal", "bye", 0)
    with pytest.raises(LocalProtocolError):
        master.send_request("print", {"message": "x"}, 0)


def test_unsendable_message_does_not_burn_a_sequence_number():
    master, worker = open_pair()
    worker.send_request("keepalive", {}, 0)
    [request] = deliver(worker, master)
    with pytest.raises(LocalProtocolError):
        master.send_response(request.request_id, {"x": object()}, 0)
    with pytest.raises(LocalProtocolError):
        master.send_request("print", {"message": float("nan")}, 0)
    assert master.frames_to_send() == []
    # The request is still unanswered, and the next frames are in sequence.
    master.send_error(request.request_id, "failed", "unserializable result", 0)
    assert master.send_request("print", {"message": "x"}, 0) == 1
    events = deliver(master, worker)
    assert [type(e) for e in events] == [ErrorReceived, RequestReceived]
    assert worker.is_open


def test_answering_twice_is_a_local_error():
    master, worker = open_pair()
    request_id = master.send_request("get_worker_info", {}, 0)
    deliver(master, worker)
    worker.send_response(request_id, {}, 0)
    with pytest.raises(LocalProtocolError):
        worker.send_response(request_id, {}, 0)
    with pytest.raises(LocalProtocolError):
        worker.send_error(request_id, "failed", "x", 0)
    worker.send_error(None, "complaint", "answers no request", 0)  # always allowed


# ============================================================================= time
def test_heartbeat_ping_and_timeout():
    limits = LIMITS.replace(heartbeat_interval=10, heartbeat_timeout=30, resume_window=0)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    assert worker.next_deadline() == 10
    assert worker.tick(9.9) == [] and worker.frames_to_send() == []
    assert worker.tick(10) == []
    [ping] = decoded(worker.frames_to_send())
    assert ping["type"] == "ping" and ping["seq"] == 3
    assert worker.next_deadline() == 20
    assert master.receive_frame(codec.encode(ping), 10) == []
    assert master.frames_to_send() == []  # a ping needs no answer
    worker.tick(20)
    worker.frames_to_send()
    assert worker.next_deadline() == 30  # the master has been silent since 0
    events = worker.tick(30)
    assert_failed(worker, events, "heartbeat_timeout")
    assert worker.next_deadline() is None


def test_received_frames_keep_the_peer_alive():
    limits = LIMITS.replace(heartbeat_interval=10, heartbeat_timeout=30)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    for now in range(5, 200, 5):
        for session, peer in ((master, worker), (worker, master)):
            assert session.tick(now) == []
            deliver(session, peer, now)
    assert master.is_open and worker.is_open


def test_any_sent_frame_postpones_the_ping():
    limits = LIMITS.replace(heartbeat_interval=10, heartbeat_timeout=30)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    master.send_request("print", {"message": "x"}, 8)
    master.frames_to_send()
    assert master.next_deadline() == 18
    assert master.tick(17) == [] and master.frames_to_send() == []


@pytest.mark.parametrize("role", ["master", "worker", "master-awaiting-credentials"])
def test_handshake_timeout(role):
    limits = LIMITS.replace(handshake_timeout=5)
    if role == "worker":
        session = make_worker(limits)
        session.start(100)
        session.frames_to_send()
    else:
        session = make_master(limits, now=100)
        if role == "master-awaiting-credentials":
            worker = make_worker(limits)
            worker.start(101)
            deliver(worker, session, 101)
    assert session.next_deadline() == 105
    assert session.tick(104.9) == [] and session.frames_to_send() == []
    assert_failed(session, session.tick(105), "handshake_timeout")


def test_master_start_restarts_the_handshake_timer():
    master = make_master(LIMITS.replace(handshake_timeout=5))
    master.start(50)
    assert master.next_deadline() == 55
    assert master.frames_to_send() == []


@settings(max_examples=examples(100))
@given(interval=st.floats(0.001, 100), extra=st.floats(0.001, 100),
       steps=st.lists(st.tuples(st.sampled_from(["wait", "tick", "peer", "send"]),
                                st.floats(0, 50)), max_size=30))
def test_next_deadline_is_consistent_with_tick(interval, extra, steps):
    """tick() before next_deadline() does nothing; tick(next_deadline()) always acts."""
    limits = LIMITS.replace(heartbeat_interval=interval, heartbeat_timeout=interval + extra,
                            resume_window=0)
    master, worker = open_pair(master=make_master(limits), worker=make_worker(limits))
    now = 0.0
    for action, dt in steps:
        if worker.is_closed:
            break
        deadline = worker.next_deadline()
        assert deadline is not None
        if action == "wait":
            now += dt
            if now < deadline:
                assert worker.tick(now) == [] and worker.frames_to_send() == []
            else:
                worker.tick(now)
                assert worker.frames_to_send()
        elif action == "tick":
            now = max(now, deadline)
            worker.tick(now)
            assert worker.frames_to_send()  # a ping or a close
            if not worker.is_closed:
                assert worker.next_deadline() > now
        elif action == "peer":
            master.tick(now)
            if master.is_open:
                master.send_request("keepalive", {}, now)
            for f in master.frames_to_send():
                for event in worker.receive_frame(f, now):
                    if isinstance(event, RequestReceived) and worker.is_open:
                        worker.send_response(event.request_id, None, now)
            deliver(worker, master, now)
        else:
            worker.send_notification("update", {"command_id": 1, "updates": []}, now)
            deliver(worker, master, now)


# ============================================================================= stateful
class Side:
    """One session plus what the test knows about it."""

    def __init__(self, name: str, session: Session) -> None:
        self.name = name
        self.session = session
        self.inbox: list[bytes] = []  # frames in flight towards this session
        self.last_seq = 0  # seq of the last frame it emitted
        self.last_ack = 0  # ack of the last frame it emitted
        self.emitted_close = False
        self.max_send_seq = 0
        self.sent_requests: set[int] = set()  # ids of our requests
        self.answers: set[int] = set()  # reply_to of answers we received
        self.to_answer: set[int] = set()  # ids of the peer's requests we still owe
        self.authenticated = 0
        self.closed_events: list[Closed] = []


REQUESTS = {role: [s for s in MESSAGES if s.kind is Kind.REQUEST and s.may_be_sent_by(role)]
            for role in ("master", "worker")}
NOTIFICATIONS = [s for s in MESSAGES if s.kind is Kind.NOTIFICATION]
ORDERLY_CODES = {"normal", "heartbeat_timeout", "handshake_timeout", "connection_lost"}


class SessionPair(RuleBasedStateMachine):
    """Two honest sessions, a lossy-on-demand wire, and a clock; check the invariants."""

    @initialize(ack_every=st.integers(1, 6), interval=st.floats(1, 20), extra=st.floats(1, 30),
                handshake_timeout=st.floats(5, 60))
    def setup(self, ack_every, interval, extra, handshake_timeout):
        # one connection, numbered as before resume existed (resume: test_resume.py)
        limits = LIMITS.replace(ack_every=ack_every, heartbeat_interval=interval,
                                heartbeat_timeout=interval + extra,
                                handshake_timeout=handshake_timeout, resume_window=0)
        self.now = 0.0
        self.damaged = False  # a frame was dropped: protocol errors become legitimate
        self.master = Side("master", make_master(limits))
        self.worker = Side("worker", make_worker(limits))
        self.worker.session.start(self.now)
        self.collect(self.worker)

    # ------------------------------------------------------------------ plumbing
    def sides(self) -> tuple[Side, Side]:
        return self.master, self.worker

    def peer(self, side: Side) -> Side:
        return self.worker if side is self.master else self.master

    def collect(self, side: Side) -> None:
        """Take the frames ``side`` queued, check them, and put them on the wire."""
        frames = side.session.frames_to_send()
        if side.emitted_close:
            assert frames == [], "a closed session emitted frames"
        peer = self.peer(side)
        for i, f in enumerate(frames):
            message = codec.decode(f, 1 << 30)  # we only ever send valid messages
            assert message["seq"] == side.last_seq + 1, "seq not consecutive"
            assert side.last_ack <= message["ack"] <= peer.session.send_seq
            side.last_seq, side.last_ack = message["seq"], message["ack"]
            if message["type"] == "close":
                assert i == len(frames) - 1, "frames after close"
                assert side.session.is_closed
                side.emitted_close = True
            peer.inbox.append(f)

    def handle(self, side: Side, events: list[Event]) -> None:
        for event in events:
            assert not side.closed_events, f"event {event!r} after Closed"
            if isinstance(event, HelloReceived):
                assert side is self.master
                self.handle(side, side.session.answer_hello(CREDENTIALS, self.now))
            elif isinstance(event, Authenticated):
                side.authenticated += 1
                assert side.authenticated == 1
            elif isinstance(event, RequestReceived):
                assert event.request_id not in side.to_answer
                side.to_answer.add(event.request_id)
            elif isinstance(event, (ResponseReceived, ErrorReceived)):
                assert event.reply_to is not None, "honest peers answer requests"
                assert event.reply_to in side.sent_requests
                assert event.reply_to not in side.answers, "request answered twice"
                side.answers.add(event.reply_to)
            elif isinstance(event, NotificationReceived):
                assert side is self.master
            elif isinstance(event, Closed):
                side.closed_events.append(event)
                assert side.session.is_closed
                if not self.damaged and not event.by_peer:
                    assert event.code in ORDERLY_CODES, event
            else:  # AuthenticationFailed cannot happen between honest sides
                raise AssertionError(f"unexpected event {event!r}")
        self.collect(side)

    # ------------------------------------------------------------------ rules
    @rule(dt=st.floats(0, 15))
    def advance(self, dt):
        self.now += dt

    @rule(to_master=st.booleans(), count=st.integers(1, 4))
    def deliver(self, to_master, count):
        side = self.master if to_master else self.worker
        for _ in range(min(count, len(side.inbox))):
            f = side.inbox.pop(0)
            self.handle(side, side.session.receive_frame(f, self.now))

    @rule(to_master=st.booleans(), data=st.data())
    def drop(self, to_master, data):
        side = self.master if to_master else self.worker
        if side.inbox:
            side.inbox.pop(data.draw(st.integers(0, len(side.inbox) - 1)))
            self.damaged = True

    @rule(master=st.booleans())
    def tick(self, master):
        side = self.master if master else self.worker
        self.handle(side, side.session.tick(self.now))

    @rule(master=st.booleans())
    def tick_at_deadline(self, master):
        side = self.master if master else self.worker
        deadline = side.session.next_deadline()
        if deadline is None:
            assert side.session.is_closed
            return
        self.now = max(self.now, deadline)
        before = side.last_seq
        self.handle(side, side.session.tick(self.now))
        assert side.last_seq > before, "tick at the deadline did nothing"

    @rule(master=st.booleans(), data=st.data())
    def request(self, master, data):
        side = self.master if master else self.worker
        spec = data.draw(st.sampled_from(REQUESTS[side.name]))
        body = data.draw(bodies_of(spec))
        if not side.session.is_open:
            with pytest.raises(LocalProtocolError):
                side.session.send_request(spec.type, body, self.now)
            return
        request_id = side.session.send_request(spec.type, body, self.now)
        assert request_id not in side.sent_requests
        side.sent_requests.add(request_id)
        self.collect(side)

    @rule(data=st.data())
    def notify(self, data):
        spec = data.draw(st.sampled_from(NOTIFICATIONS))
        body = data.draw(bodies_of(spec))
        session = self.worker.session
        if not session.is_open:
            with pytest.raises(LocalProtocolError):
                session.send_notification(spec.type, body, self.now)
            return
        session.send_notification(spec.type, body, self.now)
        self.collect(self.worker)

    @rule(master=st.booleans(), data=st.data(), ok=st.booleans(), result=JSON_VALUES)
    def answer(self, master, data, ok, result):
        side = self.master if master else self.worker
        if not side.to_answer:
            return
        request_id = data.draw(st.sampled_from(sorted(side.to_answer)))
        side.to_answer.discard(request_id)
        if not side.session.is_open:
            with pytest.raises(LocalProtocolError):
                side.session.send_response(request_id, result, self.now)
            return
        if ok:
            side.session.send_response(request_id, result, self.now)
        else:
            side.session.send_error(request_id, "failed", "it did not work", self.now)
        self.collect(side)
        with pytest.raises(LocalProtocolError):  # at most once
            side.session.send_response(request_id, result, self.now)

    @rule(master=st.booleans())
    def close(self, master):
        side = self.master if master else self.worker
        was_closed = side.session.is_closed
        side.session.close("normal", "test closes", self.now)
        self.collect(side)
        assert side.emitted_close or was_closed

    @rule()
    def connection_lost(self):
        for side in self.sides():
            if not side.session.is_closed:
                side.session.close("connection_lost", "transport gone", self.now)
            side.session.frames_to_send()
            side.emitted_close = side.emitted_close or side.session.is_closed
            side.inbox.clear()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def sequence_numbers(self):
        for side in self.sides():
            s = side.session
            assert s.send_seq >= side.max_send_seq, "send seq went backwards"
            side.max_send_seq = s.send_seq
            assert 0 <= s.peer_ack <= s.send_seq, "ack exceeds what was sent"
            assert s.recv_seq <= self.peer(side).session.send_seq
            assert s.unacked_sent >= 0
            assert s.frames_to_send() == []  # everything was collected

    @invariant()
    def closed_sessions_are_inert(self):
        for side in self.sides():
            s = side.session
            assert (s.next_deadline() is None) == s.is_closed
            if s.is_closed:
                assert s.pending_requests == 0
                assert s.tick(self.now + 1e6) == []
                assert s.receive_frame(b'{"type":"ping","seq":1,"ack":0}', self.now) == []
                assert s.frames_to_send() == []

    @invariant()
    def open_sessions_agree(self):
        m, w = self.master.session, self.worker.session
        if m.is_open and w.is_open:
            assert m.session_id == w.session_id and m.version == w.version
        for side in self.sides():
            outstanding = side.sent_requests - side.answers
            assert side.session.pending_requests <= len(outstanding)

    def teardown(self):
        """Without damage, two open sessions settle: every request gets its answer."""
        if not hasattr(self, "master") or self.damaged:
            return
        for _ in range(50):
            if not (self.master.inbox or self.worker.inbox or self.master.to_answer
                    or self.worker.to_answer):
                break
            for side in self.sides():
                while side.inbox:
                    self.handle(side, side.session.receive_frame(side.inbox.pop(0), self.now))
                for request_id in sorted(side.to_answer):
                    side.to_answer.discard(request_id)
                    if side.session.is_open:
                        side.session.send_response(request_id, None, self.now)
                        self.collect(side)
        for side in self.sides():
            if side.session.is_open and self.peer(side).session.is_open:
                assert side.session.pending_requests == 0
                assert side.answers == side.sent_requests


SessionPair.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=40,
                                         deadline=None)
TestSessionPair = SessionPair.TestCase


# ============================================================================= fuzz
def _master_in(state: str) -> tuple[Session, Session]:
    master, worker = make_master(), make_worker()
    if state == "await_hello":
        return master, worker
    worker.start(0)
    deliver(worker, master)
    if state == "await_credentials":
        return master, worker
    master.answer_hello(CREDENTIALS, 0)
    if state == "await_authenticate":
        deliver(master, worker)
        return master, worker
    deliver(master, worker)
    deliver(worker, master)
    deliver(master, worker)
    if state == "open":
        return master, worker
    master.close("normal", "x", 0)
    master.frames_to_send()
    return master, worker


def _worker_in(state: str) -> tuple[Session, Session]:
    if state == "idle":
        return make_worker(), make_master()
    if state == "open":
        master, worker = open_pair()
        return worker, master
    if state == "await_welcome":
        return awaiting_welcome()
    worker, master = make_worker(), make_master()
    worker.start(0)
    deliver(worker, master)
    master.answer_hello(CREDENTIALS, 0)
    return worker, master


MASTER_STATES = ["await_hello", "await_credentials", "await_authenticate", "open", "closed"]
WORKER_STATES = ["idle", "await_challenge", "await_welcome", "open"]


@st.composite
def hostile_frames(draw: st.DrawFn, session: Session, honest: Session) -> bytes:
    """A frame a peer could send: garbage, damaged, or valid with a plausible envelope."""
    kind = draw(st.sampled_from(["bytes", "mutated", "valid", "valid-in-seq", "honest"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    message = draw(valid_messages())
    if kind in ("valid-in-seq", "mutated"):
        message["seq"] = session.recv_seq + 1
        message["ack"] = draw(st.integers(0, session.send_seq))
    if kind == "honest":
        # What the honest peer would really send next, sometimes: e.g. a request.
        if honest.is_open:
            spec = draw(st.sampled_from([s for s in MESSAGES if s.kind is not Kind.CONTROL
                                         and s.kind is not Kind.RESPONSE
                                         and s.may_be_sent_by(honest.role.value)]))
            body = draw(bodies_of(spec))
            message = {"type": spec.type, **body}
            if spec.kind is Kind.REQUEST:
                message["id"] = draw(st.integers(1, 5))
        message["seq"] = session.recv_seq + 1
        message["ack"] = session.send_seq
    encoded = codec.encode(message)
    if kind == "mutated":
        return draw(mutated_frames(encoded))
    return encoded


def _check_fuzzed(session: Session, frames: list, data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 6))):
        was_closed = session.is_closed
        f = data.draw(frames)
        events = session.receive_frame(f, 0.5)  # must not raise, whatever f is
        sent = session.frames_to_send()
        if was_closed:
            assert events == [] and sent == []
            continue
        closes = [e for e in events if isinstance(e, Closed)]
        assert len(closes) <= 1
        if session.is_closed:
            assert closes and events[-1] is closes[0]
            if closes[0].by_peer:
                assert sent == []
            else:
                assert types(sent) == ["close"]
                assert decoded(sent)[0]["code"] == closes[0].code == session.close_code
        else:
            assert not closes
            assert "close" not in types(sent)
        for message in decoded(sent):
            codec.decode(codec.encode(message), 1 << 30)


@pytest.mark.parametrize("state", MASTER_STATES)
@settings(max_examples=examples(60))
@given(data=st.data())
def test_fuzz_master(state, data):
    master, worker = _master_in(state)
    assert master.state.value == state
    _check_fuzzed(master, hostile_frames(master, worker), data)


@pytest.mark.parametrize("state", WORKER_STATES)
@settings(max_examples=examples(60))
@given(data=st.data())
def test_fuzz_worker(state, data):
    worker, master = _worker_in(state)
    assert worker.state.value == state
    _check_fuzzed(worker, hostile_frames(worker, master), data)


@settings(max_examples=examples(100))
@given(data=st.data())
def test_fuzz_every_field_of_every_type_when_open(data):
    """Valid envelopes, in sequence, with each known type's fields replaced at random."""
    master, worker = open_pair()
    spec = data.draw(st.sampled_from(MESSAGES))
    message = {"type": spec.type, **data.draw(bodies_of(spec))}
    if spec.kind is Kind.REQUEST:
        message["id"] = 1
    key = data.draw(st.sampled_from(sorted(message)))
    message[key] = data.draw(JSON_VALUES)
    f = peer_frame(master, message)
    events = master.receive_frame(f, 0)
    if master.is_closed:
        assert isinstance(events[-1], Closed)
        if not events[-1].by_peer:
            assert types(master.frames_to_send()) == ["close"]


def test_a_transport_with_smaller_frames_lowers_the_negotiated_frame_size():
    small = 64 * 1024
    worker = make_worker()
    worker.carried_by(small)  # e.g. a broker that takes smaller messages
    master, worker = open_pair(worker=worker)
    assert worker.frame_limit == master.frame_limit == small
    assert worker.max_outgoing_frame_size == small
    master2 = make_master()
    master2.carried_by(MIN_FRAME_SIZE // 2)  # never below the protocol minimum
    assert master2.frame_limit == MIN_FRAME_SIZE
