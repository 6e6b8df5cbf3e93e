"""Every close code and error code of the protocol, as one enum each.

Codes travel as plain strings (``close.code``, ``error.code``); the enums are ``str``
subclasses, so a member compares equal to its wire text and JSON-encodes as it.  A peer
may send codes we do not know: receivers keep them as plain strings ("closed for another
reason").  docs/protocol.rst section 8 documents each close code; a test keeps the two
in step.
"""

from __future__ import annotations

import enum


class CloseCode(str, enum.Enum):
    """Why a session (or, for ``connection_lost``, only its link) ended."""

    def __str__(self) -> str:  # the wire text, also in f-strings and logs
        return self.value

    # --- orderly
    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    #: Local only: the transport closed without a ``close`` frame.
    CONNECTION_LOST = "connection_lost"
    # --- master glue refusing or ending a worker
    UNKNOWN_WORKER = "unknown_worker"
    DUPLICATE_WORKER = "duplicate_worker"
    INTERNAL_ERROR = "internal_error"
    LOGIN_THROTTLED = "login_throttled"
    CERTIFICATE_REQUIRED = "certificate_required"
    CERTIFICATE_MISMATCH = "certificate_mismatch"
    # --- a peer that broke the protocol
    PROTOCOL_ERROR = "protocol_error"
    BAD_FRAME = "bad_frame"
    BAD_MESSAGE = "bad_message"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_MESSAGE = "unexpected_message"
    BAD_SEQUENCE = "bad_sequence"
    BAD_REPLY = "bad_reply"
    BAD_BLOB = "bad_blob"
    NEGOTIATION_FAILED = "negotiation_failed"
    # --- handshake outcomes
    UNSUPPORTED_VERSION = "unsupported_version"
    AUTHENTICATION_FAILED = "authentication_failed"
    MASTER_NOT_AUTHENTICATED = "master_not_authenticated"
    UNSUPPORTED_AUTH = "unsupported_auth"
    # --- time
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    # --- session resume
    #: The session a worker asked to resume is unknown (expired, or the master restarted).
    SESSION_EXPIRED = "session_expired"
    #: Local only: the session's resume window ran out while its connection was lost.
    RESUME_WINDOW_EXPIRED = "resume_window_expired"
    #: The worker logged in anew (its process restarted): the old session ends.
    SESSION_REPLACED = "session_replaced"
    # --- several masters
    #: Another master owns this worker (its lease is valid): try another master.
    NOT_OWNER = "not_owner"


#: Close codes meaning "this worker cannot log in with these credentials": a worker
#: counts them like PB's failed logins (and stops after ``maxRetries``).
LOGIN_FAILURES = frozenset({
    CloseCode.AUTHENTICATION_FAILED, CloseCode.MASTER_NOT_AUTHENTICATED,
    CloseCode.UNKNOWN_WORKER, CloseCode.CERTIFICATE_MISMATCH,
    CloseCode.CERTIFICATE_REQUIRED, CloseCode.UNSUPPORTED_AUTH,
})

#: Close codes of an orderly end, not worth a log line of their own.
ORDERLY = frozenset({CloseCode.NORMAL, CloseCode.SHUTDOWN})


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` message (a failed request, or a complaint)."""

    def __str__(self) -> str:
        return self.value

    #: The receiver does not know the message type.
    UNKNOWN_TYPE = "unknown_type"
    #: The receiver knows the request type but implements no responder for it.
    UNKNOWN_COMMAND = "unknown_command"
    #: The responder failed; ``message`` says why.
    FAILED = "failed"
