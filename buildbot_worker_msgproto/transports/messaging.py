"""What the message-oriented transports (zmq, amqp) share.

A message link (a ZeroMQ socket, an AMQP broker connection) carries whole messages but
hides connects and disconnects, so these transports mark their messages
(:class:`Marker`): ``open`` starts a session (the worker's first message), ``frame``
carries one frame, ``close`` and ``abort`` end it, in either direction.

Both sides look like Twisted to the code around them.  A session is reported to a
:class:`SessionProtocol` (``makeConnection`` / ``connectionLost``), which tells its
receiver; so on the worker Twisted's ``ClientService`` reconnects zmq and amqp exactly as
it reconnects the stream transports, through each backend's client endpoint, and on the
master :class:`MessageListening` keeps the table of sessions a listener serves.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet import protocol
from twisted.python.failure import Failure

from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import ReceiverProtocolFactory
from buildbot_worker_msgproto.transports.base import TransportGuarantees


class Marker(str, enum.Enum):
    """What a message on a message link is."""

    OPEN = "open"
    FRAME = "frame"
    CLOSE = "close"
    ABORT = "abort"

    @classmethod
    def parse(cls, text: str) -> Marker | None:
        """The marker named ``text``; None for one this code does not know (ignored)."""
        try:
            return cls(text)
        except ValueError:
            return None


class LinkEnded(ConnectionError):
    """Why a session on a message link ended (its text is the reason, as is)."""


class SessionProtocol(protocol.Protocol):
    """The Twisted protocol of one session on a message link: the receiver hears
    ``transport_opened`` from ``makeConnection`` and ``transport_closed`` from
    ``connectionLost``, and frames straight from the transport."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.receiver.transport_opened(self.transport)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.receiver.transport_closed(reason.getErrorMessage())


def session_factory(new_receiver: ReceiverFactory) -> ReceiverProtocolFactory:
    """A factory of :class:`SessionProtocol`, each with a fresh receiver."""
    return ReceiverProtocolFactory(SessionProtocol, new_receiver)


def plain_guarantees(max_frame_size: int | None, encrypted: bool) -> TransportGuarantees:
    """Ordered and reliable, but a vanished peer is found only by the session's
    heartbeats: the link does not say."""
    return TransportGuarantees(ordered=True, reliable=True, max_frame_size=max_frame_size,
                               encrypted=encrypted, detects_disconnect=False)


class MessageTransport(FrameTransport):
    """One session on a message link: the state and checks every such transport has.

    A subclass sends (``send_frames``, ``close``, ``abort``) and releases its link or its
    table entry in :meth:`_finished`; what arrives goes through :meth:`received`.
    """

    #: The other side, in reasons ("closed by the master").
    peer_role = "peer"

    def __init__(self, reactor: Any, guarantees: TransportGuarantees) -> None:
        self.reactor = reactor
        self.guarantees = guarantees
        self.protocol: Any = None
        self.receiver: Any = None
        #: Frames are passed on (False after an oversized one, or once ending).
        self.receiving = True
        #: ``close()`` was called: nothing more is sent.
        self.closing = False
        #: Over: released, and the protocol told (or about to be).
        self.closed = False
        self.writable = True

    def start(self, factory: protocol.Factory) -> Any:
        """Connect a protocol of ``factory`` (a :class:`SessionProtocol`, or the one
        ``ClientService`` wraps around it) to this session; it is returned."""
        proto = factory.buildProtocol(None)
        if proto is None:
            self.abort()
            raise ConnectionRefusedError("the protocol factory refused the session")
        self.protocol = proto
        self.receiver = proto.receiver
        proto.makeConnection(self)
        return proto

    # --- from the link
    def received(self, marker: Marker, body: bytes = b"") -> None:
        """A message of this session (unknown markers are ignored)."""
        if marker is Marker.FRAME:
            self.deliver(body)
        elif marker is Marker.CLOSE:
            self.end(f"closed by the {self.peer_role}")
        elif marker is Marker.ABORT:
            self.end(f"aborted by the {self.peer_role}")

    def deliver(self, frame: bytes) -> None:
        """One received frame: pass it on, or refuse it if it is too large."""
        if not self.receiving or self.receiver is None:
            return
        if len(frame) > self.receiver.max_incoming_frame_size():
            self.receiving = False  # ignore what follows; the receiver closes or aborts
            self.receiver.frame_rejected(len(frame))
            return
        self.receiver.frame_received(frame)

    def set_writable(self, writable: bool) -> None:
        """Report a change of writability to the receiver."""
        if writable != self.writable and not self.closed:
            self.writable = writable
            if self.receiver is not None:
                self.receiver.writable_changed(writable)

    def end(self, reason: str, tell_peer: bool = False) -> None:
        """The session is over: release it (telling the peer if ``tell_peer`` and it can)
        and tell the protocol once that is done, on a later reactor turn."""
        if self.closed:
            return
        self.closed = self.closing = True
        self.receiving = False
        released = self._finished(tell_peer)

        def report(_: Any = None) -> None:
            self.reactor.callLater(0, self._report, reason)

        if released is None:
            report()
        else:
            released.addBoth(report)

    def _report(self, reason: str) -> None:
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(LinkEnded(reason)))

    def _finished(self, tell_peer: bool) -> Any:
        """Release the link or the table entry; may return a Deferred that fires once
        it is released (the protocol hears ``connectionLost`` after that)."""
        raise NotImplementedError

    # --- Twisted's transport face, for ClientService (it stops a service this way)
    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.close()

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.abort()


class MessageListening:
    """The master's sessions on one message link, by slot: a ZeroMQ identity, an AMQP
    user (one session per user: a new one supersedes the old).

    A subclass makes a session (:meth:`new_peer`) and tells the sender of a frame of a
    session it does not know that it is over (:meth:`refuse`).
    """

    def __init__(self, new_receiver: ReceiverFactory) -> None:
        self.factory = session_factory(new_receiver)
        self.peers: dict[Any, Any] = {}

    def dispatch(self, slot: Any, session: Any, marker: Marker, body: bytes = b"",
                 meta: Any = None) -> None:
        """A message from ``slot`` for its ``session``: open one, pass the message to
        it, or refuse a frame of a session that is over or unknown."""
        peer = self.peers.get(slot)
        if peer is not None and peer.session != session:
            if marker is Marker.OPEN:
                peer.end("superseded by a new session of the same peer")
            peer = None
        if peer is not None:
            peer.received(marker, body)
        elif marker is Marker.OPEN:
            peer = self.peers[slot] = self.new_peer(slot, session, meta)
            peer.start(self.factory)
        elif marker is Marker.FRAME:
            self.refuse(slot, session)

    def forget(self, peer: Any) -> None:
        """``peer`` ended: it no longer holds its slot."""
        if self.peers.get(peer.slot) is peer:
            del self.peers[peer.slot]

    def new_peer(self, slot: Any, session: Any, meta: Any) -> Any:
        """A :class:`MessageTransport` for a new session (with ``slot`` and ``session``
        attributes)."""
        raise NotImplementedError

    def refuse(self, slot: Any, session: Any) -> None:
        """Tell the sender of a frame of an unknown session that it is over."""
        raise NotImplementedError
