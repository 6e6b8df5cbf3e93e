"""WebSocket (autobahn, Twisted flavour): one msg frame is one binary WebSocket message.

For networks where only HTTP(S) gets through: the master listens on an HTTP path
(``/msg`` by default) that a reverse proxy can route, and the worker can reach it
through an HTTP proxy with ``CONNECT`` (buildbot-worker's ``proxy_connection_string``).

Limits: autobahn checks ``maxMessagePayloadSize`` / ``maxFramePayloadSize`` at every
frame header (against the running total of the message) and while inflating a
compressed message, so a too-large message is refused before its payload is
buffered.  The values are instance attributes read at each check, so they are
refreshed from the receiver at the start of every message: the limit grows after
authentication without any extra check of our own.  A refusal goes through autobahn's
``_max_message_size_exceeded`` hook, where the receiver hears ``frame_rejected`` first
(and its session's last frames go out ahead of the WebSocket close).  autobahn applies
the same attribute to *outgoing* messages, which the session bounds itself, so it is
lifted while sending.  Text messages are refused with close code 1003.
See docs/transports/websocket.rst.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer
from autobahn.websocket.compress import PerMessageDeflateOfferAccept
from autobahn.websocket.compress import PerMessageDeflateResponse
from autobahn.websocket.compress import PerMessageDeflateResponseAccept
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ISSLTransport
from twisted.python import log

from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.reach.endpoints import client_endpoint  # noqa: F401 - backend API
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import peer_address
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import option
from buildbot_worker_msgproto.transports.stream import FactoryWrapper
from buildbot_worker_msgproto.transports.stream import PortListening
from buildbot_worker_msgproto.transports.stream import TlsStreamMasterOptions
from buildbot_worker_msgproto.transports.stream import WritabilityReporter
from buildbot_worker_msgproto.transports.stream import server_endpoint
from buildbot_worker_msgproto.transports.stream import stream_guarantees
from buildbot_worker_msgproto.transports.stream import tune_tcp

NAME = "websocket"

DEFAULT_PATH = "/msg"
#: Seconds between WebSocket pings (0: none).  Keeps idle intermediaries (HTTP proxies,
#: load balancers, often 60 s idle timeouts) from dropping the connection.
DEFAULT_AUTO_PING_INTERVAL = 20.0
#: Seconds to wait for the pong before dropping the connection (0: wait forever).
DEFAULT_AUTO_PING_TIMEOUT = 20.0
#: Largest HTTP opening handshake accepted (autobahn itself sets no bound).
MAX_HANDSHAKE_SIZE = 64 * 1024

PLAIN = stream_guarantees(None)
ENCRYPTED = dataclasses.replace(PLAIN, encrypted=True)

TEXT_REFUSED = "msgproto refuses text WebSocket messages: send each frame as a binary message"
_CONNECTING = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)


# ---------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class WebSocketSettings(TransportOptions):
    """The WebSocket settings of both sides: the worker's options, and the master's with
    its port (:class:`WebSocketMasterOptions`)."""

    label = "websocket"

    path: str = option(
        DEFAULT_PATH,
        doc="The URL path of the master's WebSocket (an absolute path, no query): the "
            "master accepts upgrades there only (any other path gets ``404 Not Found``, a "
            "request without ``Upgrade: websocket`` ``426``); the worker's must match it.")
    compression: bool = option(
        False,
        doc="Offer (worker) or accept (master) permessage-deflate (RFC 7692); used only when "
            "both sides enable it, see `Compression`_.")
    auto_ping_interval: float = option(
        DEFAULT_AUTO_PING_INTERVAL, minimum=0, unit="seconds",
        doc="Seconds between WebSocket pings to the peer; ``0`` sends none.")
    auto_ping_timeout: float = option(
        DEFAULT_AUTO_PING_TIMEOUT, minimum=0, unit="seconds",
        doc="Seconds to wait for the pong before dropping the connection; ``0`` waits "
            "forever.")

    def check(self) -> None:
        super().check()
        if not self.path.startswith("/") or re.search(r"[\s?#]", self.path):
            raise self.error("path", f"must be an absolute URL path like '/msg', "
                                     f"got {self.path!r}")


@dataclasses.dataclass(frozen=True)
class WebSocketMasterOptions(WebSocketSettings, TlsStreamMasterOptions):
    """The master's WebSocket port: a stream port with the WebSocket settings."""

    label = "websocket"


MasterOptions = WebSocketMasterOptions
WorkerOptions = WebSocketSettings


#: Seconds a closing WebSocket waits for the peer's close frame before dropping TCP.
CLOSE_HANDSHAKE_TIMEOUT = 10.0


def _protocol_options(settings: WebSocketSettings) -> dict[str, Any]:
    """autobahn options common to both sides."""
    limit = DEFAULT_LIMITS.max_handshake_frame_size  # refreshed per message, see module doc
    return {"autoPingInterval": settings.auto_ping_interval,
            "autoPingTimeout": settings.auto_ping_timeout,
            "maxMessagePayloadSize": limit, "maxFramePayloadSize": limit,
            "autoFragmentSize": 0,  # one frame per message, never split
            # Close with a close frame (after the session's last frames), not by a TCP
            # reset that would discard them; the close handshake is bounded, but long
            # enough for those frames to get out over a slow or busy link (autobahn's
            # default of 1 s dropped the last megabytes of a busy connection).
            "failByDrop": False,
            "closeHandshakeTimeout": CLOSE_HANDSHAKE_TIMEOUT,
            "tcpNoDelay": True}


# ---------------------------------------------------------------------- the transport
class WebSocketFrameTransport(FrameTransport):
    """The :class:`FrameTransport` of one open WebSocket connection.

    A separate object, not a mixin: autobahn protocols own a ``peer`` attribute.
    """

    transport_name = NAME

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.guarantees = ENCRYPTED if ISSLTransport.providedBy(protocol.transport) else PLAIN

    @property
    def transport(self) -> Any:
        """The stream under the WebSocket (a TLS one can show a client certificate)."""
        return self.protocol.transport

    def send_frames(self, frames: list[bytes]) -> None:
        protocol = self.protocol
        if protocol.state != WebSocketProtocol.STATE_OPEN:
            return
        # autobahn also checks outgoing messages against maxMessagePayloadSize, which
        # holds our *incoming* limit: the session bounds what it sends by itself.
        saved, protocol.maxMessagePayloadSize = protocol.maxMessagePayloadSize, 0
        try:
            for frame in frames:
                protocol.sendMessage(frame, isBinary=True)
        finally:
            protocol.maxMessagePayloadSize = saved

    def close(self) -> None:
        protocol = self.protocol
        if protocol.state == WebSocketProtocol.STATE_OPEN:
            protocol.sendClose(code=WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL)

    def abort(self) -> None:
        protocol = self.protocol
        if protocol.state != WebSocketProtocol.STATE_CLOSED:
            protocol.wasClean = False
            protocol.wasNotCleanReason = "aborted"
            protocol.dropConnection(abort=True)
        elif protocol.transport is not None:
            # already closing at the WebSocket level, but the TCP connection still flushes
            abort = getattr(protocol.transport, "abortConnection", None)
            (abort or protocol.transport.loseConnection)()

    def peer(self) -> str:
        return peer_address(self.protocol.transport)


def _stream_transport(transport: Any) -> Any:
    """The innermost stream transport: the TCP connection under TLS (which passes itself
    off as an ITCPTransport, so the interface cannot tell them apart)."""
    while getattr(transport, "transport", None) is not None:
        transport = transport.transport
    return transport


class _FrameProtocol:
    """What the server and client protocols share (mixed in ahead of autobahn's)."""

    receiver: FrameReceiver | None = None
    frames: WebSocketFrameTransport | None = None
    _reporting_on: Any = None
    _receiving = True
    _local_reason: str | None = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        tune_tcp(self.transport)  # autobahn's tcpNoDelay misses TCP under TLS

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.state in _CONNECTING and len(self.data) + len(data) > MAX_HANDSHAKE_SIZE \
                and (self.data + data).find(b"\r\n\r\n", 0, MAX_HANDSHAKE_SIZE) < 0:
            log.msg(f"msgproto: websocket opening handshake from {self.transport.getPeer()} "
                    f"exceeds {MAX_HANDSHAKE_SIZE} bytes; dropping the connection")
            self.data = b""
            self.dropConnection(abort=True)
            return
        super().dataReceived(data)

    def onOpen(self) -> None:  # noqa: N802 - autobahn's name
        # The receiver (a session driver) exists only for opened WebSockets: a failed
        # HTTP handshake never starts a session.
        self.receiver = self.factory.new_receiver()
        self.frames = WebSocketFrameTransport(self)
        # Report backpressure from the transport that buffers the bytes: TCP, also under
        # TLS, whose loseConnection() would otherwise wait forever for this producer to
        # go away (autobahn never registers a producer itself).
        self._reporting_on = _stream_transport(self.transport)
        self._reporting_on.registerProducer(WritabilityReporter(self.receiver), True)
        self.receiver.transport_opened(self.frames)

    def dropConnection(self, abort: bool = False) -> None:  # noqa: N802 - autobahn's name
        # Every close autobahn makes goes through here: unregister first, or a transport
        # whose producer is paused skips the disconnect once its buffer drains.
        reporting_on, self._reporting_on = self._reporting_on, None
        if reporting_on is not None:
            reporting_on.unregisterProducer()
        super().dropConnection(abort)

    def onMessageBegin(self, isBinary: bool) -> None:  # noqa: N802,N803
        super().onMessageBegin(isBinary)
        if not isBinary:
            self._receiving = False
            self._local_reason = TEXT_REFUSED
            log.msg(f"msgproto: {TEXT_REFUSED} (from {self.frames.peer()})")
            self._fail_connection(WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA,
                                  TEXT_REFUSED)
            return
        # autobahn checks these at each frame header of this message and while
        # inflating it, before buffering the payload.
        limit = self.receiver.max_incoming_frame_size()
        self.maxMessagePayloadSize = limit
        self.maxFramePayloadSize = limit

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int,
                                   reason: str) -> None:
        # autobahn's hook for a message over maxMessagePayloadSize.  Tell the receiver
        # first, so that the session's error and close frames go out ahead of the
        # WebSocket close (failByDrop=False closes gracefully after them).
        if self._receiving and self.receiver is not None:
            self._receiving = False
            self.receiver.frame_rejected(max(msg_size, max_msg_size + 1))
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802,N803
        if self._receiving and isBinary:
            self.receiver.frame_received(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:  # noqa: N802,N803
        if self.closeHandshakeTimeoutCall is not None:  # autobahn leaves it pending
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        receiver, self.receiver = self.receiver, None
        self._receiving = False
        if receiver is None:  # never opened
            return
        if self._local_reason:
            text = self._local_reason
        elif wasClean:
            who = "we" if self.closedByMe else "peer"
            text = f"WebSocket closed by {who} (code {code}{': ' + reason if reason else ''})"
        else:
            text = str(reason)
        receiver.transport_closed(text)


class MsgServerProtocol(_FrameProtocol, WebSocketServerProtocol):
    """Master side: accepts WebSocket upgrades on the configured path only."""

    def onConnect(self, request: Any) -> Any:  # noqa: N802 - autobahn's name
        if request.path != self.factory.path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND,
                                 f"no msgproto WebSocket at {request.path!r}")
        return None


class MsgClientProtocol(_FrameProtocol, WebSocketClientProtocol):
    """Worker side."""


class MsgServerFactory(WebSocketServerFactory):
    protocol = MsgServerProtocol
    noisy = False

    def __init__(self, settings: WebSocketSettings, new_receiver: ReceiverFactory,
                 reactor: Any) -> None:
        super().__init__(server=None, reactor=reactor)
        self.path = settings.path
        self.new_receiver = new_receiver
        accept = None
        if settings.compression:
            def accept(offers: list[Any]) -> Any:
                for offer in offers:
                    if isinstance(offer, PerMessageDeflateOffer):
                        return PerMessageDeflateOfferAccept(offer)
                return None
        self.setProtocolOptions(webStatus=False, perMessageCompressionAccept=accept,
                                **_protocol_options(settings))


class MsgClientFactory(WebSocketClientFactory):
    protocol = MsgClientProtocol
    noisy = False

    def __init__(self, url: str, settings: WebSocketSettings, new_receiver: ReceiverFactory,
                 reactor: Any) -> None:
        super().__init__(url, useragent="buildbot-msgproto", reactor=reactor)
        self.new_receiver = new_receiver
        compression: dict[str, Any] = {}
        if settings.compression:
            def accept(response: Any) -> Any:
                if isinstance(response, PerMessageDeflateResponse):
                    return PerMessageDeflateResponseAccept(response)
                return None
            compression = {"perMessageCompressionOffers": [PerMessageDeflateOffer()],
                           "perMessageCompressionAccept": accept}
        self.setProtocolOptions(**compression, **_protocol_options(settings))


# ---------------------------------------------------------------------- master / worker
class WebSocketListening(PortListening):
    def __init__(self, port: Any, path: str, secure: bool) -> None:
        super().__init__(NAME, port)
        self.path = path
        self.scheme = "wss" if secure else "ws"

    def address(self) -> str:
        host = self.port.getHost()
        return f"{self.scheme}://{host.host}:{host.port}{self.path}"


async def listen(reactor: Any, options: WebSocketMasterOptions | dict[str, Any],
                 new_receiver: ReceiverFactory,
                 wrap_factory: FactoryWrapper | None = None) -> WebSocketListening:
    """Listen for WebSocket upgrades on ``options.port`` at ``options.path``
    (behind ``wrap_factory``, the master's TLS layer, with ``tls``)."""
    options = WebSocketMasterOptions.parse(options)
    endpoint = server_endpoint(reactor, options.port, options.backlog)
    factory: Any = MsgServerFactory(options, new_receiver, reactor)
    if wrap_factory is not None:
        factory = wrap_factory(factory)
    port = await endpoint.listen(factory)
    secure = wrap_factory is not None or (isinstance(options.port, str)
                                          and options.port.startswith(("ssl:", "tls:")))
    return WebSocketListening(port, options.path, secure)


def client_factory(reactor: Any, target: ClientTarget,
                   new_receiver: ReceiverFactory) -> MsgClientFactory:
    """WebSocket sessions to ``target`` over :func:`client_endpoint` (direct, TLS, through
    an HTTP proxy or an SSH tunnel)."""
    settings = WebSocketSettings.parse(target.options)
    return MsgClientFactory(client_url(target, settings.path), settings, new_receiver,
                            reactor)


def client_url(target: ClientTarget, path: str) -> str:
    """The ws:// or wss:// URL for the Host header and request line of ``target``."""
    host, port = target.host, target.port
    if host is None and target.connection_string:  # e.g. tcp:host=master:port=9990
        found = dict(re.findall(r"(?:^|:)(host|port)=((?:\\.|[^:\\])*)",
                                target.connection_string))
        host = found.get("host", "").replace("\\", "") or None
        port = int(found["port"]) if found.get("port", "").isdigit() else None
    # ``target.tls`` (CA file, pin, client certificate) implies TLS, as in client_endpoint
    secure = (target.use_tls or target.tls is not None
              or (target.connection_string or "").startswith(("tls:", "ssl:")))
    host = host or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'wss' if secure else 'ws'}://{host}{f':{port}' if port else ''}{path}"
