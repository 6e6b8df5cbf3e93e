"""The session state machine, shared by master and worker, free of I/O.

Feed it received frames (``receive_frame``) and clock readings (``tick``); it
returns :mod:`events <buildbot_worker_msgproto.protocol.events>` and queues
frames that the owner collects with ``frames_to_send``.  Everything that
transports and Buildbot glue would otherwise repeat lives here once: the
handshake with version choice and mutual authentication, sequence numbers and
cumulative acks, request/response correlation, heartbeats and the close.

States::

    worker: IDLE -start-> AWAIT_CHALLENGE -challenge-> AWAIT_WELCOME -welcome-> OPEN
    master: AWAIT_HELLO -hello-> AWAIT_CREDENTIALS -answer_hello-> AWAIT_AUTHENTICATE
            -authenticate-> OPEN

    certificate login (no password; the TLS layer authenticates both peers):
    worker: IDLE -start-> AWAIT_WELCOME -welcome-> OPEN
    master: AWAIT_HELLO -hello-> AWAIT_CREDENTIALS -accept_certificate-> OPEN
    any state -close/error/timeout-> CLOSED
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Any

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
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
from buildbot_worker_msgproto.protocol.limits import SUPPORTED_FEATURES
from buildbot_worker_msgproto.protocol.limits import SUPPORTED_VERSIONS
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import Phase
from buildbot_worker_msgproto.protocol.messages import spec_for


class Role(enum.Enum):
    MASTER = "master"
    WORKER = "worker"


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_HELLO = "await_hello"
    AWAIT_CREDENTIALS = "await_credentials"
    AWAIT_AUTHENTICATE = "await_authenticate"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_WELCOME = "await_welcome"
    OPEN = "open"
    CLOSED = "closed"


#: Which handshake message each handshake state waits for.
_EXPECTED_HANDSHAKE = {
    State.AWAIT_HELLO: "hello",
    State.AWAIT_AUTHENTICATE: "authenticate",
    State.AWAIT_CHALLENGE: "challenge",
    State.AWAIT_WELCOME: "welcome",
}

MIN_NONCE_CHARS = 24  # 18 bytes in base64

#: Keys the session sets itself; a body passed to a send method must not contain them.
_ENVELOPE_KEYS = frozenset({"type", "seq", "ack", "id", "reply_to", "blob"})


class Session:
    """One side of one master<->worker session.

    Worker side: ``Session(Role.WORKER, worker_name=..., password=...)`` then ``start(now)``;
    ``password=None, certificate_login=True`` logs in with the TLS client certificate.
    Master side: ``Session(Role.MASTER)``, then on ``HelloReceived`` call ``answer_hello``
    (password) or ``accept_certificate`` (certificate login, once the owner checked it).
    """

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS, *, now: float = 0.0,
                 worker_name: str | None = None, password: str | None = None,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 features: tuple[str, ...] = SUPPORTED_FEATURES,
                 software: dict[str, Any] | None = None,
                 certificate_login: bool = False) -> None:
        if role is Role.WORKER and (worker_name is None
                                    or (password is None) != certificate_login):
            raise LocalProtocolError("a worker session needs worker_name and either a "
                                     "password or certificate_login=True")
        self.role = role
        self.limits = limits
        self.versions = tuple(versions)
        self.supported_features = frozenset(features)
        #: The optional features both sides announced (set during the handshake).
        self.features: frozenset[str] = frozenset()
        # (length, message or None to skip, kind) while a binary side frame is due
        self._blob_wait: tuple[int, dict[str, Any] | None, Kind | None] | None = None
        self.state = State.IDLE if role is Role.WORKER else State.AWAIT_HELLO
        self.worker_name = worker_name
        self.version: int | None = None
        self.session_id: str | None = None
        self.close_code: str | None = None
        self.close_reason: str | None = None
        self._password = password
        #: Worker: log in with the TLS client certificate instead of a password.
        self.certificate_login = certificate_login
        #: The mechanism that authenticated the session (set when it opens).
        self.auth_mechanism: str | None = None
        self._software = software or {}
        self._outgoing: list[bytes] = []
        self._send_seq = 0
        self._recv_seq = 0
        self._acked_recv_seq = 0
        self.peer_ack = 0
        self._next_request_id = 0
        self._pending: dict[int, str] = {}
        self._peer_requests: set[int] = set()  # ids of the peer's requests not yet answered
        self._started_at = now
        self._last_sent_at = now
        self._last_received_at = now
        self._heartbeat_interval = limits.heartbeat_interval
        self._heartbeat_timeout = limits.heartbeat_timeout
        self._frame_limit = limits.max_frame_size
        self._peer_frame_limit: int | None = None
        # handshake scratch
        self._client_nonce: str | None = None
        self._nonce: str | None = None
        self._credentials: auth.ScramCredentials | None = None
        self._expected_server_signature: bytes | None = None
        self._hello_versions: tuple[int, ...] = ()
        self._unknown_worker = False
        self._hello_features: frozenset[str] = frozenset()
        self._hello_mechanisms: tuple[str, ...] = (auth.SCRAM,)

    # ------------------------------------------------------------------ properties
    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def max_incoming_frame_size(self) -> int:
        """The largest frame the transport should accept right now."""
        if self.state is State.OPEN:
            return self._frame_limit
        return self.limits.max_handshake_frame_size

    @property
    def max_outgoing_frame_size(self) -> int:
        if self.state is State.OPEN:
            return self._frame_limit
        return self.limits.max_handshake_frame_size

    @property
    def blobs_enabled(self) -> bool:
        """Both sides agreed on binary side frames (see ``send_request(blob=...)``)."""
        return "blob" in self.features

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    @property
    def unacked_sent(self) -> int:
        """Frames we sent that the peer has not acknowledged yet."""
        return self._send_seq - self.peer_ack

    # ------------------------------------------------------------------ output
    def frames_to_send(self) -> list[bytes]:
        """Take the frames queued for the transport, in order."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def _send(self, message_type: str, body: dict[str, Any], now: float,
              blob: bytes | None = None) -> int:
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"cannot send {message_type!r}: session is closed")
        seq = self._send_seq + 1
        message = {"type": message_type, "seq": seq, "ack": self._recv_seq}
        message.update(body)
        if blob is not None:
            if not self.blobs_enabled:
                raise LocalProtocolError("binary side frames were not negotiated")
            if len(blob) > self.max_outgoing_frame_size:
                raise LocalProtocolError(f"binary side frame of {len(blob)} bytes exceeds the "
                                         f"{self.max_outgoing_frame_size}-byte frame limit")
            message["blob"] = len(blob)
        spec = spec_for(message_type)
        assert spec is not None, message_type
        try:
            codec.validate(message, spec)
        except ProtocolError as e:
            raise LocalProtocolError(f"invalid outgoing message: {e}") from e
        # Encode before committing the sequence number: a message that cannot be sent
        # (not JSON-serializable, too large) must not leave a gap in the sequence.
        self._outgoing.append(codec.encode(message, self.max_outgoing_frame_size))
        if blob is not None:
            self._outgoing.append(bytes(blob))
        self._send_seq = seq
        self._acked_recv_seq = self._recv_seq
        self._last_sent_at = now
        return seq

    @staticmethod
    def _check_body(message_type: str, body: dict[str, Any]) -> None:
        reserved = _ENVELOPE_KEYS.intersection(body)
        if reserved:
            raise LocalProtocolError(f"{message_type!r} body must not set the envelope "
                                     f"field(s) {sorted(reserved)}")

    # ------------------------------------------------------------------ API: both sides
    def start(self, now: float) -> None:
        """Worker: send ``hello``.  Master: only (re)starts the handshake timer."""
        self._started_at = self._last_received_at = self._last_sent_at = now
        if self.role is Role.MASTER:
            return
        if self.state is not State.IDLE:
            raise LocalProtocolError("session already started")
        self._client_nonce = auth.new_nonce()
        hello: dict[str, Any] = {"versions": list(self.versions), "worker": self.worker_name,
                                 "nonce": self._client_nonce,
                                 "max_frame_size": self.limits.max_frame_size}
        if self._software:
            hello["software"] = self._software
        if self.supported_features:
            hello["features"] = sorted(self.supported_features)
        if self.certificate_login:
            hello["auth"] = [auth.CLIENT_CERTIFICATE]
        self._send("hello", hello, now)
        self.state = State.AWAIT_WELCOME if self.certificate_login else State.AWAIT_CHALLENGE

    def send_request(self, message_type: str, body: dict[str, Any], now: float,
                     blob: bytes | None = None) -> int:
        """Send a request; returns its id, which the answer's ``reply_to`` will carry.

        ``blob``: raw bytes sent as a binary side frame right after the message (only
        when :attr:`blobs_enabled`).
        """
        self._check_sendable(message_type, Kind.REQUEST)
        self._check_body(message_type, body)
        request_id = self._next_request_id + 1
        self._send(message_type, {"id": request_id, **body}, now, blob)
        self._next_request_id = request_id
        self._pending[request_id] = message_type
        return request_id

    def send_notification(self, message_type: str, body: dict[str, Any], now: float) -> None:
        """Send a one-way message."""
        self._check_sendable(message_type, Kind.NOTIFICATION)
        self._check_body(message_type, body)
        self._send(message_type, body, now)

    def send_response(self, reply_to: int, result: Any, now: float,
                      blob: bytes | None = None) -> None:
        """Answer the peer's request ``reply_to`` successfully (at most once)."""
        self._check_open("response")
        self._check_answerable(reply_to)
        self._send("response", {"reply_to": reply_to, "result": result}, now, blob)
        self._peer_requests.discard(reply_to)

    def send_error(self, reply_to: int | None, code: str, message: str, now: float) -> None:
        """Answer the peer's request ``reply_to`` with an error (or complain, if None)."""
        self._check_open("error")
        if reply_to is not None:
            self._check_answerable(reply_to)
        self._send_error(reply_to, code, message, now)
        self._peer_requests.discard(reply_to)

    def _send_error(self, reply_to: int | None, code: str, message: str, now: float) -> None:
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
        if self.state is State.CLOSED:
            return
        reason = _shorten(reason)
        self._send("close", {"code": _shorten(code, 64), "reason": reason}, now)
        self._enter_closed(code, reason)

    def _check_open(self, message_type: str) -> None:
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send {message_type!r} in state {self.state.value}")

    def _check_sendable(self, message_type: str, kind: Kind) -> None:
        self._check_open(message_type)
        spec = spec_for(message_type)
        if spec is None or spec.kind is not kind or not spec.may_be_sent_by(self.role.value):
            raise LocalProtocolError(f"{self.role.value} cannot send {message_type!r} as a "
                                     f"{kind.value}")

    def _enter_closed(self, code: str, reason: str) -> None:
        self.state = State.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._pending.clear()
        self._peer_requests.clear()

    # ------------------------------------------------------------------ API: master
    def answer_hello(self, credentials: auth.ScramCredentials | None, now: float) -> list[Event]:
        """Master: continue the handshake with the worker's credentials (None: unknown worker).

        An unknown worker still gets a challenge (with throwaway credentials), so that
        probing cannot tell registered worker names from unknown ones.
        """
        if self.state is State.CLOSED:
            return []
        failed = self._choose_version("answer_hello", now)
        if failed is not None:
            return failed
        if credentials is None:
            credentials = auth.decoy_credentials(self.worker_name, self.limits.auth_iterations)
            self._unknown_worker = True
        else:
            self._unknown_worker = False
        self._credentials = credentials
        self._nonce = self._client_nonce + auth.new_nonce()
        self._send("challenge", {"version": self.version, "salt": credentials.salt_b64,
                                 "iterations": credentials.iterations, "nonce": self._nonce},
                   now)
        self.state = State.AWAIT_AUTHENTICATE
        return []

    def accept_certificate(self, now: float) -> list[Event]:
        """Master: open a certificate login: the worker offered ``tls-client-cert`` and the
        owner verified that the connection's TLS client certificate names this worker.

        The session cannot see the certificate: calling this is the owner's statement
        that it checked it.  Sends ``welcome`` without a challenge.
        """
        if self.state is State.CLOSED:
            return []
        if auth.CLIENT_CERTIFICATE not in self._hello_mechanisms:
            raise LocalProtocolError("the worker did not offer certificate login")
        failed = self._choose_version("accept_certificate", now)
        if failed is not None:
            return failed
        return self._welcome({"auth": auth.CLIENT_CERTIFICATE}, now)

    def _choose_version(self, caller: str, now: float) -> list[Event] | None:
        """Master, after hello: pick the highest common version (None), or fail (events)."""
        if self.state is not State.AWAIT_CREDENTIALS:
            raise LocalProtocolError(f"{caller} in state {self.state.value}")
        common = set(self._hello_versions) & set(self.versions)
        if not common:
            return self._fail(ProtocolError(
                f"no common protocol version: worker offers {sorted(self._hello_versions)}, "
                f"master speaks {sorted(self.versions)}", code="unsupported_version"), now)
        self.version = max(common)
        return None

    # ------------------------------------------------------------------ input
    def receive_frame(self, frame: bytes, now: float) -> list[Event]:
        """Process one received frame; never raises for anything the peer sent."""
        if self.state is State.CLOSED:
            return []
        self._last_received_at = now
        if self._blob_wait is not None:
            return self._receive_blob(frame, now)
        try:
            return self._receive(frame, now)
        except codec.UnknownMessageType as e:
            if self.state is not State.OPEN:
                return self._fail(e, now)
            try:
                self._account(e.seq, None)
            except ProtocolError as bad:
                return self._fail(bad, now)
            self._send_error(e.request_id, "unknown_type",
                             _shorten(f"unknown message type {e.message_type!r}"), now)
            if e.blob is not None:  # skip the side frame the unknown message announced
                self._blob_wait = (e.blob, None, None)
            return [ErrorReceived(None, "unknown_type", _shorten(str(e)), by_peer=False)]
        except ProtocolError as e:
            return self._fail(e, now)

    def fail(self, error: ProtocolError, now: float) -> list[Event]:
        """Close the session because of ``error`` (e.g. one the transport detected)."""
        if self.state is State.CLOSED:
            return []
        return self._fail(error, now)

    def _fail(self, error: ProtocolError, now: float) -> list[Event]:
        events: list[Event] = []
        if error.code == "authentication_failed":
            events.append(AuthenticationFailed(self.worker_name or "", _shorten(str(error))))
        self.close(error.code, str(error), now)
        events.append(Closed(error.code, _shorten(str(error)), by_peer=False))
        return events

    def _account(self, seq: int, ack: int | None) -> None:
        if seq != self._recv_seq + 1:
            raise ProtocolError(f"frame seq {seq} out of order (expected {self._recv_seq + 1})",
                                code="bad_sequence")
        if ack is not None:
            if ack > self._send_seq or ack < self.peer_ack:
                raise ProtocolError(f"ack {ack} out of range [{self.peer_ack}, {self._send_seq}]",
                                    code="bad_sequence")
            self.peer_ack = ack
        self._recv_seq = seq

    def _receive(self, frame: bytes, now: float) -> list[Event]:
        message = codec.decode(frame, self.max_incoming_frame_size)
        message_type = message["type"]
        spec = spec_for(message_type)
        assert spec is not None  # codec.decode rejects unknown types
        self._account(message["seq"], message["ack"])
        if message_type == "close":
            code, reason = _shorten(message["code"], 64), _shorten(message["reason"])
            self._enter_closed(code, reason)
            return [Closed(code, reason, by_peer=True)]
        if not spec.may_be_sent_by(self._peer_role):
            raise ProtocolError(f"{self._peer_role} may not send {message_type!r}",
                                code="unexpected_message")
        if self.state is not State.OPEN:
            if "blob" in message:
                raise ProtocolError("binary side frames are not allowed during the handshake",
                                    code="unexpected_message")
            expected = _EXPECTED_HANDSHAKE.get(self.state)
            if message_type == "challenge" and self.certificate_login:
                raise ProtocolError("the master asks for a password, but this worker logs in "
                                    "with its TLS client certificate only; the master does "
                                    "not support certificate login", code="unsupported_auth")
            if message_type != expected:
                raise ProtocolError(
                    f"got {message_type!r} while {self.state.value.replace('_', ' ')}"
                    + (f" (expected {expected!r})" if expected else ""),
                    code="unexpected_message")
            return getattr(self, f"_on_{message_type}")(message, now)
        if spec.phase is Phase.HANDSHAKE:
            raise ProtocolError(f"handshake message {message_type!r} after the handshake",
                                code="unexpected_message")
        if "blob" in message:
            if message["blob"] > self.max_incoming_frame_size:
                raise ProtocolError(f"announced binary side frame of {message['blob']} bytes "
                                    f"exceeds the {self.max_incoming_frame_size}-byte limit",
                                    code="frame_too_large")
            self._blob_wait = (message["blob"], message, spec.kind)
            return []
        events = self._dispatch_open(message, spec.kind)
        # A standalone ack is never acked itself (with ack_every=1 two sessions would
        # otherwise ack each other's acks forever); the next real frame covers it.
        if (message_type != "ack"
                and self._recv_seq - self._acked_recv_seq >= self.limits.ack_every
                and self.state is State.OPEN):
            self._send("ack", {}, now)
        return events

    def _receive_blob(self, frame: bytes, now: float) -> list[Event]:
        """The binary side frame announced by the previous message."""
        length, message, kind = self._blob_wait
        self._blob_wait = None
        if len(frame) != length:
            return self._fail(ProtocolError(
                f"binary side frame has {len(frame)} bytes, {length} were announced",
                code="bad_blob"), now)
        if message is None or kind is None:
            return []  # belonged to a message we could not understand
        message["blob"] = bytes(frame)
        try:
            return self._dispatch_open(message, kind)
        except ProtocolError as e:
            return self._fail(e, now)

    @property
    def _peer_role(self) -> str:
        return "worker" if self.role is Role.MASTER else "master"

    def _dispatch_open(self, message: dict[str, Any], kind: Kind) -> list[Event]:
        message_type = message["type"]
        if kind is Kind.REQUEST:
            request_id = message["id"]
            if request_id in self._peer_requests:
                raise ProtocolError(f"request id {request_id} is already in use by an "
                                    "unanswered request", code="bad_message")
            self._peer_requests.add(request_id)
            return [RequestReceived(request_id, message_type, message)]
        if kind is Kind.NOTIFICATION:
            return [NotificationReceived(message_type, message)]
        if kind is Kind.RESPONSE:
            reply_to = message.get("reply_to")
            if reply_to is None:  # an error that answers no request
                return [ErrorReceived(None, message["code"], message["message"])]
            if self._pending.pop(reply_to, None) is None:
                raise ProtocolError(f"{message_type!r} answers unknown request {reply_to}",
                                    code="bad_reply")
            if message_type == "response":
                blob = message.get("blob")
                return [ResponseReceived(reply_to, message.get("result"),
                                         blob if isinstance(blob, bytes) else None)]
            return [ErrorReceived(reply_to, message["code"], message["message"])]
        return []  # ping / ack: the envelope already did its work

    # ------------------------------------------------------------------ handshake steps
    def _on_hello(self, message: dict[str, Any], now: float) -> list[Event]:
        versions = message["versions"]
        if not versions or not all(isinstance(v, int) and not isinstance(v, bool)
                                   for v in versions):
            raise ProtocolError("hello.versions must be a non-empty list of integers",
                                code="bad_message")
        if len(message["nonce"]) < MIN_NONCE_CHARS or len(message["nonce"]) > 256:
            raise ProtocolError("hello.nonce has the wrong length", code="bad_message")
        if not message["worker"] or len(message["worker"]) > 512:
            raise ProtocolError("hello.worker must be a non-empty name", code="bad_message")
        self.worker_name = message["worker"]
        self._client_nonce = message["nonce"]
        self._hello_versions = tuple(versions[:64])
        peer_limit = message.get("max_frame_size")
        if peer_limit is not None:  # at least MIN_FRAME_SIZE: checked by the codec
            self._frame_limit = min(self._frame_limit, peer_limit)
        self._hello_features = _feature_names(message.get("features"))
        mechanisms = message.get("auth")
        if mechanisms is None:
            self._hello_mechanisms = (auth.SCRAM,)
        else:
            known = tuple(m for m in mechanisms[:16] if m in auth.MECHANISMS)
            if not known:
                raise ProtocolError("hello.auth offers no mechanism this master knows "
                                    f"(known: {', '.join(auth.MECHANISMS)})",
                                    code="unsupported_auth")
            self._hello_mechanisms = known
        self.state = State.AWAIT_CREDENTIALS
        software = message.get("software") or {}
        return [HelloReceived(self.worker_name, self._hello_versions, software,
                              self._hello_mechanisms)]

    def _auth_message(self) -> bytes:
        assert self._credentials is not None and self._nonce is not None
        return auth.auth_message(self.version, self.worker_name, self._client_nonce, self._nonce,
                                 self._credentials.salt_b64, self._credentials.iterations)

    def _on_authenticate(self, message: dict[str, Any], now: float) -> list[Event]:
        proof = _b64(message["proof"], "authenticate.proof")
        assert self._credentials is not None
        if self._unknown_worker or not self._credentials.verify_proof(self._auth_message(),
                                                                      proof):
            raise ProtocolError(f"worker {self.worker_name!r} failed to authenticate "
                                "(wrong password or unknown worker)",
                                code="authentication_failed")
        signature = self._credentials.server_signature(self._auth_message())
        self._credentials = None
        return self._welcome({"signature": base64.b64encode(signature).decode("ascii")}, now)

    def _welcome(self, proof: dict[str, Any], now: float) -> list[Event]:
        """Master: send ``welcome`` (with ``proof``: signature or auth mechanism), open."""
        self.session_id = auth.new_nonce()
        features = self.supported_features & self._hello_features
        welcome: dict[str, Any] = {
            **proof,
            "version": self.version,
            "session": self.session_id,
            "heartbeat_interval": self._heartbeat_interval,
            "heartbeat_timeout": self._heartbeat_timeout,
            "max_frame_size": self._frame_limit,
        }
        if features:
            welcome["features"] = sorted(features)
        self._send("welcome", welcome, now)
        self.features = features
        return self._open(welcome.get("auth", auth.SCRAM))

    def _on_challenge(self, message: dict[str, Any], now: float) -> list[Event]:
        if message["version"] not in self.versions:
            raise ProtocolError(f"master chose version {message['version']}, which was not "
                                "offered", code="unsupported_version")
        nonce = message["nonce"]
        if not nonce.startswith(self._client_nonce) or len(nonce) < 2 * MIN_NONCE_CHARS:
            raise ProtocolError("challenge nonce does not extend ours", code="bad_message")
        if message["iterations"] > self.limits.max_auth_iterations:
            raise ProtocolError(f"master asks for {message['iterations']} PBKDF2 iterations, "
                                f"more than the limit {self.limits.max_auth_iterations}",
                                code="bad_message")
        salt = _b64(message["salt"], "challenge.salt")
        self.version = message["version"]
        self._nonce = nonce
        transcript = auth.auth_message(self.version, self.worker_name, self._client_nonce, nonce,
                                       message["salt"], message["iterations"])
        proof, self._expected_server_signature = auth.client_proof(
            self._password, salt, message["iterations"], transcript)
        self._send("authenticate", {"proof": base64.b64encode(proof).decode("ascii")}, now)
        self.state = State.AWAIT_WELCOME
        return []

    def _on_welcome(self, message: dict[str, Any], now: float) -> list[Event]:
        mechanism = message.get("auth", auth.SCRAM)
        if self.certificate_login:
            # No password proof: the worker authenticated the master by its TLS certificate
            # (checked by the transport before the first frame), the master the worker by
            # the client certificate.  The master must say so; nothing else is accepted.
            if mechanism != auth.CLIENT_CERTIFICATE:
                raise ProtocolError("the master did not accept certificate login "
                                    f"(welcome.auth is {mechanism!r})",
                                    code="master_not_authenticated")
            version = message.get("version")
            if version not in self.versions:
                raise ProtocolError(f"master chose version {version!r}, which was not offered",
                                    code="unsupported_version")
            self.version = version
        else:
            if mechanism != auth.SCRAM or "signature" not in message:
                raise ProtocolError("the master skipped the password proof (welcome without "
                                    "signature): refusing to talk to a possible impostor",
                                    code="master_not_authenticated")
            signature = _b64(message["signature"], "welcome.signature")
            assert self._expected_server_signature is not None
            if not auth.signatures_match(self._expected_server_signature, signature):
                raise ProtocolError("the master could not prove it knows this worker's "
                                    "password: refusing to talk to a possible impostor",
                                    code="master_not_authenticated")
        try:
            interval = float(message["heartbeat_interval"])
            timeout = float(message["heartbeat_timeout"])
        except OverflowError:  # an integer too large for a float: unusable, keep ours
            interval = timeout = 0.0
        if interval > 0 and timeout > interval:
            self._heartbeat_interval = interval
            self._heartbeat_timeout = timeout
        self._frame_limit = min(self._frame_limit, message["max_frame_size"])
        self.session_id = message["session"]
        self.features = self.supported_features & _feature_names(message.get("features"))
        return self._open(mechanism)

    def _open(self, mechanism: str) -> list[Event]:
        self.state = State.OPEN
        self.auth_mechanism = mechanism
        self._password = None
        return [Authenticated(self.worker_name, self.version, self.session_id)]

    # ------------------------------------------------------------------ time
    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (absolute time), or None if never."""
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            return self._started_at + self.limits.handshake_timeout
        return min(self._last_sent_at + self._heartbeat_interval,
                   self._last_received_at + self._heartbeat_timeout)

    def tick(self, now: float) -> list[Event]:
        """Advance the clock: send heartbeats, detect a dead peer or a stuck handshake."""
        if self.state is State.CLOSED:
            return []
        # Compare against exactly the sums next_deadline() returns, so that tick(deadline)
        # always acts (``now - a >= b`` can be false when ``now == a + b`` in floats).
        if self.state is not State.OPEN:
            if now >= self._started_at + self.limits.handshake_timeout:
                return self._fail(ProtocolError(
                    f"handshake not finished within {self.limits.handshake_timeout:g} s",
                    code="handshake_timeout"), now)
            return []
        if now >= self._last_received_at + self._heartbeat_timeout:
            return self._fail(ProtocolError(
                f"no frame from the peer for {now - self._last_received_at:.1f} s "
                f"(heartbeat timeout {self._heartbeat_timeout:g} s)",
                code="heartbeat_timeout"), now)
        if now >= self._last_sent_at + self._heartbeat_interval:
            self._send("ping", {}, now)
        return []

    @property
    def heartbeat_interval(self) -> float:
        return self._heartbeat_interval

    @property
    def heartbeat_timeout(self) -> float:
        return self._heartbeat_timeout


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"{where} is not valid base64", code="bad_message") from e


def _shorten(text: str, limit: int = 512) -> str:
    """Bound text that may echo peer input, so replies and logs stay small."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _feature_names(value: Any) -> frozenset[str]:
    """The feature names in a hello/welcome ``features`` list (non-strings ignored)."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(item for item in value[:32] if isinstance(item, str) and len(item) <= 64)
