"""Framed TCP: a 4-byte big-endian length prefix, then one frame.

Works over any Twisted stream endpoint (tcp, tls, unix, ...).  Sets TCP_NODELAY:
PB and Buildbot's msgpack protocol lose about 40 ms per build step to Nagle /
delayed-ACK stalls because neither sets it.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.protocol import Protocol

from buildbot_worker_msgproto.reach.endpoints import client_endpoint  # noqa: F401 - backend API
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import ReceiverProtocolFactory
from buildbot_worker_msgproto.transports.stream import PortListening
from buildbot_worker_msgproto.transports.stream import StreamFrameTransport
from buildbot_worker_msgproto.transports.stream import StreamMasterOptions
from buildbot_worker_msgproto.transports.stream import listen_stream
from buildbot_worker_msgproto.transports.stream import stream_guarantees

NAME = "tcp"

#: The largest frame a 4-byte prefix can describe.
TCP_MAX_FRAME = 2**32 - 1

_PREFIX = struct.Struct("!I")


class TcpMasterOptions(StreamMasterOptions):
    """A plain framed TCP listener (the master's own is its negotiated port)."""

    label = "tcp"


MasterOptions = TcpMasterOptions
#: No worker options: whatever is given is ignored.
WorkerOptions = None


class FramedProtocol(Protocol, StreamFrameTransport):
    """A Twisted protocol carrying length-prefixed frames for one :class:`FrameReceiver`.

    Received bytes are appended to one buffer and each frame is copied out once, when it
    is complete (Twisted's ``Int32StringReceiver`` copies its whole buffer on every read,
    which for a 256 KiB file block arriving in 64 KiB reads is 2.5 copies of it, and grows
    with the square of the frame size).  A prefix announcing more than the session's
    frame limit stops reading before anything of the frame is buffered.
    """

    guarantees = stream_guarantees(TCP_MAX_FRAME)
    transport_name = NAME

    def __init__(self, receiver: FrameReceiver) -> None:
        self.receiver = receiver
        self._closed = False
        self._receiving = True
        self._buffer = bytearray()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.stream_opened()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        buffer = self._buffer
        buffer += data
        prefix = _PREFIX.size
        while self._receiving and len(buffer) >= prefix:
            (length,) = _PREFIX.unpack_from(buffer)
            if length > self.receiver.max_incoming_frame_size():
                self._reject(length)
                return
            end = prefix + length
            if len(buffer) < end:
                return
            with memoryview(buffer) as view:
                frame = bytes(view[prefix:end])
            del buffer[:end]
            self.receiver.frame_received(frame)

    def _reject(self, length: int) -> None:
        """Never buffer an oversized frame: stop reading, let the receiver say why."""
        self._receiving = False
        self._buffer.clear()
        self.transport.pauseProducing()
        self.receiver.frame_rejected(length)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
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


async def listen(reactor: Any, options: TcpMasterOptions | dict[str, Any],
                 new_receiver: ReceiverFactory) -> PortListening:
    """Listen for plain framed TCP on ``options.port`` (int or strport)."""
    return await listen_stream(reactor, NAME, TcpMasterOptions.parse(options),
                               ReceiverProtocolFactory(FramedProtocol, new_receiver))


def client_factory(reactor: Any, target: ClientTarget,
                   new_receiver: ReceiverFactory) -> ReceiverProtocolFactory:
    """Plain framed TCP sessions over :func:`client_endpoint` (the negotiated port, with
    its PB fallback, is :class:`buildbot_worker_msgproto.client.MsgClientFactory`)."""
    return ReceiverProtocolFactory(FramedProtocol, new_receiver)

