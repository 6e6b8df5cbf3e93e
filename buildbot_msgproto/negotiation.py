"""One port for PB and msg: the master offers both dialects and hands the connection over.

See ARCHITECTURE.md section 4 and :mod:`buildbot_worker_msgproto.protocol.negotiation`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.python import log
from twisted.spread import pb

from buildbot_msgproto import compat
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.transports.tcp import FramedProtocol
from buildbot_worker_msgproto.transports.tcp import set_nodelay


class NegotiatingServerProtocol(protocol.Protocol):
    """Sends the dialect offer, reads the choice, then delegates to PB or msg framing."""

    def __init__(self, factory: NegotiatingServerFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: protocol.Protocol | None = None
        self._buffer = b""
        self._timer = None

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        self.transport.write(negotiation.encode_offer(self.factory.dialects))
        self._timer = self.factory.reactor.callLater(self.factory.negotiation_timeout,
                                                     self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.msg(f"msgproto: {_peer(self.transport)} chose no dialect within "
                f"{self.factory.negotiation_timeout:g} s; closing")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = negotiation.parse_choice(self._buffer)
            if parsed is not None and parsed[0] not in self.factory.dialects:
                raise negotiation.NegotiationError(
                    f"client chose {parsed[0]!r}, which was not offered")
        except negotiation.NegotiationError as e:
            log.msg(f"msgproto: bad dialect negotiation from {_peer(self.transport)}: {e}")
            self.transport.abortConnection()
            return
        if parsed is None:
            return
        self._cancel_timer()
        dialect, consumed = parsed
        if dialect == MSG_DIALECT:
            inner: protocol.Protocol = FramedProtocol(self.factory.new_driver())
            rest = self._buffer[consumed:]
        else:
            inner = self.factory.pb_factory.buildProtocol(self.addr)
            rest = self._buffer  # replay the choice: banana selects the dialect itself
        self._buffer = b""
        self.inner = inner
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class NegotiatingServerFactory(protocol.Factory):
    """Server factory of a negotiated port; ``new_driver`` makes a master msg session."""

    noisy = False

    def __init__(self, pb_factory: pb.PBServerFactory, new_driver: Any, reactor: Any,
                 negotiation_timeout: float, serve_pb: bool = True) -> None:
        self.pb_factory = pb_factory
        self.new_driver = new_driver
        self.reactor = reactor
        self.negotiation_timeout = negotiation_timeout
        self.dialects = negotiation.MASTER_DIALECTS if serve_pb else (MSG_DIALECT,)
        compat.use_pre_negotiated_broker(pb_factory)

    def buildProtocol(self, addr: Any) -> NegotiatingServerProtocol:
        return NegotiatingServerProtocol(self, addr)


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "?"
