"""One port for PB and msg: the master offers both dialects and hands the connection over.

See ARCHITECTURE.md section 4 and :mod:`buildbot_worker_msgproto.protocol.negotiation`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.spread import pb

from buildbot_msgproto import compat
from buildbot_worker_msgproto.negotiating import NegotiatingProtocol
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.transports.tcp import FramedProtocol


class NegotiatingServerProtocol(NegotiatingProtocol):
    """Sends the dialect offer, reads the choice, then delegates to PB or msg framing."""

    def __init__(self, factory: NegotiatingServerFactory, addr: Any) -> None:
        super().__init__(factory.reactor, factory.negotiation_timeout)
        self.factory = factory
        self.addr = addr

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        self.transport.write(negotiation.encode_offer(self.factory.dialects))

    def timeout_message(self) -> str:
        return f"msgproto: {self.peer()} chose no dialect within {self.timeout:g} s; closing"

    def error_message(self, error: negotiation.NegotiationError) -> str:
        return f"msgproto: bad dialect negotiation from {self.peer()}: {error}"

    def negotiate(self, buffer: bytes) -> tuple[protocol.Protocol, bytes] | None:
        parsed = negotiation.parse_choice(buffer)
        if parsed is None:
            return None
        dialect, consumed = parsed
        if dialect not in self.factory.dialects:
            raise negotiation.NegotiationError(
                f"client chose {dialect!r}, which was not offered")
        if dialect == MSG_DIALECT:
            return FramedProtocol(self.factory.new_driver()), buffer[consumed:]
        # replay the choice: banana selects the dialect itself
        return self.factory.pb_factory.buildProtocol(self.addr), buffer


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
