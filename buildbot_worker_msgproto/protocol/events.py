"""Events a :class:`~buildbot_worker_msgproto.protocol.session.Session` reports to its owner."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Event:
    """Base class of all session events."""


@dataclasses.dataclass(frozen=True)
class HelloReceived(Event):
    """Master side: a worker named itself; answer with ``Session.answer_hello``."""

    worker: str
    versions: tuple[int, ...]
    software: dict[str, Any]
    #: Authentication mechanisms the worker offers (``auth.SCRAM`` if it named none):
    #: answer ``auth.SCRAM`` with ``Session.answer_hello`` and ``auth.CLIENT_CERTIFICATE``
    #: with ``Session.accept_certificate`` (after checking the certificate).
    mechanisms: tuple[str, ...] = ("scram-sha-256",)
    #: The id of the session the worker asks to resume (None: a new login).  Pass that
    #: session (if it exists, is this worker's and may resume) to ``answer_hello`` /
    #: ``accept_certificate``; the proof is checked there.
    resume: str | None = None
    #: A connection check (``check`` instead of ``hello``): authenticate the worker as
    #: usual; the session then closes right after ``welcome``, never attached.
    check: bool = False


@dataclasses.dataclass(frozen=True)
class Authenticated(Event):
    """Both sides: the handshake finished and both peers proved they know the password."""

    worker: str
    version: int
    session_id: str


@dataclasses.dataclass(frozen=True)
class AuthenticationFailed(Event):
    """Master side: a worker failed to authenticate (a Closed event follows)."""

    worker: str
    reason: str


@dataclasses.dataclass(frozen=True)
class RequestReceived(Event):
    """The peer sent a request; answer with ``send_response`` or ``send_error``."""

    request_id: int
    type: str
    message: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class NotificationReceived(Event):
    """The peer sent a one-way message."""

    type: str
    message: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ResponseReceived(Event):
    """A request of ours succeeded."""

    reply_to: int
    result: Any
    #: The binary side frame that came with the response, if any.
    blob: bytes | None = None


@dataclasses.dataclass(frozen=True)
class ErrorReceived(Event):
    """A request of ours failed (``reply_to`` set) or the peer complained about a message."""

    reply_to: int | None
    code: str
    message: str
    #: False when the session itself reports a message it received and could not
    #: understand (an unknown type, answered with an ``error`` to the peer).
    by_peer: bool = True


@dataclasses.dataclass(frozen=True)
class Closed(Event):
    """The session ended; ``by_peer`` tells who ended it.  Flush and drop the transport."""

    code: str
    reason: str
    by_peer: bool


@dataclasses.dataclass(frozen=True)
class LinkLost(Event):
    """The connection is gone but the session is suspended, not ended: it may resume over
    a new connection within ``window`` seconds (then ``Resumed``, else ``Closed``)."""

    code: str
    reason: str
    window: float


@dataclasses.dataclass(frozen=True)
class Resumed(Event):
    """The session continues over a new connection; ``replayed`` frames were sent again.

    On the master the event comes from the *new* connection's session, whose link now
    belongs to ``session`` (the suspended one): the owner moves the connection over.
    """

    session_id: str
    replayed: int
    suspended_for: float
    session: Any = None
