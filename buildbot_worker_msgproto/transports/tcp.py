"""Framed TCP: a 4-byte big-endian length prefix, then one frame.

Works over any Twisted stream endpoint (tcp, tls, unix, ...).  Sets TCP_NODELAY:
PB and Buildbot's msgpack protocol lose about 40 ms per build step to Nagle /
delayed-ACK stalls because neither sets it.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.interfaces import IPushProducer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.basic import Int32StringReceiver
from twisted.python import log
from zope.interface import implementer

from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.endpoints import PortListening
from buildbot_worker_msgproto.transports.endpoints import ReceiverProtocolFactory
from buildbot_worker_msgproto.transports.endpoints import listen_stream
from buildbot_worker_msgproto.transports.endpoints import stream_client_service

NAME = "tcp"

#: The largest frame a 4-byte prefix can describe.
TCP_MAX_FRAME = 2**32 - 1

_PREFIX = struct.Struct("!I")


def set_nodelay(transport: object) -> None:
    """Disable Nagle's algorithm where the transport supports it (TLS wraps TCP, too)."""
    target = transport
    while target is not None:
        if ITCPTransport.providedBy(target):
            try:
                target.setTcpNoDelay(True)
            except Exception as e:  # e.g. a socket type without the option
                log.msg(f"msgproto: could not set TCP_NODELAY: {e}")
            return
        target = getattr(target, "transport", None)


class FramedProtocol(Int32StringReceiver, FrameTransport):
    """A Twisted protocol carrying length-prefixed frames for one :class:`FrameReceiver`."""

    guarantees = TransportGuarantees(ordered=True, reliable=True, max_frame_size=TCP_MAX_FRAME,
                                     encrypted=False)

    def __init__(self, receiver: FrameReceiver, encrypted: bool = False) -> None:
        self.receiver = receiver
        if encrypted:
            self.guarantees = TransportGuarantees(True, True, TCP_MAX_FRAME, True)
        self._closed = False
        self._receiving = True

    # Int32StringReceiver consults MAX_LENGTH at each prefix: follow the session's limit.
    @property
    def MAX_LENGTH(self) -> int:  # noqa: N802 - name fixed by Twisted
        return self.receiver.max_incoming_frame_size()

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        if ISSLTransport.providedBy(self.transport):
            self.guarantees = TransportGuarantees(True, True, TCP_MAX_FRAME, encrypted=True)
        self.transport.registerProducer(WritabilityReporter(self.receiver), True)
        self.receiver.transport_opened(self)

    def stringReceived(self, frame: bytes) -> None:
        if self._receiving:
            self.receiver.frame_received(frame)

    def lengthLimitExceeded(self, length: int) -> None:
        # Never buffer an oversized frame: stop reading, let the receiver say why and close.
        if self._receiving:
            self._receiving = False
            self.transport.pauseProducing()
            self.receiver.frame_rejected(length)

    def connectionLost(self, reason=None) -> None:
        self._closed = True
        self._receiving = False
        if self.transport is not None:
            self.transport.unregisterProducer()
        self.receiver.transport_closed(reason.getErrorMessage() if reason else "closed")

    # FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if self._closed or not frames:
            return
        chunks = []
        for frame in frames:
            chunks.append(_PREFIX.pack(len(frame)))
            chunks.append(frame)
        self.transport.writeSequence(chunks)

    def close(self) -> None:
        # A registered producer would keep TLS from shutting down and make a paused
        # transport resume it instead of finishing the close: unregister first.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self._closed = True
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def peer(self) -> str:
        address = self.transport.getPeer()
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)


@implementer(IPushProducer)
class WritabilityReporter:
    """Registered as a streaming producer: Twisted pauses it when the socket's send
    buffer is full and resumes it once drained; we report that to the receiver."""

    def __init__(self, receiver: FrameReceiver) -> None:
        self.receiver = receiver

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted interface
        self.receiver.writable_changed(False)

    def resumeProducing(self) -> None:  # noqa: N802
        self.receiver.writable_changed(True)

    def stopProducing(self) -> None:  # noqa: N802
        pass


async def listen(reactor: Any, options: dict[str, Any],
                 new_receiver: ReceiverFactory) -> PortListening:
    """Listen for plain framed TCP on ``options['port']`` (int or strport)."""
    return await listen_stream(reactor, NAME, options,
                               ReceiverProtocolFactory(FramedProtocol, new_receiver))


def client_service(reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory,
                   retry_policy: Any = None) -> ClientService:
    """A reconnecting client of plain framed TCP (the negotiated port is in client.py)."""
    return stream_client_service(reactor, target,
                                 ReceiverProtocolFactory(FramedProtocol, new_receiver),
                                 retry_policy)


def validate_options(options: dict[str, Any]) -> None:
    """Check master-side options of a plain framed TCP listener."""
    if "port" not in options:
        raise ValueError("the tcp transport needs a 'port'")
