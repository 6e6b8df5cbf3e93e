"""Fakes of what :class:`buildbot_msgproto.manager.MasterHandshake` talks to (its
dispatcher, a session driver, the clock), for unit tests of the master's handshake
policies (login throttling, client certificates)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from buildbot_msgproto.config import parse_options
from buildbot_msgproto.sessions import SessionRegistry
from buildbot_msgproto.throttle import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def seconds(self) -> float:
        return self.now


class FakeSession:
    resumable = False
    session_id = "s1"
    is_suspended = False
    is_closed = False
    check = False  # a login, not a connection check

    def __init__(self, worker: str) -> None:
        self.worker_name = worker


class FakeDriver:
    """A session driver of worker ``worker`` from ``peer``; ``transport``: None (no TLS,
    so no client certificate) or a TLS protocol."""

    def __init__(self, clock: FakeClock, worker: str = "w1", peer: str = "127.0.0.1:40000",
                 transport: Any = None) -> None:
        self.reactor = clock
        self.peer = peer
        self.session = FakeSession(worker)
        self.transport = transport
        self.end_callbacks: list = []
        self.closed: tuple[str, str] | None = None
        self.answered = False

    def close(self, code: str, reason: str) -> None:
        self.closed = (code, reason)

    def answer_hello(self, credentials, resume=None) -> None:
        self.answered = True


class FakeDispatcher:
    """A single master's dispatcher that knows no worker (no credentials, no connection)."""

    def __init__(self, throttle: LoginThrottle, options: Any = None) -> None:
        self.login_throttle = throttle
        self.options = options if options is not None else parse_options({"port": 9989})
        self.sessions = SessionRegistry()
        self.ownership = None  # a single master

    def credentials_for(self, worker: str) -> defer.Deferred:
        return defer.succeed(None)

    def connection_factory(self, worker: str) -> None:
        return None
