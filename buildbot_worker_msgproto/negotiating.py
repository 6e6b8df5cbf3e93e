"""Twisted glue shared by both ends of a negotiated port (PB and msg on one port).

The banana dialect exchange itself is sans-IO (:mod:`.protocol.negotiation`); this is the
part both ends run around it: buffer what arrives until the dialect is settled, bounded in
time, then hand the connection (and the bytes that belong to it) to the chosen protocol.
The master's end is ``buildbot_msgproto.negotiation``, the worker's ``client.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.python import log

from buildbot_worker_msgproto.protocol.negotiation import NegotiationError
from buildbot_worker_msgproto.transports.base import peer_address
from buildbot_worker_msgproto.transports.stream import tune_tcp


class NegotiatingProtocol(protocol.Protocol):
    """Buffers bytes until :meth:`negotiate` settles the dialect, then delegates.

    Subclasses implement :meth:`negotiate` and :meth:`timeout_message`; the connection is
    aborted if the dialect is not settled within ``timeout`` seconds, or if ``negotiate``
    raises :class:`NegotiationError`.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.inner: protocol.Protocol | None = None
        self._buffer = b""
        self._timer: Any = None

    # --- for subclasses
    def negotiate(self, buffer: bytes) -> tuple[protocol.Protocol, bytes] | None:
        """Decide from the bytes so far: ``(inner protocol, bytes to replay into it)``, or
        None to wait for more (or after aborting the connection itself)."""
        raise NotImplementedError

    def timeout_message(self) -> str:
        """The log line when the other end settles nothing within ``timeout``."""
        raise NotImplementedError

    def error_message(self, error: NegotiationError) -> str:
        """The log line when the other end's bytes are not a dialect exchange."""
        raise NotImplementedError

    def peer(self) -> str:
        """The other end's address, for logs."""
        return peer_address(self.transport)

    # --- Protocol
    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        tune_tcp(self.transport)
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.msg(self.timeout_message())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        try:
            decided = self.negotiate(self._buffer)
        except NegotiationError as e:
            log.msg(self.error_message(e))
            self._cancel_timer()
            self.transport.abortConnection()
            return
        if decided is None:
            return
        self._cancel_timer()
        inner, rest = decided
        self._buffer = b""
        self.inner = inner
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
