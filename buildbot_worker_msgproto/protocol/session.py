"""The session state machine, shared by master and worker, free of I/O.

A :class:`Session` is the logical conversation between a master and one worker.  It is
carried by one :class:`~buildbot_worker_msgproto.protocol.link.Link` (one connection)
at a time and owns a :class:`~buildbot_worker_msgproto.protocol.stream.Stream`
(sequence numbers, acks, replay buffer) and the request correlation, which outlive the
link when both sides negotiated ``resume``.  Feed it received frames
(``receive_frame``), lost connections (``link_lost``) and clock readings (``tick``); it
returns :mod:`events <buildbot_worker_msgproto.protocol.events>` and queues frames that
the owner collects with ``frames_to_send``.

Session states (the link has its own handshake states, see link.py)::

    CONNECTING -link opens-> OPEN -link lost, resumable-> SUSPENDED -resumed-> OPEN
    any -close / protocol error / window expired / link lost, not resumable-> CLOSED

``Session.state`` shows the link's handshake state while connecting, then OPEN,
SUSPENDED or CLOSED.
"""

from __future__ import annotations

import enum
from typing import Any

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import AuthenticationFailed
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import ErrorReceived
from buildbot_worker_msgproto.protocol.events import Event
from buildbot_worker_msgproto.protocol.events import LinkLost
from buildbot_worker_msgproto.protocol.events import NotificationReceived
from buildbot_worker_msgproto.protocol.events import RequestReceived
from buildbot_worker_msgproto.protocol.events import ResponseReceived
from buildbot_worker_msgproto.protocol.events import Resumed
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MIN_FRAME_SIZE
from buildbot_worker_msgproto.protocol.limits import SUPPORTED_FEATURES
from buildbot_worker_msgproto.protocol.limits import SUPPORTED_VERSIONS
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.link import Link
from buildbot_worker_msgproto.protocol.link import Role
from buildbot_worker_msgproto.protocol.link import State
from buildbot_worker_msgproto.protocol.link import shorten
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import spec_for
from buildbot_worker_msgproto.protocol.stream import Stream

__all__ = ["Role", "Session", "SessionState", "State"]


class SessionState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    SUSPENDED = "suspended"
    CLOSED = "closed"


#: Every allowed session transition: (state, trigger) -> next state; closing is allowed
#: from every state and is not listed.
TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (SessionState.CONNECTING, "open"): SessionState.OPEN,
    (SessionState.OPEN, "link_lost"): SessionState.SUSPENDED,
    (SessionState.OPEN, "resume"): SessionState.OPEN,  # a new link replaces a half-open one
    (SessionState.SUSPENDED, "resume"): SessionState.OPEN,
}

#: Keys the session sets itself; a body passed to a send method must not contain them.
_ENVELOPE_KEYS = frozenset({"type", "seq", "ack", "id", "reply_to", "blob"})


class Session:
    """One side of one master<->worker session.

    Worker side: ``Session(Role.WORKER, worker_name=..., password=...)`` then ``start(now)``;
    ``password=None, certificate_login=True`` logs in with the TLS client certificate.
    After ``LinkLost``, ``new_link(now)`` and ``start(now)`` on the next connection resume.
    ``check=True`` sends ``check`` instead of ``hello``: a connection check, which the
    master authenticates and then closes without attaching.
    Master side: ``Session(Role.MASTER)`` per connection, then on ``HelloReceived`` call
    ``answer_hello`` (password) or ``accept_certificate`` (certificate login, once the
    owner checked it), naming the suspended session the worker asks to resume, if any.
    """

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS, *, now: float = 0.0,
                 worker_name: str | None = None, password: str | None = None,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 features: tuple[str, ...] = SUPPORTED_FEATURES,
                 software: dict[str, Any] | None = None,
                 certificate_login: bool = False, check: bool = False) -> None:
        if role is Role.WORKER and (worker_name is None
                                    or (password is None) != certificate_login):
            raise LocalProtocolError("a worker session needs worker_name and either a "
                                     "password or certificate_login=True")
        self.role = role
        self.limits = limits
        self.versions = tuple(versions)
        if not limits.resume_window:
            features = tuple(f for f in features if f != "resume")
        self.supported_features = frozenset(features)
        #: The optional features both sides announced (set when the session opens).
        self.features: frozenset[str] = frozenset()
        self.worker_name = worker_name
        self.version: int | None = None
        self.session_id: str | None = None
        self.close_code: str | None = None
        self.close_reason: str | None = None
        #: Worker: the password (kept for the logins of resumed links).
        self.password = password
        #: Worker: log in with the TLS client certificate instead of a password.
        self.certificate_login = certificate_login
        #: The mechanism that authenticated the session (set when it opens).
        self.auth_mechanism: str | None = None
        #: A connection check: the worker sends ``check`` instead of ``hello`` and the
        #: master closes the session right after ``welcome`` (master: set by ``check``).
        self.check = check
        #: Informational: how this side's connection is protected (the worker sends it in
        #: ``hello``), and what the worker said of its own (master).
        self.encryption: str | None = None
        self.peer_encryption: str | None = None
        self.software = software or {}
        #: Negotiated values (the handshake sets them).
        self.frame_limit = limits.max_frame_size
        self.heartbeat_interval = limits.heartbeat_interval
        self.heartbeat_timeout = limits.heartbeat_timeout
        self.resume_window = 0.0
        self.resume_key: bytes | None = None
        self.stream: Stream | None = None
        self.link: Link | None = Link(self, now)
        self._state = SessionState.CONNECTING
        self.suspended_at: float | None = None
        #: How often the session resumed, and when it last did (a ``now`` value).
        self.resumes = 0
        self.last_resumed_at: float | None = None
        self._next_request_id = 0
        self._pending: dict[int, str] = {}
        self._peer_requests: set[int] = set()  # ids of the peer's requests not yet answered

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> State:
        if self._state is SessionState.CLOSED:
            return State.CLOSED
        if self._state is SessionState.SUSPENDED:
            return State.SUSPENDED
        return self.link.state if self.link is not None else State.CLOSED

    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is SessionState.OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is SessionState.CLOSED

    @property
    def is_suspended(self) -> bool:
        return self._state is SessionState.SUSPENDED

    @property
    def may_resume(self) -> bool:
        """Worker: the session is suspended and can ask to resume on a new link."""
        return self.is_suspended and self.resume_key is not None

    @property
    def may_be_resumed(self) -> bool:
        """Master: a new link of this worker may take the session over."""
        return (self._state in (SessionState.OPEN, SessionState.SUSPENDED)
                and self.resume_key is not None)

    @property
    def resumable(self) -> bool:
        """Both sides negotiated resume: a lost link suspends the session."""
        return self.resume_window > 0 and self.resume_key is not None

    @property
    def max_incoming_frame_size(self) -> int:
        """The largest frame the transport should accept right now."""
        if self.link is None:
            return self.frame_limit
        return self.link.max_incoming_frame_size

    @property
    def max_outgoing_frame_size(self) -> int:
        return self.max_incoming_frame_size

    @property
    def blobs_enabled(self) -> bool:
        """Both sides agreed on binary side frames (see ``send_request(blob=...)``)."""
        return "blob" in self.features

    @property
    def pushed_download(self) -> bool:
        """Both sides agreed that the master pushes a download's first bytes with its
        start (docs/commands.rst section 7.5)."""
        return "pushed_download" in self.features

    @property
    def pipelined_close(self) -> bool:
        """Both sides agreed that ``complete`` may follow a command's last transfer
        request without waiting for its answer (docs/commands.rst section 7.5)."""
        return "pipelined_close" in self.features

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    @property
    def unacked_sent(self) -> int:
        """Frames we sent that the peer has not acknowledged yet."""
        return self.stream.unacked_frames if self.stream is not None else 0

    @property
    def peer_ack(self) -> int:
        return self.stream.peer_ack if self.stream is not None else 0

    @property
    def send_seq(self) -> int:
        """The seq of the last frame sent: the stream's once open, else the link's."""
        if self.stream is not None:
            return self.stream.send_seq
        return self.link.handshake_counts[0] if self.link is not None else 0

    @property
    def recv_seq(self) -> int:
        """The seq of the last frame received: the stream's once open, else the link's."""
        if self.stream is not None:
            return self.stream.recv_seq
        return self.link.handshake_counts[1] if self.link is not None else 0

    @property
    def replay_bytes(self) -> int:
        """Bytes of sent frames kept until the peer acknowledges them (for a resume)."""
        return self.stream.unacked_bytes if self.stream is not None else 0

    @property
    def buffer_full(self) -> bool:
        """Too much is waiting for acknowledgement: the owner should stop producing."""
        return self.replay_bytes >= self.limits.max_replay_bytes

    @property
    def expiry(self) -> float | None:
        """When a suspended session gives up (None if it is not suspended).

        The master waits the window plus a heartbeat timeout, so that a worker (which
        kills its orphaned commands when its own window passes) is done before the master
        hands the build to anyone else: a build never runs twice at once.
        """
        if self._state is not SessionState.SUSPENDED:
            return None
        extra = self.heartbeat_timeout if self.role is Role.MASTER else 0.0
        return self.suspended_at + self.resume_window + extra

    def _step(self, trigger: str) -> None:
        new_state = TRANSITIONS.get((self._state, trigger))
        if new_state is None:
            raise LocalProtocolError(f"session cannot {trigger} while {self._state.value}")
        self._state = new_state

    # ------------------------------------------------------------------ output
    def frames_to_send(self) -> list[bytes]:
        """Take the frames queued for the current link's transport, in order."""
        return self.link.frames_to_send() if self.link is not None else []

    def _send(self, message_type: str, body: dict[str, Any], now: float,
              blob: bytes | None = None) -> int:
        """Send a stream message: numbered, kept for replay, written to the open link."""
        if self._state not in (SessionState.OPEN, SessionState.SUSPENDED):
            raise LocalProtocolError(f"cannot send {message_type!r} while "
                                     f"{self.state.value}")
        stream = self.stream
        seq = stream.next_seq()
        message = {"type": message_type, "seq": seq, "ack": stream.recv_seq, **body}
        if blob is not None:
            if not self.blobs_enabled:
                raise LocalProtocolError("binary side frames were not negotiated")
            if len(blob) > self.frame_limit:
                raise LocalProtocolError(f"binary side frame of {len(blob)} bytes exceeds the "
                                         f"{self.frame_limit}-byte frame limit")
            message["blob"] = len(blob)
        spec = spec_for(message_type)
        assert spec is not None, message_type
        try:
            codec.validate(message, spec)
        except ProtocolError as e:
            raise LocalProtocolError(f"invalid outgoing message: {e}") from e
        # Encode before committing the sequence number: a message that cannot be sent
        # (not JSON-serializable, too large) must not leave a gap in the sequence.
        frames = (codec.encode(message, self.frame_limit),)
        if blob is not None:
            frames += (bytes(blob),)
        stream.sent(seq, frames)
        if self.link is not None and self.link.is_open:
            self.link.write(frames, now)
        return seq

    @staticmethod
    def _check_body(message_type: str, body: dict[str, Any]) -> None:
        reserved = _ENVELOPE_KEYS.intersection(body)
        if reserved:
            raise LocalProtocolError(f"{message_type!r} body must not set the envelope "
                                     f"field(s) {sorted(reserved)}")

    # ------------------------------------------------------------------ API: both sides
    def start(self, now: float) -> None:
        """Worker: send ``hello`` on the current link (a resume, if suspended).
        Master: only (re)starts the handshake timer."""
        if self.link is None:
            raise LocalProtocolError("no link to start (call new_link first)")
        if self.role is Role.MASTER:
            self.link.restart_clock(now)
            return
        if self.link.state is not State.IDLE:
            raise LocalProtocolError("session already started")
        self.link.start(now)

    def carried_by(self, max_frame_size: int | None) -> None:
        """The transport of the next link carries frames of at most ``max_frame_size``
        bytes (None: no limit of its own): never negotiate larger frames than that.
        Called before ``start``; the negotiated size cannot grow once the session opened."""
        if max_frame_size is not None and self.stream is None:
            self.frame_limit = max(MIN_FRAME_SIZE, min(self.frame_limit, max_frame_size))

    def new_link(self, now: float) -> None:
        """Worker: a new connection for the suspended session (``start`` sends hello)."""
        if self.role is not Role.WORKER or not self.is_suspended:
            raise LocalProtocolError(f"new_link while {self.state.value}")
        self.link = Link(self, now)

    def send_request(self, message_type: str, body: dict[str, Any], now: float,
                     blob: bytes | None = None) -> int:
        """Send a request; returns its id, which the answer's ``reply_to`` will carry.

        ``blob``: raw bytes sent as a binary side frame right after the message (only
        when :attr:`blobs_enabled`).  While suspended the request waits for the resume.
        """
        self._check_sendable(message_type, Kind.REQUEST)
        self._check_body(message_type, body)
        request_id = self._next_request_id + 1
        self._send(message_type, {"id": request_id, **body}, now, blob)
        self._next_request_id = request_id
        self._pending[request_id] = message_type
        return request_id

    def send_notification(self, message_type: str, body: dict[str, Any], now: float,
                          blob: bytes | None = None) -> None:
        """Send a one-way message (``blob`` as in :meth:`send_request`)."""
        self._check_sendable(message_type, Kind.NOTIFICATION)
        self._check_body(message_type, body)
        self._send(message_type, body, now, blob)

    def send_response(self, reply_to: int, result: Any, now: float,
                      blob: bytes | None = None) -> None:
        """Answer the peer's request ``reply_to`` successfully (at most once)."""
        self._check_usable("response")
        self._check_answerable(reply_to)
        self._send("response", {"reply_to": reply_to, "result": result}, now, blob)
        self._peer_requests.discard(reply_to)

    def send_error(self, reply_to: int | None, code: str, message: str, now: float) -> None:
        """Answer the peer's request ``reply_to`` with an error (or complain, if None)."""
        self._check_usable("error")
        if reply_to is not None:
            self._check_answerable(reply_to)
        self.send_error_frame(reply_to, code, message, now)
        self._peer_requests.discard(reply_to)

    def send_error_frame(self, reply_to: int | None, code: str, message: str,
                         now: float) -> None:
        body: dict[str, Any] = {"code": code, "message": message}
        if reply_to is not None:
            body["reply_to"] = reply_to
        self._send("error", body, now)

    def _check_answerable(self, reply_to: int) -> None:
        if reply_to not in self._peer_requests:
            raise LocalProtocolError(f"request {reply_to!r} is not an unanswered request of "
                                     "the peer")

    def close(self, code: str, reason: str, now: float) -> None:
        """End the session: queue a ``close`` frame; nothing can be sent afterwards."""
        if self.is_closed:
            return
        reason = shorten(reason)
        link = self.link
        body = {"code": shorten(code, 64), "reason": reason}
        if link is not None and not link.is_closed:
            if link.is_open and self._state is SessionState.OPEN:
                self._send("close", body, now)
            else:
                link.send_handshake("close", body, now)
            link.end("flush")
        self._enter_closed(code, reason)

    def _check_usable(self, message_type: str) -> None:
        if self._state not in (SessionState.OPEN, SessionState.SUSPENDED):
            raise LocalProtocolError(f"cannot send {message_type!r} in state "
                                     f"{self.state.value}")

    def _check_sendable(self, message_type: str, kind: Kind) -> None:
        self._check_usable(message_type)
        spec = spec_for(message_type)
        if spec is None or spec.kind is not kind or not spec.may_be_sent_by(self.role.value):
            raise LocalProtocolError(f"{self.role.value} cannot send {message_type!r} as a "
                                     f"{kind.value}")

    def _enter_closed(self, code: str, reason: str) -> None:
        self._state = SessionState.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._pending.clear()
        self._peer_requests.clear()
        self.suspended_at = None

    # ------------------------------------------------------------------ API: master
    def answer_hello(self, credentials: auth.ScramCredentials | None, now: float,
                     resume: Session | None = None) -> list[Event]:
        """Master: continue the handshake with the worker's credentials (None: unknown
        worker), naming the suspended session the worker asked to resume (if known).

        An unknown worker still gets a challenge (with throwaway credentials), so that
        probing cannot tell registered worker names from unknown ones.
        """
        if self.is_closed or self.link is None:
            return []
        return self._handshake_call(lambda: self.link.answer_hello(credentials, now, resume),
                                    now)

    def accept_certificate(self, now: float, resume: Session | None = None) -> list[Event]:
        """Master: open a certificate login: the worker offered ``tls-client-cert`` and the
        owner verified that the connection's TLS client certificate names this worker.

        The session cannot see the certificate: calling this is the owner's statement
        that it checked it.  Sends ``welcome`` without a challenge.
        """
        if self.is_closed or self.link is None:
            return []
        return self._handshake_call(lambda: self.link.accept_certificate(now, resume), now)

    def _handshake_call(self, call: Any, now: float) -> list[Event]:
        try:
            return call()
        except ProtocolError as e:
            return self._fail(e, now)

    # ------------------------------------------------------------------ input
    def receive_frame(self, frame: bytes, now: float) -> list[Event]:
        """Process one received frame; never raises for anything the peer sent."""
        link = self.link
        if self.is_closed or link is None or link.is_closed:
            return []
        try:
            events = link.receive_frame(frame, now)
        except ProtocolError as e:
            return self._link_failed(link, e, now)
        if self.link is link and link.is_open and self.stream.ack_due(now):
            self._send("ack", {}, now)
        return events

    def fail(self, error: ProtocolError, now: float) -> list[Event]:
        """Close the session because of ``error`` (e.g. one the transport detected)."""
        if self.is_closed:
            return []
        return self._fail(error, now)

    def _fail(self, error: ProtocolError, now: float) -> list[Event]:
        events: list[Event] = []
        if error.code == CloseCode.AUTHENTICATION_FAILED:
            events.append(AuthenticationFailed(self.worker_name or "", shorten(str(error))))
        self.close(error.code, str(error), now)
        events.append(Closed(error.code, shorten(str(error)), by_peer=False))
        return events

    def _link_failed(self, link: Link, error: ProtocolError, now: float) -> list[Event]:
        """The peer broke the protocol on ``link``.  A resume link that merely timed out
        is dropped (the session stays suspended); anything else ends the session."""
        if self.is_suspended and error.code == CloseCode.HANDSHAKE_TIMEOUT:
            link.send_handshake("close", {"code": error.code, "reason": shorten(str(error))},
                                now)
            link.end("flush")
            return []
        return self._fail(error, now)

    def link_lost(self, link: Link | None, reason: str, now: float) -> list[Event]:
        """The transport of ``link`` is gone.  A resumable open session is suspended
        (``LinkLost``), any other ends (``Closed``, ``connection_lost``); a link that is
        no longer the session's current one is ignored."""
        if self.is_closed or link is None or link is not self.link:
            return []
        link.end("abort")
        self.link = None
        return self._lost(CloseCode.CONNECTION_LOST, reason, now, by_peer=True)

    def _lost(self, code: str, reason: str, now: float, by_peer: bool) -> list[Event]:
        if self._state is SessionState.OPEN and self.resumable:
            self._step("link_lost")
            self.suspended_at = now
            return [LinkLost(code, shorten(reason), self.resume_window)]
        if self._state is SessionState.SUSPENDED:
            return []  # a resume attempt failed; the window still runs
        self._enter_closed(code, reason)
        return [Closed(code, shorten(reason), by_peer=by_peer)]

    def accept(self, seq: int, ack: int | None, message_type: str, size: int,
               now: float) -> bool:
        """Link: account a received stream frame; False for a duplicate, which only a
        resume can produce (without resume it is a ``bad_sequence``)."""
        fresh = self.stream.accept(seq, ack, size, now, needs_ack=message_type != "ack")
        if not fresh and not self.stream.replay:
            raise ProtocolError(f"frame seq {seq} out of order (expected "
                                f"{self.stream.recv_seq + 1})", code=CloseCode.BAD_SEQUENCE)
        return fresh

    def stream_message(self, message: dict[str, Any], now: float) -> list[Event]:
        """Link: one new message of the open stream."""
        message_type = message["type"]
        spec = spec_for(message_type)
        if message_type == "close":
            return self.peer_closed(message)
        peer_role = "worker" if self.role is Role.MASTER else "master"
        if not spec.may_be_sent_by(peer_role):
            raise ProtocolError(f"{peer_role} may not send {message_type!r}",
                                code=CloseCode.UNEXPECTED_MESSAGE)
        if spec.kind is Kind.REQUEST:
            request_id = message["id"]
            if request_id in self._peer_requests:
                raise ProtocolError(f"request id {request_id} is already in use by an "
                                    "unanswered request", code=CloseCode.BAD_MESSAGE)
            self._peer_requests.add(request_id)
            return [RequestReceived(request_id, message_type, message)]
        if spec.kind is Kind.NOTIFICATION:
            return [NotificationReceived(message_type, message)]
        if spec.kind is Kind.RESPONSE:
            reply_to = message.get("reply_to")
            if reply_to is None:  # an error that answers no request
                return [ErrorReceived(None, message["code"], message["message"])]
            if self._pending.pop(reply_to, None) is None:
                raise ProtocolError(f"{message_type!r} answers unknown request {reply_to}",
                                    code=CloseCode.BAD_REPLY)
            if message_type == "response":
                blob = message.get("blob")
                return [ResponseReceived(reply_to, message.get("result"),
                                         blob if isinstance(blob, bytes) else None)]
            return [ErrorReceived(reply_to, message["code"], message["message"])]
        return []  # ping / ack: the envelope already did its work

    def peer_closed(self, message: dict[str, Any]) -> list[Event]:
        code, reason = shorten(message["code"], 64), shorten(message["reason"])
        if self.link is not None:
            self.link.end("flush")
        self._enter_closed(code, reason)
        return [Closed(code, reason, by_peer=True)]

    # ------------------------------------------------------------------ handshake results
    def opened(self, link: Link, now: float, *, version: int, session_id: str,
               features: frozenset[str], mechanism: str, frame_limit: int,
               heartbeats: tuple[float, float] | None, resume_window: float,
               resume_key: bytes | None) -> list[Event]:
        """Link: the first handshake finished (both sides authenticated)."""
        self._step("open")
        self.version = version
        self.session_id = session_id
        self.features = frozenset(features)
        self.auth_mechanism = mechanism
        self.frame_limit = min(self.frame_limit, frame_limit)
        if heartbeats is not None:
            self.heartbeat_interval, self.heartbeat_timeout = heartbeats
        self.resume_key = resume_key
        self.resume_window = resume_window if resume_key is not None else 0.0
        if not self.resume_window:
            self.resume_key = None
        if not self.resumable:
            self.password = None  # only a resume would need it again
        if "resume" in self.features:  # the stream numbers its own frames from 1
            self.stream = Stream(self.limits, replay=self.resumable)
        else:  # as before resume existed: the stream continues the handshake's numbers
            sent, received = link.handshake_counts
            self.stream = Stream(self.limits, send_base=sent, recv_base=received)
        return [Authenticated(self.worker_name, self.version, self.session_id)]

    def welcome_fields(self) -> dict[str, Any]:
        """Master: the negotiated values a resumed link's ``welcome`` repeats."""
        fields: dict[str, Any] = {"heartbeat_interval": self.heartbeat_interval,
                                  "heartbeat_timeout": self.heartbeat_timeout,
                                  "max_frame_size": self.frame_limit,
                                  "resume_window": self.resume_window}
        if self.features:
            fields["features"] = sorted(self.features)
        return fields

    def hand_over(self, link: Link, target: Session, peer_last_seq: int,
                  now: float) -> list[Event]:
        """Master: this new connection's ``link`` resumes ``target``; this session ends
        without a word (its link now belongs to ``target``)."""
        self.link = None
        self._state = SessionState.CLOSED
        self.close_code, self.close_reason = "resumed", "the connection resumed a session"
        target.peer_encryption = self.peer_encryption or target.peer_encryption
        suspended_for, replayed = target.adopt(link, peer_last_seq, now)
        return [Resumed(target.session_id, replayed, suspended_for, session=target)]

    def adopt(self, link: Link, peer_last_seq: int, now: float) -> tuple[float, int]:
        """Master: continue over ``link`` (a half-open old link is dropped); replay what
        the worker has not received.  Returns (seconds suspended, frames replayed)."""
        old = self.link
        if old is not None and old is not link:
            old.end("abort")
        suspended_for = now - self.suspended_at if self.suspended_at is not None else 0.0
        self._step("resume")
        self.link = link
        link.session = self
        return suspended_for, self._replay(link, peer_last_seq, now)

    def resumed(self, link: Link, peer_last_seq: int, now: float) -> list[Event]:
        """Worker: the master accepted the resume over ``link``; replay what it missed."""
        suspended_for = now - self.suspended_at if self.suspended_at is not None else 0.0
        self._step("resume")
        replayed = self._replay(link, peer_last_seq, now)
        return [Resumed(self.session_id, replayed, suspended_for, session=self)]

    def _replay(self, link: Link, peer_last_seq: int, now: float) -> int:
        frames = self.stream.replay_after(peer_last_seq)
        link.write(frames, now)
        self.suspended_at = None
        self.resumes += 1
        self.last_resumed_at = now
        return self.stream.unacked_frames

    # ------------------------------------------------------------------ time
    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (absolute time), or None if never."""
        if self.is_closed:
            return None
        deadlines = []
        if self.is_suspended:
            deadlines.append(self.expiry)
        link = self.link
        if link is not None and not link.is_closed:
            deadlines.append(link.next_deadline())
            if link.is_open and self.stream is not None:
                ack_at = self.stream.ack_deadline()
                if ack_at is not None:
                    deadlines.append(ack_at)
        deadlines = [d for d in deadlines if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[Event]:
        """Advance the clock: heartbeats, acks, and the handshake, heartbeat and resume
        deadlines."""
        if self.is_closed:
            return []
        expiry = self.expiry
        if expiry is not None and now >= expiry:
            reason = (f"the connection was lost {now - self.suspended_at:.0f} s ago and the "
                      f"session did not resume within its {self.resume_window:g} s window")
            self.close(CloseCode.RESUME_WINDOW_EXPIRED, reason, now)
            return [Closed(CloseCode.RESUME_WINDOW_EXPIRED, reason, by_peer=False)]
        link = self.link
        if link is None or link.is_closed:
            return []
        error = link.overdue(now)
        if error is not None:
            if error.code == CloseCode.HEARTBEAT_TIMEOUT and self.resumable:
                link.end("abort")
                self.link = None
                return self._lost(error.code, str(error), now, by_peer=False)
            return self._link_failed(link, error, now)
        if link.is_open:
            if self.stream.ack_due(now):
                self._send("ack", {}, now)
            elif link.ping_due(now):
                self._send("ping", {}, now)
        return []
