"""The interface between transports and the session driver."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Protocol


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
    #: :class:`~buildbot_worker_msgproto.transports.tls.TLSSettings`; implies ``use_tls``).
    #: None: the system's trusted CAs and the host name, when ``use_tls``.
    tls: Any = None
    #: Tunnel through this SSH server (an
    #: :class:`~buildbot_worker_msgproto.transports.ssh.SSHSettings`); ``host`` and ``port``
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
        """A printable peer address, for logs."""
        raise NotImplementedError
