"""Connection checks in the sans-IO core: ``check`` instead of ``hello``, authenticated as
usual, reported to the master's owner as a check; an older master (one that does not
know ``check``) closes before authenticating, so it can never attach a check."""

from __future__ import annotations

import json

import pytest

from buildbot_worker_msgproto.protocol import messages
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.session import State
from worker_tests.test_session import CREDENTIALS
from worker_tests.test_session import WRONG_CREDENTIALS
from worker_tests.test_session import deliver
from worker_tests.test_session import handshake
from worker_tests.test_session import make_master
from worker_tests.test_session import make_worker


def test_a_check_sends_check_and_authenticates_like_hello():
    worker = make_worker(check=True)
    worker.encryption = "TLS (TLSv1.3, TLS_AES_128_GCM_SHA256)"
    worker.start(0.0)
    frames = worker.frames_to_send()
    sent = json.loads(frames[0])
    assert sent["type"] == "check"
    assert sent["encryption"] == "TLS (TLSv1.3, TLS_AES_128_GCM_SHA256)"
    assert "resume" not in sent
    master = make_master()
    events = []
    for frame in frames:
        events += master.receive_frame(frame, 0.0)
    assert [type(e) for e in events] == [HelloReceived]
    assert events[0].check is True and master.check is True
    assert master.peer_encryption == "TLS (TLSv1.3, TLS_AES_128_GCM_SHA256)"
    master_events = master.answer_hello(CREDENTIALS, 0.0)
    worker_events = deliver(master, worker)
    master_events += deliver(worker, master)
    worker_events += deliver(master, worker)
    assert any(isinstance(e, Authenticated) for e in master_events)
    assert any(isinstance(e, Authenticated) for e in worker_events)
    assert worker.is_open and worker.check


def test_a_check_with_the_wrong_password_fails_like_a_login():
    _, worker, master_events, worker_events = handshake(
        worker=make_worker(check=True), credentials=WRONG_CREDENTIALS)
    assert worker.state is State.CLOSED
    assert worker.close_code == CloseCode.AUTHENTICATION_FAILED
    assert not any(isinstance(e, Authenticated) for e in master_events + worker_events)


def test_a_hello_is_not_a_check():
    master, _, events, _ = handshake()
    assert master.is_open and not master.check
    assert events[0] == HelloReceived("w1", (1,), {}, ("scram-sha-256",), None, check=False)


def test_a_check_cannot_ask_to_resume():
    """``resume`` is not a field of ``check``: a master ignores one and never resumes."""
    master = make_master()
    frame = json.dumps({"type": "check", "seq": 1, "ack": 0, "versions": [1], "worker": "w1",
                        "nonce": "A" * 32, "resume": {"session": "x" * 32, "last_seq": 0}})
    events = master.receive_frame(frame.encode(), 0.0)
    assert events == [HelloReceived("w1", (1,), {}, ("scram-sha-256",), None, check=True)]


def test_an_older_master_closes_a_check_before_authenticating(monkeypatch):
    """A master whose registry lacks ``check`` (as before this version) answers it with
    close ``unknown_type``: no HelloReceived, so its owner never even looks the worker up."""
    worker = make_worker(check=True)
    master = make_master()
    worker.start(0.0)
    monkeypatch.delitem(messages.REGISTRY, "check")
    events = deliver(worker, master)
    assert [type(e) for e in events] == [Closed]
    assert master.close_code == CloseCode.UNKNOWN_TYPE
    monkeypatch.undo()
    worker_events = deliver(master, worker)
    assert worker_events == [Closed(CloseCode.UNKNOWN_TYPE, worker_events[0].reason,
                                    by_peer=True)]
    assert "'check'" in worker_events[0].reason


@pytest.mark.parametrize("first", ["hello", "check"])
def test_a_master_refuses_a_second_first_message(first):
    worker = make_worker()
    master = make_master()
    worker.start(0.0)
    deliver(worker, master)
    frame = json.dumps({"type": first, "seq": 2, "ack": 0, "versions": [1], "worker": "w1",
                        "nonce": "A" * 32})
    events = master.receive_frame(frame.encode(), 0.0)
    assert isinstance(events[-1], Closed)
    assert master.close_code == CloseCode.UNEXPECTED_MESSAGE
