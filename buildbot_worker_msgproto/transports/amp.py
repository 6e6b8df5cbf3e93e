"""Twisted AMP: each frame travels as one or more ``FrameChunk`` boxes.

AMP limits a value to 65,535 bytes, so a frame is split into chunks and joined on
arrival; chunks never need an answer (``requiresAnswer = False``), so AMP adds no
round trips.  The joined size is checked against the session's limit while it
grows, so an oversized frame is refused without being buffered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.protocols import amp

from buildbot_worker_msgproto.reach.endpoints import client_endpoint  # noqa: F401 - backend API
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import ReceiverProtocolFactory
from buildbot_worker_msgproto.transports.stream import FactoryWrapper
from buildbot_worker_msgproto.transports.stream import PortListening
from buildbot_worker_msgproto.transports.stream import StreamFrameTransport
from buildbot_worker_msgproto.transports.stream import TlsStreamMasterOptions
from buildbot_worker_msgproto.transports.stream import listen_stream
from buildbot_worker_msgproto.transports.stream import stream_guarantees

NAME = "amp"
#: Largest chunk of a frame per AMP box (AMP's value limit is 65,535 bytes).
CHUNK = 65_535
#: Bytes a peer may send without completing a box.  Twisted's AMP collects a whole box
#: (any number of keys) before dispatching it; a legitimate FrameChunk box is about one
#: CHUNK, so anything far beyond that is a peer trying to make us buffer.
MAX_UNBOXED_BYTES = 4 * CHUNK


class AmpMasterOptions(TlsStreamMasterOptions):
    """The master's amp port."""

    label = "amp"


MasterOptions = AmpMasterOptions
#: No worker options: whatever is given is ignored.
WorkerOptions = None


class FrameChunk(amp.Command):
    """One piece of a frame; ``final`` marks the last piece."""

    arguments = [(b"data", amp.String()), (b"final", amp.Boolean())]
    requiresAnswer = False


class AmpFrameProtocol(amp.AMP, StreamFrameTransport):
    """An AMP connection carrying frames for one :class:`FrameReceiver`."""

    guarantees = stream_guarantees(None)
    transport_name = NAME

    def __init__(self, receiver: FrameReceiver) -> None:
        super().__init__()
        self.receiver = receiver
        self._parts: list[bytes] = []
        self._size = 0
        self._receiving = True
        self._closed = False
        self._unboxed = 0

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        self.stream_opened()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        # fed to AMP a chunk at a time, so that the boxes each piece completes are counted
        # before the next piece is (a socket read may carry many boxes)
        for start in range(0, len(data), CHUNK):
            if not self._receiving:
                return
            piece = data[start:start + CHUNK]
            self._unboxed += len(piece)
            if self._unboxed > MAX_UNBOXED_BYTES:
                self._refuse(self._unboxed)
                return
            super().dataReceived(piece)

    def ampBoxReceived(self, box: Any) -> None:  # noqa: N802
        self._unboxed = 0
        super().ampBoxReceived(box)

    def _refuse(self, size: int) -> None:
        self._receiving = False
        self._parts = []
        self.transport.pauseProducing()
        self.receiver.frame_rejected(size)

    @FrameChunk.responder
    def frame_chunk(self, data: bytes, final: bool) -> dict:
        if not self._receiving:
            return {}
        self._size += len(data)
        if self._size > self.receiver.max_incoming_frame_size():
            self._refuse(self._size)
            return {}
        self._parts.append(data)
        if final:
            frame = b"".join(self._parts)
            self._parts = []
            self._size = 0
            self.receiver.frame_received(frame)
        return {}

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        self._closed = True
        self._receiving = False
        super().connectionLost(reason)
        self.receiver.transport_closed(reason.getErrorMessage() if reason else "closed")

    # FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        for frame in frames:
            last = max(len(frame) - 1, 0) // CHUNK
            for index in range(last + 1):
                self.callRemote(FrameChunk, data=frame[index * CHUNK:(index + 1) * CHUNK],
                                final=index == last)


async def listen(reactor: Any, options: AmpMasterOptions | dict[str, Any],
                 new_receiver: ReceiverFactory,
                 wrap_factory: FactoryWrapper | None = None) -> PortListening:
    """Listen for AMP frame connections on ``options.port`` (behind ``wrap_factory``,
    the master's TLS layer, with ``tls``)."""
    return await listen_stream(reactor, NAME, AmpMasterOptions.parse(options),
                               ReceiverProtocolFactory(AmpFrameProtocol, new_receiver),
                               wrap_factory)


def client_factory(reactor: Any, target: ClientTarget,
                   new_receiver: ReceiverFactory) -> ReceiverProtocolFactory:
    """AMP frame sessions over :func:`client_endpoint` (host:port, connection string,
    proxy, SSH tunnel, TLS)."""
    return ReceiverProtocolFactory(AmpFrameProtocol, new_receiver)
