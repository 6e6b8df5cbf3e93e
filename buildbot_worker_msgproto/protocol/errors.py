"""Exceptions raised by the sans-IO protocol core."""

from __future__ import annotations

from buildbot_worker_msgproto.protocol.codes import CloseCode


class ProtocolError(Exception):
    """The peer broke the protocol: the session must be closed.

    ``code`` is the machine-readable reason sent in the ``close`` message.
    """

    def __init__(self, message: str, code: str = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class FrameTooLarge(ProtocolError):
    """A frame is larger than the negotiated maximum frame size."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes",
                         code=CloseCode.FRAME_TOO_LARGE)
        self.size = size
        self.limit = limit


class LocalProtocolError(Exception):
    """Our own code tried to do something the protocol does not allow (a bug, not the peer)."""
