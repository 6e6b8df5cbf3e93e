"""The local forward of an SSH tunnel, for transports that open their own sockets (zmq).

:class:`LocalForward` listens on 127.0.0.1 (a free port) and splices every accepted
connection into a new channel of an :class:`~.ssh.SSHTunnelEndpoint`.  A client endpoint
that connects through it holds it open (:meth:`LocalForward.acquire`) while a session
uses it and lets it go (:meth:`LocalForward.release`) when the session ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import protocol
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_worker_msgproto.reach.ssh import SSHTunnelEndpoint
from buildbot_worker_msgproto.transports.base import OneProtocolFactory


class _Splice(protocol.Protocol):
    """One side of a local connection spliced to a tunnel channel (both directions)."""

    def __init__(self) -> None:
        self.other: _Splice | None = None
        self.pending: list[bytes] = []
        self.lost = False

    def _pair(self) -> None:
        other = self.other
        self.transport.registerProducer(other.transport, True)
        other.transport.registerProducer(self.transport, True)
        for side in (self, other):
            data, side.pending = side.pending, []
            if data:
                side.other.transport.write(b"".join(data))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.other is None or self.other.transport is None:
            self.pending.append(data)
        else:
            self.other.transport.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.lost = True
        other = self.other
        if other is not None and other.transport is not None and not other.lost:
            other.transport.unregisterProducer()
            other.transport.loseConnection()


class _LocalSide(_Splice):
    def __init__(self, forward: LocalForward) -> None:
        super().__init__()
        self.forward = forward

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.pauseProducing()  # until the channel is open
        delay = self.forward.next_delay()
        self.forward.reactor.callLater(delay, self._open)

    def _open(self) -> None:
        if self.lost:
            return
        far = _Splice()

        def opened(proto: _Splice) -> None:
            self.forward.succeeded()
            if self.lost:
                proto.transport.loseConnection()
                return
            self.other, proto.other = proto, self
            self._pair()
            self.transport.resumeProducing()

        def failed(reason: Failure) -> None:
            self.forward.failed()
            self.transport.loseConnection()

        d = self.forward.endpoint.connect(OneProtocolFactory(far))
        d.addCallbacks(opened, failed)


class _LocalFactory(protocol.Factory):
    noisy = False

    def __init__(self, forward: LocalForward) -> None:
        self.forward = forward

    def buildProtocol(self, addr: Any) -> _LocalSide:  # noqa: N802
        return _LocalSide(self.forward)


class LocalForward:
    """Listens on 127.0.0.1 (a free port) and splices each accepted connection into a
    channel of ``endpoint`` (for transports that open their own sockets, such as zmq).

    Bound to loopback only, but any local process can connect to it while it listens and
    reach the master through the tunnel as this worker would (it still has to log in to
    the master).  After a failed tunnel, the next connections wait a growing delay (up to
    :attr:`MAX_DELAY` s) so that a client reconnecting by itself does not hammer the SSH
    server.
    """

    MAX_DELAY = 20.0

    def __init__(self, reactor: Any, endpoint: SSHTunnelEndpoint) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.port: Any = None
        self.failures = 0
        self.users = 0

    def start(self) -> int:
        """Listen now (if not yet); returns the local port."""
        if self.port is None:
            self.port = self.reactor.listenTCP(0, _LocalFactory(self), interface="127.0.0.1")
            log.msg(f"SSH tunnel: local forward listening on 127.0.0.1:{self.local_port}")
        return self.local_port

    @property
    def local_port(self) -> int:
        return self.port.getHost().port

    def stop(self) -> defer.Deferred:
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None \
            else defer.succeed(None)

    def acquire(self) -> int:
        """One more user (a session) of the forward; it listens while it has any."""
        self.users += 1
        return self.start()

    def release(self) -> None:
        """A session stopped using the forward; the last one stops it listening."""
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            self.stop()

    def next_delay(self) -> float:
        return 0.0 if not self.failures else min(0.5 * 2 ** (self.failures - 1), self.MAX_DELAY)

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0
