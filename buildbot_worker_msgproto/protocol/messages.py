"""Declarations of every message type: one small spec each, the single source of truth.

The codec validates incoming messages against these specs, the session uses their
``kind``, ``sender`` and ``phase`` to enforce the state machine, and
``docs/schemas/*.json`` are generated from them (``python -m
buildbot_worker_msgproto.protocol.schema``), so code, validation and docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from buildbot_worker_msgproto.protocol.limits import MIN_FRAME_SIZE


class Kind(enum.Enum):
    """How a message relates to other messages."""

    CONTROL = "control"  # session machinery: handshake, heartbeat, ack, close
    REQUEST = "request"  # carries an ``id``; exactly one response or error answers it
    RESPONSE = "response"  # carries ``reply_to``
    NOTIFICATION = "notification"  # one-way, no answer


class Sender(enum.Enum):
    """Which side may send a message."""

    MASTER = "master"
    WORKER = "worker"
    BOTH = "both"


class Phase(enum.Enum):
    """When a message may be sent."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    ANY = "any"


#: JSON type names used by field declarations, with the Python types they accept.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One body field of a message."""

    name: str
    types: tuple[str, ...]
    description: str
    required: bool = True
    minimum: int | None = None

    def accepts(self, value: Any) -> bool:
        """True if ``value`` has one of the declared JSON types."""
        if "any" in self.types:
            return True
        for type_name in self.types:
            python_types = JSON_TYPES[type_name]
            # bool is an int subclass in Python but not a JSON integer.
            if isinstance(value, bool) and type_name != "boolean":
                continue
            if isinstance(value, python_types):
                if self.minimum is not None and type_name in ("integer", "number"):
                    return value >= self.minimum
                return True
        return False


@dataclasses.dataclass(frozen=True)
class MessageSpec:
    """The declaration of one message type."""

    type: str
    kind: Kind
    sender: Sender
    phase: Phase
    description: str
    fields: tuple[Field, ...] = ()

    def may_be_sent_by(self, role: str) -> bool:
        return self.sender is Sender.BOTH or self.sender.value == role


def _f(name: str, types: str, description: str, required: bool = True,
       minimum: int | None = None) -> Field:
    return Field(name, tuple(types.split("|")), description, required, minimum)


# Envelope fields, present on every frame.
ENVELOPE_FIELDS: tuple[Field, ...] = (
    _f("type", "string", "The message type, one of those declared here."),
    _f("seq", "integer", "Per-direction sequence number of this frame, starting at 1.", minimum=1),
    _f("ack", "integer", "Highest sequence number received from the peer (cumulative ack).",
       minimum=0),
)
REQUEST_ID = _f("id", "integer", "Request id, unique per sender and session; echoed in the "
                "answer's reply_to.", minimum=1)
REPLY_TO = _f("reply_to", "integer", "The id of the request this answers.", minimum=1)
#: Optional on any message once the session is open: a binary side frame of exactly this
#: many bytes follows the message's frame and belongs to it (no envelope, no seq).
BLOB = _f("blob", "integer", "Length of the binary side frame that immediately follows "
          "this frame and belongs to this message (only after the handshake, and only if "
          "both sides announced the 'blob' feature).", False, minimum=0)

_COMMAND_ID = _f("command_id", "string|integer", "Id of the remote command, chosen by the master.")
_BLOB = "Base64 (RFC 4648, with padding) of the bytes."

#: What a worker offers in its first message, ``hello`` or ``check``.
_WORKER_OFFER: tuple[Field, ...] = (
    _f("versions", "array", "Protocol versions the worker speaks (integers)."),
    _f("worker", "string", "The worker name, as configured on the master."),
    _f("nonce", "string", "Client nonce: base64 of at least 18 random bytes, "
       "24 to 256 characters (this code: 24 bytes, 32 characters)."),
    _f("software", "object", "Informational: package versions.", False),
    _f("max_frame_size", "integer", "Largest frame the worker accepts; the "
       "session uses the smaller of both sides' values.", False,
       minimum=MIN_FRAME_SIZE),
    _f("features", "array", "Optional features the worker supports "
       "(strings, e.g. 'blob').", False),
    _f("auth", "array", "Authentication mechanisms the worker offers "
       "(strings): 'scram-sha-256' (password proof, the default when absent) "
       "or 'tls-client-cert' (its verified TLS client certificate names it; "
       "no password).", False),
    _f("encryption", "string", "Informational: how the worker's connection "
       "is protected, as the worker sees it (e.g. 'TLS (TLSv1.3, "
       "TLS_AES_256_GCM_SHA384)', 'SSH tunnel (bb@host:22)', 'CURVE', 'none'); "
       "the master shows it next to its own view, which cannot see an SSH "
       "tunnel or the worker's side of a broker.", False),
)

MESSAGES: tuple[MessageSpec, ...] = (
    # --- handshake -------------------------------------------------------------------------
    MessageSpec("hello", Kind.CONTROL, Sender.WORKER, Phase.HANDSHAKE,
                "First message of a session: the worker names itself and offers versions.", (
                    *_WORKER_OFFER,
                    _f("resume", "object", "Resume a suspended session over this new "
                       "connection (only with the 'resume' feature): {session: the session "
                       "id from welcome, last_seq: the last stream seq the worker received, "
                       "proof: base64 resume proof (certificate login only)}.", False),
                )),
    MessageSpec("check", Kind.CONTROL, Sender.WORKER, Phase.HANDSHAKE,
                "Instead of hello, a connection check (check-connection): the handshake "
                "runs as for hello, then the master closes with 'normal' right after "
                "welcome.  It never attaches the worker and leaves the worker's other "
                "sessions alone; a master that does not know 'check' closes with "
                "'unknown_type' before authenticating, so no master attaches a check.",
                _WORKER_OFFER),
    MessageSpec("challenge", Kind.CONTROL, Sender.MASTER, Phase.HANDSHAKE,
                "The master picks a version and sends the SCRAM salt and combined nonce.", (
                    _f("version", "integer", "The chosen protocol version.", minimum=1),
                    _f("salt", "string", "PBKDF2 salt, base64."),
                    _f("iterations", "integer", "PBKDF2-HMAC-SHA256 iterations.", minimum=1),
                    _f("nonce", "string", "Client nonce followed by the master's nonce."),
                )),
    MessageSpec("authenticate", Kind.CONTROL, Sender.WORKER, Phase.HANDSHAKE,
                "The worker proves it knows the password without sending it.", (
                    _f("proof", "string", "SCRAM ClientProof, base64."),
                    _f("resume_proof", "string", "When hello asked to resume: base64 proof "
                       "that the worker holds the session's resume key, bound to this "
                       "handshake's transcript.", False),
                )),
    MessageSpec("welcome", Kind.CONTROL, Sender.MASTER, Phase.HANDSHAKE,
                "The master accepts the worker and proves it knows the password too.", (
                    _f("signature", "string", "SCRAM ServerSignature, base64 (required unless "
                       "'auth' is 'tls-client-cert').", False),
                    _f("auth", "string", "The mechanism that authenticated the worker: "
                       "'scram-sha-256' (the default when absent) or 'tls-client-cert' (sent "
                       "directly after hello, without challenge).", False),
                    _f("version", "integer", "The chosen protocol version (as in challenge; "
                       "the only place it is sent in a certificate login).", False, minimum=1),
                    _f("session", "string", "Session id: names the session in a later "
                       "resume (the resumed session's id when 'resumed' is present)."),
                    _f("heartbeat_interval", "number", "Seconds of silence before a ping."),
                    _f("heartbeat_timeout", "number", "Seconds of silence before the peer is "
                       "declared dead."),
                    _f("max_frame_size", "integer", "Largest frame either side may send.",
                       minimum=MIN_FRAME_SIZE),
                    _f("features", "array", "The optional features both sides use: those of "
                       "hello.features that the master supports too.", False),
                    _f("resume_window", "number", "With the 'resume' feature: seconds the "
                       "master keeps a session whose connection was lost.", False, minimum=0),
                    _f("resume_key", "string", "With 'resume' in a certificate login: the "
                       "session's resume key, base64 (a password login derives it instead).",
                       False),
                    _f("resumed", "object", "The session named in hello.resume continues: "
                       "{last_seq: the last stream seq the master received}.", False),
                )),
    # --- session control -------------------------------------------------------------------
    MessageSpec("close", Kind.CONTROL, Sender.BOTH, Phase.ANY,
                "The sender ends the session; no further message follows.", (
                    _f("code", "string", "Machine-readable reason, e.g. normal, protocol_error, "
                       "authentication_failed, heartbeat_timeout."),
                    _f("reason", "string", "Human-readable explanation for the log."),
                )),
    MessageSpec("ping", Kind.CONTROL, Sender.BOTH, Phase.OPEN,
                "Heartbeat, sent after heartbeat_interval seconds of silence; needs no answer."),
    MessageSpec("ack", Kind.CONTROL, Sender.BOTH, Phase.OPEN,
                "Carries only the envelope's cumulative ack, when there is nothing else to send."),
    # --- answers ---------------------------------------------------------------------------
    MessageSpec("response", Kind.RESPONSE, Sender.BOTH, Phase.OPEN,
                "Successful answer to a request.", (
                    REPLY_TO,
                    _f("result", "any", "The request's result; null if it has none (or if "
                       "it travels in the binary side frame, see blob).", False),
                )),
    MessageSpec("error", Kind.RESPONSE, Sender.BOTH, Phase.OPEN,
                "Failed answer to a request, or (without reply_to) a complaint about a message.", (
                    _f("reply_to", "integer", "The id of the failed request, if any.", False,
                       minimum=1),
                    _f("code", "string", "Machine-readable error: unknown_type, unknown_command, "
                       "failed (bad_message is reserved)."),
                    _f("message", "string", "Human-readable explanation."),
                )),
    # --- master -> worker requests ---------------------------------------------------------
    MessageSpec("print", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Log a message on the worker (also used to probe a connection).", (
                    _f("message", "string", "The text to log."),
                )),
    MessageSpec("get_worker_info", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Ask what the worker is: its info object (worker_commands, version, basedir, "
                "system, environ, ...; docs/commands.rst)."),
    MessageSpec("set_builder_list", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Tell the worker which builders it serves; the result is the list of the names of "
                "every builder it now serves.", (
                    _f("builders", "array", "List of [builder name, builddir] pairs; builddir "
                       "is relative to the worker's basedir (or absolute)."),
                )),
    MessageSpec("start_command", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Start a worker command (shell, uploadFile, ...; docs/commands.rst) for a builder; "
                "answered (null) as soon as the command has started.", (
                    _f("builder", "string", "The builder name."),
                    _COMMAND_ID,
                    _f("command", "string", "The command name, as in buildbot-worker's registry."),
                    _f("args", "object", "The command's arguments, as Buildbot builds them "
                       "(docs/schemas/commands/<command>.json); file writers and readers are "
                       "replaced by true."),
                    _f("push", "boolean", "true: file_data messages with the first bytes of "
                       "the download follow this request (only for downloadFile, and only if "
                       "both sides announced the 'pushed_download' feature); absent or false: "
                       "none do.", False),
                )),
    MessageSpec("interrupt_command", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Interrupt a running command; answered (null) at once, the command then ends with "
                "rc and complete.", (
                    _f("builder", "string", "The builder name."),
                    _COMMAND_ID,
                    _f("why", "string", "The reason, for the log."),
                )),
    MessageSpec("shutdown", Kind.REQUEST, Sender.MASTER, Phase.OPEN,
                "Ask the worker process to shut down: it answers (null), then closes the session "
                "with code shutdown."),
    MessageSpec("keepalive", Kind.REQUEST, Sender.BOTH, Phase.OPEN,
                "Application-level keepalive: proves the other side's event loop is responsive."),
    MessageSpec("file_data", Kind.NOTIFICATION, Sender.MASTER, Phase.OPEN,
                "Download: the next bytes of the master's file, pushed without a read_file "
                "right behind a start_command with push true (docs/commands.rst section 7.5).", (
                    _COMMAND_ID,
                    _f("data", "string", _BLOB + " Absent when the block travels in the "
                       "binary side frame (blob): exactly one of the two.", False),
                    _f("last", "boolean", "true: the master pushes nothing more for this "
                       "command; the worker reads the rest with read_file."),
                    _f("eof", "boolean", "true: the file ended (this block may be empty); "
                       "implies last, and every read_file returns no bytes."),
                )),
    # --- worker -> master ------------------------------------------------------------------
    MessageSpec("update", Kind.NOTIFICATION, Sender.WORKER, Phase.OPEN,
                "Progress of a running command: output, rc, and other status keys.", (
                    _COMMAND_ID,
                    _f("updates", "array", "List of [key, value] items, applied in order "
                       "(docs/commands.rst): stdout, stderr and header values are text, log "
                       "values [logname, text]; text is whole lines, each ending in a "
                       "newline."),
                )),
    MessageSpec("complete", Kind.NOTIFICATION, Sender.WORKER, Phase.OPEN,
                "A command finished; no update for it follows.", (
                    _COMMAND_ID,
                    _f("failure", "object|null", "null (or absent) when the command ran to its "
                       "end, whose rc says whether it succeeded; else {type, message, "
                       "traceback} strings: the command raised, and the step ends in "
                       "EXCEPTION.", False),
                )),
    MessageSpec("write_file", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Upload: a block of a file (or tarball) for the command's writer.", (
                    _COMMAND_ID,
                    _f("data", "string", _BLOB + " Absent when the block travels in the "
                       "binary side frame (blob): exactly one of the two.", False),
                )),
    MessageSpec("utime_file", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Upload: set the uploaded file's access and modification times.", (
                    _COMMAND_ID,
                    _f("access_time", "number", "Seconds since the epoch."),
                    _f("modified_time", "number", "Seconds since the epoch."),
                )),
    MessageSpec("close_writer", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Upload: the file is complete.", (_COMMAND_ID,)),
    MessageSpec("unpack_writer", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Directory upload: unpack the received tarball.", (_COMMAND_ID,)),
    MessageSpec("read_file", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Download: read the next bytes of the master's file; the result is at most length "
                "bytes (base64, or null with a side frame), empty at the end and after it.", (
                    _COMMAND_ID,
                    _f("length", "integer", "Maximum number of bytes to return; 0 returns nothing, "
                       "which reads as the end, so workers ask for at least 1.", minimum=0),
                    _f("window", "integer", "The worker's download window in bytes when it sent "
                       "this read (only with the 'pushed_download' feature): the master pushes "
                       "that much of the session's next download (docs/commands.rst section "
                       "7.5).", False, minimum=0),
                )),
    MessageSpec("close_reader", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "Download: the worker has read all it wants (sent once, also after an error).",
                (_COMMAND_ID,)),
    MessageSpec("request_shutdown", Kind.REQUEST, Sender.WORKER, Phase.OPEN,
                "The worker asks for a graceful shutdown (no new builds, then shutdown)."),
)

REGISTRY: dict[str, MessageSpec] = {spec.type: spec for spec in MESSAGES}


def spec_for(message_type: str) -> MessageSpec | None:
    """The spec of ``message_type``, or None if the type is unknown."""
    return REGISTRY.get(message_type)
