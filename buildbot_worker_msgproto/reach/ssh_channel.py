"""One ``direct-tcpip`` channel of an SSH connection, as the transport of a protocol
(flow control both ways), and what a tunnel's failures are called."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer
from twisted.internet import error
from twisted.internet import protocol
from twisted.internet.interfaces import IAddress
from twisted.internet.interfaces import IConsumer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.logger import LogLevel
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

#: Seconds the SSH server may take to answer a channel open (else the SSH connection is
#: presumed dead and dropped).
CHANNEL_OPEN_TIMEOUT = 30.0
#: Our receive window per channel (OpenSSH uses 2 MiB for TCP forwarding).
CHANNEL_WINDOW = 2 * 1024 * 1024
CHANNEL_MAX_PACKET = 32768

#: SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 5.1): what to check.
_OPEN_FAILURES = {
    1: "; the SSH server does not allow it: check AllowTcpForwarding and PermitOpen in "
       "its sshd_config and the options of the key in authorized_keys",
    2: "; the SSH server could not connect there: is the master listening on that host "
       "and port as seen from the SSH server?",
}


def _warnings_only(event: dict[str, Any]) -> None:
    if event.get("log_level", LogLevel.info) >= LogLevel.warn:
        globalLogPublisher(event)


#: conch logs every channel open and close at info level: keep warnings and errors only.
QUIET = Logger(observer=_warnings_only)


class SSHTunnelError(Exception):
    """The SSH tunnel could not be set up (the message says why)."""


class HostKeyRejected(SSHTunnelError):
    """The SSH server's host key is unknown or differs from known_hosts."""


class SSHLoginRefused(SSHTunnelError):
    """The SSH server accepted none of our keys."""


class ChannelRefused(SSHTunnelError):
    """The SSH server refused to open the tunnel to the master (e.g. AllowTcpForwarding)."""


@implementer(IAddress)
@dataclasses.dataclass(frozen=True)
class SSHTunnelAddress:
    """The far end of a tunnel channel: ``host:port`` as the SSH server ``via`` reaches it."""

    host: str
    port: int
    via: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} via ssh {self.via}"


@implementer(IConsumer, IPushProducer)
class TunnelChannel(SSHChannel):
    """One ``direct-tcpip`` channel, exposed to a protocol as its transport (``tunnel``: the
    SSH connection it belongs to, :class:`buildbot_worker_msgproto.reach.ssh._Tunnel`).

    Writes beyond the server's window are buffered and a registered producer is paused
    until the window opens again.  ``pauseProducing`` stops delivering data *and* stops
    widening our window, so the server stops sending.  EOF or close from the server closes
    the connection (there is no half-close); ``connectionLost`` is called exactly once.
    """

    name = b"direct-tcpip"
    _log = QUIET

    def __init__(self, tunnel: Any, factory: protocol.Factory, dest: SSHTunnelAddress,
                 ready: defer.Deferred) -> None:
        super().__init__(localWindow=CHANNEL_WINDOW, localMaxPacket=CHANNEL_MAX_PACKET,
                         conn=tunnel.conn)
        self.tunnel = tunnel
        self.factory = factory
        self.dest = dest
        self.ready: defer.Deferred | None = ready
        self.protocol: protocol.Protocol | None = None
        self.disconnecting = False
        self.reading_paused = False
        self._out = bytearray()
        self._in: list[bytes] = []
        self._producer: Any = None
        self._streaming = False
        self._producer_paused = False
        self._reported = False
        self._released = False
        self._reason: Failure | None = None
        self._timer = tunnel.reactor.callLater(CHANNEL_OPEN_TIMEOUT, self._open_timed_out)

    # -- opening
    def channelOpen(self, specificData: bytes) -> None:  # noqa: N802 - conch's name
        self._cancel_timer()
        ready, self.ready = self.ready, None
        if ready is None or ready.called:  # cancelled meanwhile
            self._close_now()
            return
        try:
            proto = self.factory.buildProtocol(self.dest)
        except Exception:
            self._close_now()
            ready.errback()
            return
        if proto is None:
            self._close_now()
            ready.errback(Failure(error.ConnectionRefusedError("the factory refused")))
            return
        self.protocol = proto
        proto.makeConnection(self)
        ready.callback(proto)

    def openFailed(self, reason: Any) -> None:  # noqa: N802
        self._cancel_timer()
        self._release()
        ready, self.ready = self.ready, None
        if ready is None or ready.called:
            return
        if isinstance(reason, ConchError):
            desc = reason.value.decode("utf-8", "replace") if isinstance(
                reason.value, bytes) else str(reason.value)
            hint = _OPEN_FAILURES.get(reason.data, "")
            ready.errback(ChannelRefused(
                f"the SSH server {self.tunnel.settings.where} refused to open a tunnel to "
                f"{self.dest.host}:{self.dest.port}: {desc or 'refused'} "
                f"(code {reason.data}){hint}"))
        else:
            ready.errback(SSHTunnelError(
                f"the SSH connection to {self.tunnel.settings.where} was lost while opening "
                f"the tunnel to {self.dest.host}:{self.dest.port}"))

    def _open_timed_out(self) -> None:
        self._timer = None
        ready, self.ready = self.ready, None
        if ready is not None and not ready.called:
            ready.errback(SSHTunnelError(
                f"the SSH server {self.tunnel.settings.where} did not answer the request "
                f"for a tunnel to {self.dest.host}:{self.dest.port} within "
                f"{CHANNEL_OPEN_TIMEOUT:g} s; dropping that SSH connection"))
        self.tunnel.drop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- receiving
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.reading_paused or self._in:
            self._in.append(data)
        elif self.protocol is not None and not self._reported:
            self.protocol.dataReceived(data)

    def eofReceived(self) -> None:  # noqa: N802
        # The master closed its side; we have no half-close: finish sending, then close.
        self.loseConnection()

    def closeReceived(self) -> None:  # noqa: N802
        # The server will accept nothing more: drop what is queued and close our side too.
        self._out.clear()
        self._close_now()

    def closed(self) -> None:
        self._cancel_timer()
        self._report_lost(self._reason or self.tunnel.lost_reason
                          or Failure(error.ConnectionDone("tunnel channel closed")))
        self._release()

    # -- sending
    def write(self, data: bytes) -> None:
        if self.disconnecting or self.localClosed or not data:
            return
        self._out += data
        self._flush()

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def addWindowBytes(self, data: int) -> None:  # noqa: N802
        self.remoteWindowLeft += data
        self._flush()

    def _flush(self) -> None:
        sent = 0
        if self.conn is not None and not self.localClosed:
            step = max(1, self.remoteMaxPacket)
            with memoryview(self._out) as view:
                while sent < len(view) and self.remoteWindowLeft > 0:
                    n = min(len(view) - sent, self.remoteWindowLeft, step)
                    self.conn.sendData(self, bytes(view[sent:sent + n]))
                    self.remoteWindowLeft -= n
                    sent += n
        if sent:
            del self._out[:sent]
        if self._out:
            self._pause_producer()
        else:
            if self.disconnecting:
                self._finish_close()
                return
            self._resume_producer()

    def _pause_producer(self) -> None:
        if self._producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_producer(self) -> None:
        if self._producer is None:
            return
        if not self._streaming:
            self._producer.resumeProducing()
        elif self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    # -- ITransport / IConsumer / IPushProducer
    def loseConnection(self) -> None:  # noqa: N802
        if self.disconnecting:
            return
        self.disconnecting = True
        if not self._out:
            self._finish_close()

    def abortConnection(self) -> None:  # noqa: N802
        """Drop the channel now; the protocol hears connectionLost at once."""
        self._out.clear()
        self.disconnecting = True
        self._reason = self._reason or Failure(error.ConnectionAborted())
        self._close_now()
        self.tunnel.reactor.callLater(0, self._report_lost, self._reason)
        self._release()

    def _finish_close(self) -> None:
        if self.conn is not None and not self.localClosed:
            self.conn.sendEOF(self)
        self._close_now()

    def _close_now(self) -> None:
        conn = self.conn
        if conn is not None and not self.localClosed and self in conn.channelsToRemoteChannel:
            conn.sendClose(self)

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        """Nothing to do: the SSH connection's socket has TCP_NODELAY already."""

    def getTcpNoDelay(self) -> bool:  # noqa: N802
        return True

    def getPeer(self) -> SSHTunnelAddress:  # noqa: N802
        return self.dest

    def getHost(self) -> Any:  # noqa: N802
        return self.tunnel.local_address()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer, self._streaming = producer, bool(streaming)
        self._producer_paused = False
        if self._reported:
            producer.stopProducing()
        elif self._out:
            self._pause_producer()
        elif not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None
        self._producer_paused = False

    def pauseProducing(self) -> None:  # noqa: N802
        self.reading_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.reading_paused = False
        while self._in and not self.reading_paused and not self._reported:
            data = self._in.pop(0)
            if self.protocol is not None:
                self.protocol.dataReceived(data)
        if not self.reading_paused and self.conn is not None and not self.localClosed \
                and self in self.conn.channelsToRemoteChannel \
                and self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def stopProducing(self) -> None:  # noqa: N802
        self.loseConnection()

    # -- the end
    def _report_lost(self, reason: Failure) -> None:
        if self._reported:
            return
        self._reported = True
        self._in.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.tunnel.channel_released(self)
