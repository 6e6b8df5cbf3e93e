"""Certificate login in the session core: ``hello.auth`` and a welcome without challenge.

The session never sees a certificate: the master's owner checks it and then calls
``accept_certificate``.  These tests pin what the core guarantees around that: the
worker asks for it explicitly, a password worker can never be downgraded to it, and
the master cannot be made to skip the proof for a worker that did not ask.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.protocol.session import State
from worker_tests.test_session import LIMITS
from worker_tests.test_session import challenge_for
from worker_tests.test_session import challenged_worker
from worker_tests.test_session import decoded
from worker_tests.test_session import deliver
from worker_tests.test_session import make_master
from worker_tests.test_session import make_worker
from worker_tests.test_session import peer_frame


def cert_worker(**kwargs: Any) -> Session:
    return Session(Role.WORKER, LIMITS, worker_name="w1", password=None,
                   certificate_login=True, **kwargs)


def test_certificate_login_opens_both_sides_without_challenge():
    master, worker = make_master(), cert_worker()
    worker.start(0)
    [hello] = decoded(worker.frames_to_send())
    assert hello["auth"] == ["tls-client-cert"]
    assert worker.state is State.AWAIT_WELCOME
    master.receive_frame(json.dumps(hello).encode(), 0)
    assert master.state is State.AWAIT_CREDENTIALS
    master_events = master.accept_certificate(0)
    [welcome] = decoded(master.frames_to_send())
    assert welcome["type"] == "welcome" and welcome["auth"] == "tls-client-cert"
    assert "signature" not in welcome and welcome["version"] == 1
    worker_events = worker.receive_frame(json.dumps(welcome).encode(), 0)
    assert master.is_open and worker.is_open
    assert master.auth_mechanism == worker.auth_mechanism == auth.CLIENT_CERTIFICATE
    assert [type(e) for e in master_events] == [Authenticated]
    assert worker_events == [Authenticated("w1", 1, welcome["session"])]


def test_hello_received_reports_the_offered_mechanisms():
    master, worker = make_master(), cert_worker()
    worker.start(0)
    events = deliver(worker, master)
    assert events == [HelloReceived("w1", (1,), {}, ("tls-client-cert",))]
    master2, password_worker = make_master(), make_worker()
    password_worker.start(0)
    assert deliver(password_worker, master2)[0].mechanisms == (auth.SCRAM,)


def test_master_cannot_skip_the_proof_for_a_password_worker():
    """accept_certificate is refused unless the worker offered certificate login."""
    master, worker = make_master(), make_worker()
    worker.start(0)
    deliver(worker, master)
    with pytest.raises(LocalProtocolError, match="did not offer certificate login"):
        master.accept_certificate(0)


@pytest.mark.parametrize("welcome_patch", [
    {"auth": "tls-client-cert"},  # an impostor "accepting" the certificate the worker lacks
    {},  # no signature at all
])
def test_password_worker_refuses_a_welcome_without_signature(welcome_patch):
    worker = challenged_worker()
    welcome = {"type": "welcome", "session": "s", "version": 1, "heartbeat_interval": 1,
               "heartbeat_timeout": 2, "max_frame_size": 1 << 20, **welcome_patch}
    events = worker.receive_frame(peer_frame(worker, welcome), 0)
    assert events[-1] == Closed("master_not_authenticated", events[-1].reason, by_peer=False)
    assert not worker.is_open


def test_password_worker_refuses_a_welcome_instead_of_a_challenge():
    worker = make_worker()
    worker.start(0)
    worker.frames_to_send()
    welcome = {"type": "welcome", "session": "s", "version": 1, "auth": "tls-client-cert",
               "heartbeat_interval": 1, "heartbeat_timeout": 2, "max_frame_size": 1 << 20}
    events = worker.receive_frame(peer_frame(worker, welcome), 0)
    assert events[-1].code == "unexpected_message" and not worker.is_open


def test_certificate_worker_refuses_a_challenge_with_a_clear_reason():
    worker = cert_worker()
    events = worker.receive_frame(peer_frame(worker, challenge_for(worker)), 0)
    assert events[-1].code == "unsupported_auth"
    assert "certificate" in events[-1].reason and not worker.is_open


@pytest.mark.parametrize("welcome_patch, code", [
    ({"auth": "scram-sha-256", "signature": codec.b64encode(b"\0" * 32)},
     "master_not_authenticated"),
    ({}, "master_not_authenticated"),  # auth absent means scram
    ({"auth": "tls-client-cert", "version": 99}, "unsupported_version"),
    ({"auth": "tls-client-cert", "version": None}, "bad_message"),
])
def test_certificate_worker_checks_the_welcome(welcome_patch, code):
    worker = cert_worker()
    worker.start(0)
    worker.frames_to_send()
    welcome = {"type": "welcome", "session": "s", "version": 1, "heartbeat_interval": 1,
               "heartbeat_timeout": 2, "max_frame_size": 1 << 20, **welcome_patch}
    welcome = {k: v for k, v in welcome.items() if v is not None}
    if code == "bad_message":
        welcome["version"] = "one"
    events = worker.receive_frame(peer_frame(worker, welcome), 0)
    assert events[-1].code == code and not worker.is_open


def test_unknown_mechanisms_only_close_with_unsupported_auth():
    master = make_master()
    hello = {"type": "hello", "seq": 1, "ack": 0, "versions": [1], "worker": "w1",
             "nonce": "n" * 32, "auth": ["kerberos", "magic"]}
    events = master.receive_frame(codec.encode(hello), 0)
    assert events[-1].code == "unsupported_auth" and master.is_closed


def test_unknown_mechanisms_are_ignored_next_to_known_ones():
    master = make_master()
    hello = {"type": "hello", "seq": 1, "ack": 0, "versions": [1], "worker": "w1",
             "nonce": "n" * 32, "auth": ["kerberos", "tls-client-cert"]}
    [event] = master.receive_frame(codec.encode(hello), 0)
    assert event.mechanisms == ("tls-client-cert",)


def test_a_worker_session_needs_exactly_one_way_to_log_in():
    with pytest.raises(LocalProtocolError):
        Session(Role.WORKER, LIMITS, worker_name="w1", password=None)
    with pytest.raises(LocalProtocolError):
        Session(Role.WORKER, LIMITS, worker_name="w1", password="x", certificate_login=True)
