"""The per-connection half of a session: handshake, framing limits and heartbeats.

A :class:`Link` lives as long as one transport connection.  It runs the handshake
(hello, challenge, authenticate, welcome; or hello, welcome for a certificate login),
numbering those frames by itself; decodes every frame under the current frame limit;
pairs a message with its binary side frame; and keeps the heartbeat clock.  Once open it
hands each message to its :class:`~buildbot_worker_msgproto.protocol.session.Session`,
whose stream numbers, acknowledges and (with ``resume``) replays them.  A session moves
to a new link when its connection is lost; a link moves to another session only in the
one step where the master's new connection resumes a suspended session.

The handshake is a transition table (:data:`TRANSITIONS`): every allowed step is one
row; a received message or an owner's call without a row is refused.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import TYPE_CHECKING
from typing import Any

from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.codes import ErrorCode
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.events import ErrorReceived
from buildbot_worker_msgproto.protocol.events import Event
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.messages import Phase
from buildbot_worker_msgproto.protocol.messages import spec_for

if TYPE_CHECKING:
    from buildbot_worker_msgproto.protocol.session import Session


class Role(enum.Enum):
    MASTER = "master"
    WORKER = "worker"


class State(enum.Enum):
    """The state of a link; a session adds ``SUSPENDED`` (no link) and ``CLOSED``."""

    IDLE = "idle"
    AWAIT_HELLO = "await_hello"
    AWAIT_CREDENTIALS = "await_credentials"
    AWAIT_AUTHENTICATE = "await_authenticate"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_WELCOME = "await_welcome"
    OPEN = "open"
    SUSPENDED = "suspended"
    CLOSED = "closed"


#: Every allowed handshake step: (role, state, trigger) -> next state.  A trigger is a
#: received handshake message or one of the owner's calls.  Closing is allowed from
#: every state and is not listed.
TRANSITIONS: dict[tuple[Role, State, str], State] = {
    (Role.WORKER, State.IDLE, "start"): State.AWAIT_CHALLENGE,
    (Role.WORKER, State.IDLE, "start_certificate"): State.AWAIT_WELCOME,
    (Role.WORKER, State.AWAIT_CHALLENGE, "challenge"): State.AWAIT_WELCOME,
    (Role.WORKER, State.AWAIT_WELCOME, "welcome"): State.OPEN,
    (Role.MASTER, State.AWAIT_HELLO, "check"): State.AWAIT_CREDENTIALS,
    (Role.MASTER, State.AWAIT_HELLO, "hello"): State.AWAIT_CREDENTIALS,
    (Role.MASTER, State.AWAIT_CREDENTIALS, "answer_hello"): State.AWAIT_AUTHENTICATE,
    (Role.MASTER, State.AWAIT_CREDENTIALS, "accept_certificate"): State.OPEN,
    (Role.MASTER, State.AWAIT_AUTHENTICATE, "authenticate"): State.OPEN,
}

#: The handshake message each (role, state) waits for, derived from the table (where
#: two fit, the later row: ``hello`` rather than ``check``).
EXPECTED: dict[tuple[Role, State], str] = {
    (role, state): trigger for (role, state, trigger) in TRANSITIONS
    if spec_for(trigger) is not None
}

MIN_NONCE_CHARS = 24  # 18 bytes in base64
MAX_NONCE_CHARS = 256
#: Longest worker name a master accepts in ``hello``.
MAX_WORKER_NAME = 512


class Link:
    """One connection of a session: its handshake, frame limits and heartbeat clock."""

    def __init__(self, session: Session, now: float) -> None:
        self.session = session
        self.role = session.role
        self.limits = session.limits
        self.state = State.IDLE if self.role is Role.WORKER else State.AWAIT_HELLO
        #: How the link ended: None (not ended), "flush" (send what is queued, then close
        #: the connection) or "abort" (drop it now: the session may resume elsewhere).
        self.ending: str | None = None
        self._outgoing: list[bytes] = []
        # handshake frames are numbered per link
        self._send_seq = 0
        self._recv_seq = 0
        self._started_at = self._last_sent_at = self._last_received_at = now
        #: (length, message or None if skipped, size of its frame) of an awaited side frame
        self._blob_wait: tuple[int, dict[str, Any] | None, int] | None = None
        # handshake scratch
        self._client_nonce: str | None = None
        self._nonce: str | None = None
        self._credentials: auth.ScramCredentials | None = None
        self._unknown_worker = False
        self._expected_server_signature: bytes | None = None
        self._stored_key: bytes | None = None
        self._hello_versions: tuple[int, ...] = ()
        self._hello_features: frozenset[str] = frozenset()
        self._hello_mechanisms: tuple[str, ...] = (auth.SCRAM,)
        #: Master: (session id, last seq received, proof or None) from ``hello.resume``.
        self._resume_request: tuple[str, int, bytes | None] | None = None
        #: Master: the suspended session the owner named for that request (or None).
        self._resume_target: Session | None = None
        #: Worker: this link resumes its session (decided when ``hello`` is sent).
        self.resuming = False

    # ------------------------------------------------------------------ state
    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def handshake_counts(self) -> tuple[int, int]:
        """Handshake frames (sent, received) on this link."""
        return self._send_seq, self._recv_seq

    def step(self, trigger: str) -> None:
        """Take the handshake step ``trigger`` (a row of TRANSITIONS) or refuse it."""
        new_state = TRANSITIONS.get((self.role, self.state, trigger))
        if new_state is None:
            if spec_for(trigger) is None:  # one of the owner's calls
                raise LocalProtocolError(f"{trigger} in state {self.state.value}")
            expected = EXPECTED.get((self.role, self.state))
            raise ProtocolError(
                f"got {trigger!r} while {self.state.value.replace('_', ' ')}"
                + (f" (expected {expected!r})" if expected else ""),
                code=CloseCode.UNEXPECTED_MESSAGE)
        self.state = new_state

    def end(self, how: str) -> None:
        """The link is over: ``flush`` what is queued and close, or ``abort``."""
        self.state = State.CLOSED
        if self.ending is None:
            self.ending = how
        if how == "abort":
            self._outgoing.clear()

    # ------------------------------------------------------------------ output
    def frames_to_send(self) -> list[bytes]:
        frames, self._outgoing = self._outgoing, []
        return frames

    def write(self, frames: list[bytes] | tuple[bytes, ...], now: float) -> None:
        """Queue frames the session encoded (stream frames and replays)."""
        if frames and self.ending != "abort":
            self._outgoing.extend(frames)
            self._last_sent_at = now

    def send_handshake(self, message_type: str, body: dict[str, Any], now: float) -> None:
        """Send a handshake frame (or a ``close`` before the link is open), numbered by
        this link."""
        seq = self._send_seq + 1
        message = {"type": message_type, "seq": seq, "ack": self._recv_seq, **body}
        spec = spec_for(message_type)
        assert spec is not None, message_type
        try:
            codec.validate(message, spec)
        except ProtocolError as e:
            raise LocalProtocolError(f"invalid outgoing message: {e}") from e
        self._outgoing.append(codec.encode(message, self.limits.max_handshake_frame_size))
        self._send_seq = seq
        self._last_sent_at = now

    # ------------------------------------------------------------------ input
    @property
    def max_incoming_frame_size(self) -> int:
        if self.state is State.OPEN:
            return self.session.frame_limit
        return self.limits.max_handshake_frame_size

    def receive_frame(self, frame: bytes, now: float) -> list[Event]:
        """Decode one frame and act on it; ProtocolError for anything the peer got wrong."""
        self._last_received_at = now
        if self._blob_wait is not None:
            length, message, header_size = self._blob_wait
            self._blob_wait = None
            if len(frame) != length:
                raise ProtocolError(f"binary side frame has {len(frame)} bytes, {length} "
                                    "were announced", code=CloseCode.BAD_BLOB)
            if message is None:
                return []  # belonged to a message we skipped
            # only now is the message received (a resume's last_seq names it)
            if not self.session.accept(message["seq"], message["ack"], message["type"],
                                       header_size + length, now):
                return []  # a duplicate of a message received before a resume
            message["blob"] = bytes(frame)
            return self.session.stream_message(message, now)
        try:
            message = codec.decode(frame, self.max_incoming_frame_size)
        except codec.UnknownMessageType as e:
            if self.state is not State.OPEN:
                raise
            return self._unknown_type(e, len(frame), now)
        if self.state is not State.OPEN:
            return self._handshake_message(message, now)
        spec = spec_for(message["type"])
        if spec.phase is Phase.HANDSHAKE:
            raise ProtocolError(f"handshake message {message['type']!r} after the handshake",
                                code=CloseCode.UNEXPECTED_MESSAGE)
        if "blob" in message:
            if message["blob"] > self.max_incoming_frame_size:
                raise ProtocolError(f"announced binary side frame of {message['blob']} bytes "
                                    f"exceeds the {self.max_incoming_frame_size}-byte limit",
                                    code=CloseCode.FRAME_TOO_LARGE)
            # Accepted with its side frame, not before: if the link dies in between, the
            # message was not received, and a resume must send it again (section 11.3).
            self._blob_wait = (message["blob"], message, len(frame))
            return []
        fresh = self.session.accept(message["seq"], message["ack"], message["type"],
                                    len(frame), now)
        if not fresh:
            return []  # a duplicate of a frame received before a resume
        return self.session.stream_message(message, now)

    def _unknown_type(self, e: codec.UnknownMessageType, size: int, now: float) -> list[Event]:
        """Once open: account the frame, answer ``error unknown_type``, skip its blob."""
        fresh = self.session.accept(e.seq, None, e.message_type, size, now)
        if e.blob is not None:
            self._blob_wait = (e.blob, None, 0)
        if not fresh:
            return []
        text = shorten(f"unknown message type {e.message_type!r}")
        self.session.send_error_frame(e.request_id, ErrorCode.UNKNOWN_TYPE, text, now)
        return [ErrorReceived(None, ErrorCode.UNKNOWN_TYPE, shorten(str(e)), by_peer=False)]

    def _handshake_message(self, message: dict[str, Any], now: float) -> list[Event]:
        message_type = message["type"]
        if message["seq"] != self._recv_seq + 1:
            raise ProtocolError(f"frame seq {message['seq']} out of order (expected "
                                f"{self._recv_seq + 1})", code=CloseCode.BAD_SEQUENCE)
        if message["ack"] > self._send_seq:
            raise ProtocolError(f"ack {message['ack']} out of range [0, {self._send_seq}]",
                                code=CloseCode.BAD_SEQUENCE)
        self._recv_seq = message["seq"]
        if message_type == "close":
            return self.session.peer_closed(message)
        spec = spec_for(message_type)
        peer_role = "worker" if self.role is Role.MASTER else "master"
        if not spec.may_be_sent_by(peer_role):
            raise ProtocolError(f"{peer_role} may not send {message_type!r}",
                                code=CloseCode.UNEXPECTED_MESSAGE)
        if "blob" in message:
            raise ProtocolError("binary side frames are not allowed during the handshake",
                                code=CloseCode.UNEXPECTED_MESSAGE)
        if message_type == "challenge" and self.session.certificate_login:
            raise ProtocolError("the master asks for a password, but this worker logs in "
                                "with its TLS client certificate only; the master does "
                                "not support certificate login",
                                code=CloseCode.UNSUPPORTED_AUTH)
        self.step(message_type)
        return getattr(self, f"_on_{message_type}")(message, now)

    # ------------------------------------------------------------------ worker handshake
    def start(self, now: float) -> None:
        """Worker: send ``hello`` (asking to resume if the session is suspended), or
        ``check`` for a connection check."""
        session = self.session
        self.step("start_certificate" if session.certificate_login else "start")
        self.restart_clock(now)
        self._client_nonce = auth.new_nonce()
        hello: dict[str, Any] = {"versions": list(session.versions),
                                 "worker": session.worker_name, "nonce": self._client_nonce,
                                 "max_frame_size": session.frame_limit}
        if session.software:
            hello["software"] = session.software
        if session.supported_features:
            hello["features"] = sorted(session.supported_features)
        if session.certificate_login:
            hello["auth"] = [auth.CLIENT_CERTIFICATE]
        if session.encryption:
            hello["encryption"] = shorten(session.encryption, 256)
        if session.check:
            self.send_handshake("check", hello, now)
            return
        if session.may_resume:
            self.resuming = True
            resume: dict[str, Any] = {"session": session.session_id,
                                      "last_seq": session.stream.recv_seq}
            if session.certificate_login:
                resume["proof"] = _b64(auth.resume_proof(
                    session.resume_key, session.session_id,
                    auth.resume_transcript(session.worker_name, self._client_nonce)))
            hello["resume"] = resume
        self.send_handshake("hello", hello, now)

    def _on_challenge(self, message: dict[str, Any], now: float) -> list[Event]:
        session = self.session
        if message["version"] not in session.versions:
            raise ProtocolError(f"master chose version {message['version']}, which was not "
                                "offered", code=CloseCode.UNSUPPORTED_VERSION)
        nonce = message["nonce"]
        if not nonce.startswith(self._client_nonce) or len(nonce) < 2 * MIN_NONCE_CHARS:
            raise ProtocolError("challenge nonce does not extend ours",
                                code=CloseCode.BAD_MESSAGE)
        if message["iterations"] > self.limits.max_auth_iterations:
            raise ProtocolError(f"master asks for {message['iterations']} PBKDF2 iterations, "
                                f"more than the limit {self.limits.max_auth_iterations}",
                                code=CloseCode.BAD_MESSAGE)
        salt = b64(message["salt"], "challenge.salt")
        version = message["version"]
        transcript = auth.auth_message(version, session.worker_name, self._client_nonce, nonce,
                                       message["salt"], message["iterations"])
        proof, self._expected_server_signature, self._stored_key = auth.scram_client(
            session.password, salt, message["iterations"], transcript)
        self._nonce = nonce
        self._transcript = transcript
        self._challenge_version = version
        body = {"proof": _b64(proof)}
        if self.resuming:
            body["resume_proof"] = _b64(auth.resume_proof(session.resume_key,
                                                          session.session_id, transcript))
        self.send_handshake("authenticate", body, now)
        return []

    def _on_welcome(self, message: dict[str, Any], now: float) -> list[Event]:
        session = self.session
        mechanism = message.get("auth", auth.SCRAM)
        if session.certificate_login:
            # No password proof: the worker authenticated the master by its TLS certificate
            # (checked by the transport before the first frame), the master the worker by
            # the client certificate.  The master must say so; nothing else is accepted.
            if mechanism != auth.CLIENT_CERTIFICATE:
                raise ProtocolError("the master did not accept certificate login "
                                    f"(welcome.auth is {mechanism!r})",
                                    code=CloseCode.MASTER_NOT_AUTHENTICATED)
            version = message.get("version")
        else:
            if mechanism != auth.SCRAM or "signature" not in message:
                raise ProtocolError("the master skipped the password proof (welcome without "
                                    "signature): refusing to talk to a possible impostor",
                                    code=CloseCode.MASTER_NOT_AUTHENTICATED)
            signature = b64(message["signature"], "welcome.signature")
            if not auth.signatures_match(self._expected_server_signature, signature):
                raise ProtocolError("the master could not prove it knows this worker's "
                                    "password: refusing to talk to a possible impostor",
                                    code=CloseCode.MASTER_NOT_AUTHENTICATED)
            version = message.get("version", self._challenge_version)
            if version != self._challenge_version:
                raise ProtocolError(f"welcome.version {version!r} differs from the "
                                    f"challenge's {self._challenge_version}",
                                    code=CloseCode.UNSUPPORTED_VERSION)
        if version not in session.versions:
            raise ProtocolError(f"master chose version {version!r}, which was not offered",
                                code=CloseCode.UNSUPPORTED_VERSION)
        if self.resuming:
            resumed = message.get("resumed")
            if message["session"] != session.session_id or not isinstance(resumed, dict) \
                    or not _is_seq(resumed.get("last_seq")):
                raise ProtocolError("the master answered a resume with a welcome that does "
                                    "not resume the session", code=CloseCode.BAD_MESSAGE)
            return session.resumed(self, resumed["last_seq"], now)
        features = session.supported_features & _feature_names(message.get("features"))
        resume_key = None
        if "resume" in features:
            if session.certificate_login:
                resume_key = b64(message.get("resume_key", ""), "welcome.resume_key") or None
            else:
                resume_key = auth.scram_resume_key(self._stored_key, self._transcript)
        try:
            interval = float(message["heartbeat_interval"])
            timeout = float(message["heartbeat_timeout"])
        except OverflowError:  # an integer too large for a float: unusable, keep ours
            interval = timeout = 0.0
        window = message.get("resume_window", 0)
        return session.opened(
            self, now, version=version, session_id=message["session"], features=features,
            mechanism=mechanism, frame_limit=message["max_frame_size"],
            heartbeats=(interval, timeout) if 0 < interval < timeout else None,
            resume_window=float(window) if resume_key is not None else 0.0,
            resume_key=resume_key)

    # ------------------------------------------------------------------ master handshake
    def _on_check(self, message: dict[str, Any], now: float) -> list[Event]:
        """A connection check: a hello that must never lead to an attached worker."""
        self.session.check = True
        return self._on_hello({k: v for k, v in message.items() if k != "resume"}, now)

    def _on_hello(self, message: dict[str, Any], now: float) -> list[Event]:
        versions = message["versions"]
        if not versions or not all(isinstance(v, int) and not isinstance(v, bool)
                                   for v in versions):
            raise ProtocolError("hello.versions must be a non-empty list of integers",
                                code=CloseCode.BAD_MESSAGE)
        if not MIN_NONCE_CHARS <= len(message["nonce"]) <= MAX_NONCE_CHARS:
            raise ProtocolError("hello.nonce has the wrong length", code=CloseCode.BAD_MESSAGE)
        if not message["worker"] or len(message["worker"]) > MAX_WORKER_NAME:
            raise ProtocolError("hello.worker must be a non-empty name",
                                code=CloseCode.BAD_MESSAGE)
        session = self.session
        session.worker_name = message["worker"]
        self._client_nonce = message["nonce"]
        self._hello_versions = tuple(versions[:64])
        peer_limit = message.get("max_frame_size")
        if peer_limit is not None:  # at least MIN_FRAME_SIZE: checked by the codec
            session.frame_limit = min(session.frame_limit, peer_limit)
        self._hello_features = _feature_names(message.get("features"))
        mechanisms = message.get("auth")
        if mechanisms is not None:
            known = tuple(m for m in mechanisms[:16] if m in auth.MECHANISMS)
            if not known:
                raise ProtocolError("hello.auth offers no mechanism this master knows "
                                    f"(known: {', '.join(auth.MECHANISMS)})",
                                    code=CloseCode.UNSUPPORTED_AUTH)
            self._hello_mechanisms = known
        resume = message.get("resume")
        if resume is not None:  # answered in _welcome, after authentication
            self._resume_request = _resume_request(resume)
        encryption = message.get("encryption")
        session.peer_encryption = shorten(encryption, 256) if encryption else None
        return [HelloReceived(session.worker_name, self._hello_versions,
                              message.get("software") or {}, self._hello_mechanisms,
                              self._resume_request[0] if self._resume_request else None,
                              check=session.check)]

    def answer_hello(self, credentials: auth.ScramCredentials | None, now: float,
                     resume: Session | None) -> list[Event]:
        """Master: challenge the worker (decoy credentials for an unknown one)."""
        failed = self._choose_version("answer_hello")
        self.step("answer_hello")
        if failed is not None:
            raise failed
        self._resume_target = resume
        if credentials is None:
            credentials = auth.decoy_credentials(self.session.worker_name,
                                                 self.limits.auth_iterations)
            self._unknown_worker = True
        self._credentials = credentials
        self._nonce = self._client_nonce + auth.new_nonce()
        self.send_handshake("challenge", {"version": self.session.version,
                                          "salt": credentials.salt_b64,
                                          "iterations": credentials.iterations,
                                          "nonce": self._nonce}, now)
        return []

    def accept_certificate(self, now: float, resume: Session | None) -> list[Event]:
        """Master: open a certificate login (the owner checked the client certificate)."""
        if auth.CLIENT_CERTIFICATE not in self._hello_mechanisms:
            raise LocalProtocolError("the worker did not offer certificate login")
        failed = self._choose_version("accept_certificate")
        self.step("accept_certificate")
        if failed is not None:
            raise failed
        self._resume_target = resume
        transcript = auth.resume_transcript(self.session.worker_name, self._client_nonce)
        return self._welcome({"auth": auth.CLIENT_CERTIFICATE}, transcript, None, now)

    def _choose_version(self, caller: str) -> ProtocolError | None:
        if self.state is not State.AWAIT_CREDENTIALS:
            raise LocalProtocolError(f"{caller} in state {self.state.value}")
        common = set(self._hello_versions) & set(self.session.versions)
        if not common:
            return ProtocolError(
                f"no common protocol version: worker offers {sorted(self._hello_versions)}, "
                f"master speaks {sorted(self.session.versions)}",
                code=CloseCode.UNSUPPORTED_VERSION)
        self.session.version = max(common)
        return None

    def _on_authenticate(self, message: dict[str, Any], now: float) -> list[Event]:
        session = self.session
        proof = b64(message["proof"], "authenticate.proof")
        transcript = auth.auth_message(session.version, session.worker_name,
                                       self._client_nonce, self._nonce,
                                       self._credentials.salt_b64,
                                       self._credentials.iterations)
        if self._unknown_worker or not self._credentials.verify_proof(transcript, proof):
            raise ProtocolError(f"worker {session.worker_name!r} failed to authenticate "
                                "(wrong password or unknown worker)",
                                code=CloseCode.AUTHENTICATION_FAILED)
        resume_proof = message.get("resume_proof")
        if self._resume_request is not None:
            if not isinstance(resume_proof, str):
                raise ProtocolError("hello asked to resume, authenticate has no resume_proof",
                                    code=CloseCode.BAD_MESSAGE)
            self._resume_request = (*self._resume_request[:2],
                                    b64(resume_proof, "authenticate.resume_proof"))
        signature = self._credentials.server_signature(transcript)
        resume_key = auth.scram_resume_key(self._credentials.stored_key, transcript)
        self._credentials = None
        return self._welcome({"signature": _b64(signature)}, transcript, resume_key, now)

    def _welcome(self, proof: dict[str, Any], transcript: bytes, resume_key: bytes | None,
                 now: float) -> list[Event]:
        """Master: the worker is authenticated: resume the session it named, or open a new
        one, and send ``welcome``."""
        session = self.session
        if self._resume_request is not None:
            target = self._checked_resume_target(transcript)
            welcome = {**proof, "version": session.version, "session": target.session_id,
                       **target.welcome_fields(), "resumed": {"last_seq": target.stream.recv_seq}}
            self.send_handshake("welcome", welcome, now)
            return session.hand_over(self, target, self._resume_request[1], now)
        features = session.supported_features & self._hello_features
        if proof.get("auth") == auth.CLIENT_CERTIFICATE and "resume" in features:
            resume_key = auth.new_resume_key()
            proof = {**proof, "resume_key": _b64(resume_key)}
        session_id = auth.new_nonce()
        window = self.limits.resume_window if "resume" in features else 0.0
        welcome = {**proof, "version": session.version, "session": session_id,
                   "heartbeat_interval": session.heartbeat_interval,
                   "heartbeat_timeout": session.heartbeat_timeout,
                   "max_frame_size": session.frame_limit}
        if features:
            welcome["features"] = sorted(features)
        if window:
            welcome["resume_window"] = window
        self.send_handshake("welcome", welcome, now)
        return session.opened(self, now, version=session.version, session_id=session_id,
                              features=features, mechanism=proof.get("auth", auth.SCRAM),
                              frame_limit=session.frame_limit, heartbeats=None,
                              resume_window=window,
                              resume_key=resume_key if "resume" in features else None)

    def _checked_resume_target(self, transcript: bytes) -> Session:
        """The suspended session this link resumes, after checking the worker's proof."""
        session_id, _, proof = self._resume_request
        target = self._resume_target
        if target is None or target.session_id != session_id \
                or target.worker_name != self.session.worker_name or not target.may_be_resumed:
            raise ProtocolError(f"no session {session_id[:12]}... to resume for worker "
                                f"{self.session.worker_name!r} (it expired, or the master "
                                "restarted); log in anew", code=CloseCode.SESSION_EXPIRED)
        if proof is None or not auth.signatures_match(
                auth.resume_proof(target.resume_key, session_id, transcript), proof):
            raise ProtocolError(f"worker {self.session.worker_name!r} failed to prove it holds "
                                "the session it asks to resume",
                                code=CloseCode.AUTHENTICATION_FAILED)
        return target

    # ------------------------------------------------------------------ time
    def next_deadline(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            return self._started_at + self.limits.handshake_timeout
        return min(self._last_sent_at + self.session.heartbeat_interval,
                   self._last_received_at + self.session.heartbeat_timeout)

    def overdue(self, now: float) -> ProtocolError | None:
        """The link's time is up (handshake or heartbeat timeout), or None."""
        # compare against exactly the sums next_deadline() returns, so that a tick at the
        # deadline always acts (``now - a >= b`` can be false when ``now == a + b``)
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            if now >= self._started_at + self.limits.handshake_timeout:
                return ProtocolError(
                    f"handshake not finished within {self.limits.handshake_timeout:g} s",
                    code=CloseCode.HANDSHAKE_TIMEOUT)
            return None
        if now >= self._last_received_at + self.session.heartbeat_timeout:
            return ProtocolError(
                f"no frame from the peer for {now - self._last_received_at:.1f} s "
                f"(heartbeat timeout {self.session.heartbeat_timeout:g} s)",
                code=CloseCode.HEARTBEAT_TIMEOUT)
        return None

    def ping_due(self, now: float) -> bool:
        return (self.state is State.OPEN
                and now >= self._last_sent_at + self.session.heartbeat_interval)

    def restart_clock(self, now: float) -> None:
        self._started_at = self._last_received_at = self._last_sent_at = now


def b64(text: Any, where: str) -> bytes:
    """Bytes of a base64 handshake field; ProtocolError (``bad_message``) if invalid."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ProtocolError(f"{where} is not valid base64", code=CloseCode.BAD_MESSAGE) from e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def shorten(text: str, limit: int = 512) -> str:
    """Bound text that may echo peer input, so replies and logs stay small."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _feature_names(value: Any) -> frozenset[str]:
    """The feature names in a hello/welcome ``features`` list (non-strings ignored)."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(item for item in value[:32] if isinstance(item, str) and len(item) <= 64)


def _resume_request(value: dict[str, Any]) -> tuple[str, int, bytes | None]:
    """``hello.resume`` as (session id, last seq, certificate-login proof or None)."""
    session_id, last_seq = value.get("session"), value.get("last_seq")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_NONCE_CHARS \
            or not _is_seq(last_seq):
        raise ProtocolError("hello.resume must be {session: id, last_seq: n[, proof]}",
                            code=CloseCode.BAD_MESSAGE)
    proof = value.get("proof")
    return session_id, last_seq, None if proof is None else b64(proof, "hello.resume.proof")
