"""The interface between transports and the session driver, and the glue all share."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Protocol

from twisted.internet import protocol


@dataclasses.dataclass(frozen=True)
class TransportGuarantees:
    """What a transport promises, so the core can adapt instead of assuming TCP."""

    #: Frames arrive in the order they were sent.
    ordered: bool
    #: A frame handed to the transport is delivered unless the connection dies.
    reliable: bool
    #: Largest frame the transport can carry (None: no limit of its own).
    max_frame_size: int | None
    #: Frames are encrypted on the wire.
    encrypted: bool
    #: The transport notices a vanished peer by itself (else only heartbeats do).
    detects_disconnect: bool = True


class FrameReceiver(Protocol):
    """What a transport reports to (implemented by the session driver)."""

    def transport_opened(self, transport: FrameTransport) -> None:
        """The transport is connected and may carry frames."""

    def frame_received(self, frame: bytes) -> None:
        """One whole frame arrived."""

    def frame_rejected(self, size: int) -> None:
        """The peer announced a frame larger than ``max_incoming_frame_size()``."""

    def transport_closed(self, reason: str) -> None:
        """The transport is gone; nothing more will arrive."""

    def max_incoming_frame_size(self) -> int:
        """The largest frame to accept right now (it grows after authentication)."""

    def writable_changed(self, writable: bool) -> None:
        """The transport's send buffer filled up (False) or drained again (True)."""


#: Makes the receiver (a session driver) for one new connection or peer.
ReceiverFactory = Callable[[], FrameReceiver]


@dataclasses.dataclass(frozen=True)
class ClientTarget:
    """Where and how a worker reaches the master, for any transport."""

    host: str | None = None
    port: int | None = None
    #: A Twisted client endpoint string; overrides host and port for stream transports.
    connection_string: str | None = None
    use_tls: bool = False
    #: HTTP proxy endpoint string to tunnel through (stream transports).
    proxy_connection_string: str | None = None
    #: Backend-specific options (e.g. a WebSocket path, an AMQP virtual host).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: How to verify the master's certificate and what to present (a
    #: :class:`~buildbot_worker_msgproto.reach.tls.TLSSettings`; implies ``use_tls``).
    #: None: the system's trusted CAs and the host name, when ``use_tls``.
    tls: Any = None
    #: Tunnel through this SSH server (an
    #: :class:`~buildbot_worker_msgproto.reach.ssh.SSHSettings`); ``host`` and ``port``
    #: are then the master as seen from the SSH server.  None: connect directly.
    ssh: Any = None


class Listening(Protocol):
    """A running master-side listener of one transport."""

    def stop(self) -> Any:
        """Stop accepting new peers (returns a Deferred)."""

    def address(self) -> str:
        """Where it listens, for logs and tests (e.g. ``tcp:127.0.0.1:9990``)."""


class FrameTransport:
    """One connection able to carry frames to a peer (a plain base class, not an ABC,
    so that it mixes into Twisted protocols that have metaclasses, such as AMP)."""

    guarantees: TransportGuarantees
    #: The transport's name in the registry (``tcp``, ``amp``...), for status displays.
    transport_name = "?"
    #: One socket read delivers a whole 256 KiB file block or more (framed TCP and AMP
    #: read ``compat.STREAM_IO_BYTES``): the worker's commands then take whole blocks.
    large_reads = False

    def send_frames(self, frames: list[bytes]) -> None:
        """Queue frames for sending, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Close after the queued frames are sent."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now, discarding anything queued."""
        raise NotImplementedError

    def peer(self) -> str:
        """The peer's address as Buildbot prints one: ``host:port`` (see
        :func:`format_address`), whatever the transport."""
        raise NotImplementedError

    def describe(self) -> str:
        """The peer with whatever else the transport knows of it, for logs (a ZeroMQ
        identity, the CURVE key's name, the AMQP user and session...)."""
        return self.peer()

    def encryption(self) -> str:
        """How the frames are protected on the wire, for people (status displays, the
        connection check): ``TLS (TLSv1.3, TLS_AES_256_GCM_SHA384)``, ``CURVE``, an SSH
        tunnel, ``none``...  By default what the layers under it show."""
        from buildbot_worker_msgproto.security import tls_info

        return tls_info.describe(self, self.guarantees.encrypted)


def format_address(address: Any) -> str:
    """``host:port`` of a Twisted address, as Buildbot's own connections print their peer
    (``get_peer()``); the address as text if it has no host."""
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    return f"{host}:{getattr(address, 'port', 0)}"


def peer_address(transport: Any) -> str:
    """:func:`format_address` of a Twisted transport's peer; ``?`` if it has none (gone)."""
    try:
        return format_address(transport.getPeer())
    except Exception:
        return "?"


class ReceiverProtocolFactory(protocol.Factory):
    """Builds ``protocol_class(receiver)`` with a fresh receiver for each connection."""

    noisy = False

    def __init__(self, protocol_class: Any, new_receiver: ReceiverFactory) -> None:
        self.protocol_class = protocol_class
        self.new_receiver = new_receiver

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.protocol_class(self.new_receiver())


class OneProtocolFactory(protocol.Factory):
    """Hands out one protocol made beforehand (for an endpoint's ``connect()``)."""

    noisy = False

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802 - Twisted's name
        return self.proto
