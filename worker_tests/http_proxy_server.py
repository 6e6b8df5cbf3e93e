"""A minimal HTTP CONNECT proxy on 127.0.0.1, for the proxy tests (in-process, or as a
process of its own: ``python -m worker_tests.http_proxy_server``).

It tunnels to 127.0.0.1 only, counts tunnels and relayed bytes, and can be told to
misbehave the ways real proxies do (``answer``: a fixed answer instead of the tunnel, e.g.
``b"HTTP/1.1 407 Proxy Authentication Required\\r\\n\\r\\n"``; ``b""``: close without
answering; ``None`` with ``silent``: never answer).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


class ConnectProxyServer(protocol.Protocol):
    """A minimal HTTP CONNECT proxy: one tunnel per connection, to 127.0.0.1 only."""

    def __init__(self) -> None:
        self.buffer = b""
        self.peer_protocol: ProxyPipe | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.peer_protocol is not None:
            self.factory.relayed += len(data)
            self.peer_protocol.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.factory.requests.append(head)
        if self.factory.silent:
            return
        if self.factory.answer is not None:
            self.transport.write(self.factory.answer)
            self.transport.loseConnection()
            return
        method, target, _ = head.split(b"\r\n")[0].split(b" ", 2)
        host, _, port = target.decode().rpartition(":")
        if method != b"CONNECT" or host != "127.0.0.1":
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            self.transport.loseConnection()
            return
        self.factory.tunnels.append(target.decode())
        self.transport.pauseProducing()
        d = TCP4ClientEndpoint(reactor, host, int(port)).connect(
            protocol.Factory.forProtocol(lambda: ProxyPipe(self)))

        def connected(pipe: ProxyPipe) -> None:
            self.peer_protocol = pipe
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                self.dataReceived(rest)
            self.transport.resumeProducing()

        def failed(f: Any) -> None:
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            self.transport.loseConnection()

        d.addCallbacks(connected, failed)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.peer_protocol is not None:
            self.peer_protocol.transport.loseConnection()


class ProxyPipe(protocol.Protocol):
    """The proxy's connection to the master, relaying back to the worker."""

    def __init__(self, client: ConnectProxyServer) -> None:
        self.client = client

    def connectionMade(self) -> None:  # noqa: N802
        # relay with backpressure in both directions
        self.transport.registerProducer(self.client.transport, True)
        self.client.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.client.factory.relayed += len(data)
        self.client.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.client.transport.loseConnection()


class ConnectProxyFactory(protocol.Factory):
    protocol = ConnectProxyServer
    noisy = False

    def __init__(self, answer: bytes | None = None, silent: bool = False) -> None:
        self.tunnels: list[str] = []
        self.requests: list[bytes] = []
        self.relayed = 0
        self.answer = answer
        self.silent = silent


def main() -> None:
    """Run the proxy on a free 127.0.0.1 port until killed (for tests that run it as a
    process of its own): prints ``port N`` once it listens."""
    import sys

    from twisted.internet.endpoints import TCP4ServerEndpoint

    def listening(port: Any) -> None:
        print(f"port {port.getHost().port}", flush=True)

    def failed(reason: Any) -> None:
        print(f"cannot listen: {reason.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ConnectProxyFactory()).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
