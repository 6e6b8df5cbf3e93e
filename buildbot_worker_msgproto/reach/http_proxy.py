"""Reaching the master through an HTTP proxy's ``CONNECT`` (``proxy_connection_string``).

Replaces buildbot-worker's ``HTTPTunnelEndpoint``, which never fails when the proxy
refuses (403, 407, 502...), closes early or never answers: its ``connect()`` then waits
forever and the worker neither retries nor logs why.  Here every such case fails
``connect()`` with :class:`ProxyError` and a clear message, so the reconnecting service
logs it and retries with backoff.  The request carries the ``Host`` header HTTP/1.1
requires (RFC 9110, section 9.3.6).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

#: Seconds to wait for the proxy's answer to CONNECT.
DEFAULT_PROXY_TIMEOUT = 30.0
#: Largest proxy answer header accepted (status line and headers).
MAX_PROXY_ANSWER = 16 * 1024


class ProxyError(ConnectionError):
    """The HTTP proxy did not open the tunnel."""


def connect_request(host: str, port: int) -> bytes:
    """The CONNECT request for ``host:port`` (IPv6 literals in brackets)."""
    authority = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else \
        f"{host}:{port}"
    return (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").encode("ascii")


def parse_answer(head: bytes) -> tuple[int, str]:
    """(status code, status line) of the proxy's answer header; ProxyError if malformed."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"the HTTP proxy sent no HTTP answer to CONNECT: {line[:200]!r}")
    return int(parts[1]), line


class _ConnectClient(protocol.Protocol):
    """Sends CONNECT, waits for a 2xx answer, then hands the connection to ``inner``."""

    def __init__(self, endpoint: HTTPConnectEndpoint, factory: protocol.Factory,
                 result: defer.Deferred) -> None:
        self.endpoint = endpoint
        self.wrapped_factory = factory
        self.result = result
        self.inner: Any = None
        self.buffer = b""
        self.timer: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        e = self.endpoint
        self.transport.write(connect_request(e.host, e.port))
        self.timer = e.reactor.callLater(e.timeout, self._fail, ProxyError(
            f"the HTTP proxy did not answer CONNECT to {e.host}:{e.port} within "
            f"{e.timeout:g} s"))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.result.called:
            return
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            if len(self.buffer) > MAX_PROXY_ANSWER:
                self._fail(ProxyError("the HTTP proxy's answer to CONNECT is too long"))
            return
        try:
            status, line = parse_answer(head)
        except ProxyError as e:
            self._fail(e)
            return
        if not 200 <= status < 300:
            e = self.endpoint
            self._fail(ProxyError(f"the HTTP proxy refused CONNECT to {e.host}:{e.port}: "
                                  f"{line}"))
            return
        self._cancel_timer()
        self.buffer = b""
        self.inner = self.wrapped_factory.buildProtocol(self.transport.getPeer())
        if self.inner is None:
            self.transport.loseConnection()
            self.result.errback(ProxyError("the protocol factory refused the connection"))
            return
        self.inner.makeConnection(self.transport)
        self.result.callback(self.inner)
        if rest:
            self.inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.result.called:
            e = self.endpoint
            self.result.errback(ProxyError(
                f"the HTTP proxy closed the connection before opening the tunnel to "
                f"{e.host}:{e.port}"))

    def _fail(self, error: ProxyError) -> None:
        self._cancel_timer()
        if not self.result.called:
            self.result.errback(error)
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """Connects to ``host:port`` through the HTTP proxy that ``proxy_endpoint`` reaches."""

    def __init__(self, reactor: Any, proxy_endpoint: Any, host: str, port: int,
                 timeout: float = DEFAULT_PROXY_TIMEOUT) -> None:
        self.reactor = reactor
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = int(port)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<HTTPConnectEndpoint {self.host}:{self.port} via {self.proxy_endpoint!r}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        client = _ConnectClient(self, factory, result)
        connecting = self.proxy_endpoint.connect(protocol.Factory.forProtocol(lambda: client))

        def failed(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        connecting.addErrback(failed)
        return result
