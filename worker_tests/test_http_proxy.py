"""Reaching the master through an HTTP CONNECT proxy: success and every refusal fail fast.

buildbot-worker's own tunnel endpoint waits forever when the proxy refuses; these tests
pin that ours fails ``connect()`` with a clear ProxyError instead (so the worker logs it
and retries), against the in-process proxy of ``http_proxy_server.py`` on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectError
from twisted.trial import unittest

from buildbot_worker_msgproto.reach.endpoints import client_endpoint
from buildbot_worker_msgproto.reach.http_proxy import HTTPConnectEndpoint
from buildbot_worker_msgproto.reach.http_proxy import ProxyError
from buildbot_worker_msgproto.reach.http_proxy import connect_request
from buildbot_worker_msgproto.reach.http_proxy import parse_answer
from buildbot_worker_msgproto.transports.base import ClientTarget
from worker_tests.http_proxy_server import ConnectProxyFactory

TIMEOUT = 10


class Greeter(protocol.Protocol):
    """The 'master': greets on connect, then echoes."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"hello-from-master\n")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)


class Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost.callback(None)


class CountingFactory(protocol.Factory):
    protocol = Collector

    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        self.built += 1
        return super().buildProtocol(addr)


async def _until(predicate, what: str) -> None:
    for _ in range(TIMEOUT * 20):
        if predicate():
            return
        await _sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _sleep(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class HTTPConnectEndpointTests(unittest.TestCase):
    timeout = 30

    async def _start(self, proxy: ConnectProxyFactory) -> None:
        self.master = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Greeter))
        self.proxy = proxy
        self.proxy_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            proxy)
        self.addCleanup(self.master.stopListening)
        self.addCleanup(self.proxy_port.stopListening)

    def endpoint(self, timeout: float = 10.0) -> HTTPConnectEndpoint:
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port.getHost().port)
        return HTTPConnectEndpoint(reactor, proxy, "127.0.0.1", self.master.getHost().port,
                                   timeout=timeout)

    async def _refused(self, proxy: ConnectProxyFactory, match: str,
                       timeout: float = 10.0) -> None:
        await self._start(proxy)
        factory = CountingFactory()
        try:
            await self.endpoint(timeout).connect(factory)
        except ProxyError as e:
            self.assertIn(match, str(e))
        else:
            self.fail("connect() succeeded through a refusing proxy")
        self.assertEqual(factory.built, 0)

    @defer.inlineCallbacks
    def test_tunnel_carries_both_directions(self) -> Any:
        yield defer.ensureDeferred(self._start(ConnectProxyFactory()))
        client = yield self.endpoint().connect(CountingFactory())
        client.transport.write(b"ping\n")
        yield defer.ensureDeferred(_until(lambda: client.data.endswith(b"ping\n"), "the echo"))
        self.assertEqual(client.data, b"hello-from-master\nping\n")
        port = self.master.getHost().port
        self.assertEqual(self.proxy.tunnels, [f"127.0.0.1:{port}"])
        self.assertIn(f"Host: 127.0.0.1:{port}".encode(), self.proxy.requests[0])
        client.transport.loseConnection()
        yield client.lost

    def test_407_fails_with_the_status_line(self) -> Any:
        return defer.ensureDeferred(self._refused(
            ConnectProxyFactory(answer=b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                       b"Proxy-Authenticate: Basic\r\n\r\n"),
            "refused CONNECT to 127.0.0.1:"))

    def test_403_names_the_status(self) -> Any:
        return defer.ensureDeferred(self._refused(
            ConnectProxyFactory(answer=b"HTTP/1.0 403 Forbidden\r\n\r\n"), "403 Forbidden"))

    def test_close_without_answer(self) -> Any:
        return defer.ensureDeferred(self._refused(
            ConnectProxyFactory(answer=b""), "closed the connection before opening the tunnel"))

    def test_silent_proxy_times_out(self) -> Any:
        return defer.ensureDeferred(self._refused(
            ConnectProxyFactory(silent=True), "did not answer CONNECT", timeout=0.5))

    def test_not_http(self) -> Any:
        return defer.ensureDeferred(self._refused(
            ConnectProxyFactory(answer=b"SSH-2.0-OpenSSH\r\n\r\n"), "no HTTP answer"))

    @defer.inlineCallbacks
    def test_unreachable_proxy_fails(self) -> Any:
        yield defer.ensureDeferred(self._start(ConnectProxyFactory()))
        endpoint = self.endpoint()
        yield self.proxy_port.stopListening()
        with self.assertRaises(ConnectError):
            yield endpoint.connect(CountingFactory())


def test_request_and_answer_parsing():
    assert connect_request("master", 9989) == (
        b"CONNECT master:9989 HTTP/1.1\r\nHost: master:9989\r\n\r\n")
    assert connect_request("::1", 9989).startswith(b"CONNECT [::1]:9989 HTTP/1.1\r\n")
    assert parse_answer(b"HTTP/1.1 200 Connection established") == (
        200, "HTTP/1.1 200 Connection established")
    assert parse_answer(b"HTTP/1.0 407 Auth\r\nX: y")[0] == 407


def test_client_endpoint_uses_it():
    target = ClientTarget("master.example.org", 9989,
                          proxy_connection_string="tcp:host=127.0.0.1:port=3128")
    endpoint = client_endpoint(reactor, target)
    assert isinstance(endpoint, HTTPConnectEndpoint)
    assert (endpoint.host, endpoint.port) == ("master.example.org", 9989)
