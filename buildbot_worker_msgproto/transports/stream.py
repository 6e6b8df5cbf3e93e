"""What the stream transports (framed tcp, amp, websocket) share: listening ports, TCP
options, writability from Twisted's producer API, and a frame transport over a connection.

The worker side of a stream transport is a client endpoint of
:mod:`buildbot_worker_msgproto.reach` (tcp, TLS, HTTP proxy, SSH tunnel).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable

from twisted.internet import protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.interfaces import ITCPTransport
from twisted.python import log
from zope.interface import implementer

from buildbot_worker_msgproto import compat
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.base import peer_address
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import option

#: Listen backlog for stream transports (see buildbot_msgproto.config.DEFAULT_BACKLOG).
DEFAULT_BACKLOG = 4096

#: Wraps a server factory, e.g. in the master's TLS layer with client certificates.
FactoryWrapper = Callable[[protocol.Factory], protocol.Factory]



@dataclasses.dataclass(frozen=True)
class StreamMasterOptions(TransportOptions):
    """The master options of a stream transport's listening port."""

    port: int | str = option(
        required=True, what="int or strport",
        doc="An int or a Twisted server strport, as for ``c['protocols']['msg']['port']``: "
            "``9991`` (all interfaces), ``'tcp:9991:interface=10.0.0.5'``, ``'tcp6:9991'``, "
            "or ``'ssl:9991:privateKey=key.pem:certKey=cert.pem'`` for TLS made by Twisted.  "
            "A string without a colon is taken as ``tcp:PORT``.")
    backlog: int = option(
        DEFAULT_BACKLOG, minimum=1,
        doc="Listen backlog, added to ``tcp:``, ``tcp6:`` and ``ssl:`` strports that do not "
            "set ``backlog=`` themselves (the kernel caps it at ``net.core.somaxconn``).")


@dataclasses.dataclass(frozen=True)
class TlsStreamMasterOptions(StreamMasterOptions):
    """A stream transport's listening port that can sit behind the master's TLS layer."""

    tls: bool = option(
        False, text=False,
        doc="``True``: TLS made by the master from ``c['protocols']['msg']['tls_cert']``, "
            "with client certificates and certificate login as on the negotiated port "
            "(``../security/mtls.rst``); needs an int or ``tcp:`` ``port``.")

    def check(self) -> None:
        super().check()
        port = self.port
        if self.tls and isinstance(port, str) and ":" in port \
                and port.split(":", 1)[0] not in ("tcp", "tcp6"):
            raise ValueError(f"{self.transport} with 'tls': True needs an int or tcp: port "
                             f"(the master adds TLS itself), not {port!r}")


def tune_tcp(transport: object, large_io: bool = False) -> bool:
    """Disable Nagle's algorithm where the transport supports it (TLS wraps TCP, too);
    with ``large_io`` also let the TCP connection read and write
    ``compat.STREAM_IO_BYTES`` per call.  Only for our frame parsers, which copy each
    frame once: PB's banana and autobahn re-slice their buffer per item, so larger reads
    make them slower (a WebSocket upload took 0.18 s instead of 0.12 s).  True if it
    found a TCP connection under ``transport``."""
    target = transport
    while target is not None:
        if ITCPTransport.providedBy(target):
            if large_io:
                compat.enlarge_socket_io(target)
            try:
                target.setTcpNoDelay(True)
            except Exception as e:  # e.g. a socket type without the option
                log.msg(f"msgproto: could not set TCP_NODELAY: {e}")
            return True
        target = getattr(target, "transport", None)
    return False


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


class StreamFrameTransport(FrameTransport):
    """A frame transport that is also the Twisted protocol of its connection (framed tcp,
    AMP): opening, writability, close, abort and the peer's address."""

    receiver: FrameReceiver
    transport: Any
    _closed = False

    def stream_opened(self) -> None:
        """From ``connectionMade``: set TCP_NODELAY, note TLS, report writability, open."""
        self.large_reads = tune_tcp(self.transport, large_io=True)
        if ISSLTransport.providedBy(self.transport):
            self.guarantees = dataclasses.replace(self.guarantees, encrypted=True)
        self.transport.registerProducer(WritabilityReporter(self.receiver), True)
        self.receiver.transport_opened(self)

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
        return peer_address(self.transport)


def stream_guarantees(max_frame_size: int | None) -> TransportGuarantees:
    """Ordered, reliable, failures noticed; encrypted once TLS is seen under it."""
    return TransportGuarantees(ordered=True, reliable=True, max_frame_size=max_frame_size,
                               encrypted=False)


def server_endpoint(reactor: Any, port: int | str, backlog: int | None = None) -> Any:
    """A server endpoint from an int port or a strport, with ``backlog`` if none is set."""
    portstr = f"tcp:{port}" if isinstance(port, int) or ":" not in port else port
    if backlog and portstr.split(":", 1)[0] in ("tcp", "ssl", "tcp6") \
            and "backlog=" not in portstr:
        portstr += f":backlog={backlog}"
    return serverFromString(reactor, portstr)


class PortListening:
    """A :class:`~buildbot_worker_msgproto.transports.base.Listening` for a listening port."""

    def __init__(self, kind: str, port: Any) -> None:
        self.kind = kind
        self.port = port

    def stop(self) -> Any:
        return self.port.stopListening()

    def address(self) -> str:
        host = self.port.getHost()
        return f"{self.kind}:{host.host}:{host.port}"

    @property
    def port_number(self) -> int:
        return self.port.getHost().port


async def listen_stream(reactor: Any, kind: str, options: StreamMasterOptions,
                        factory: protocol.Factory,
                        wrap_factory: FactoryWrapper | None = None) -> PortListening:
    """Listen on ``options.port`` (int or strport) with ``options.backlog``;
    ``wrap_factory`` (the master's TLS layer) wraps ``factory`` if given."""
    endpoint = server_endpoint(reactor, options.port, options.backlog)
    if wrap_factory is not None:
        factory = wrap_factory(factory)
    return PortListening(kind, await endpoint.listen(factory))
