"""ZeroMQ sockets read through the Twisted reactor (txzmq), and the context that owns them.

Every owner of sockets has a :class:`ZmqContext` of its own: the master's listener (its
ROUTER and, with CURVE, its ZAP handler) and each worker session (its DEALER).  Nothing is
shared between them, so closing one never disturbs another, and each context ends with
its owner (:meth:`ZmqContext.close`).
"""

from __future__ import annotations

from typing import Any

import zmq as pyzmq
from twisted.internet import defer
from twisted.internet import threads
from twisted.python import log
from txzmq import ZmqFactory
from txzmq.connection import ZmqConnection

from buildbot_worker_msgproto.transports.zmq.options import ZmqSocketOptions

#: Messages read per reactor turn before letting other events run.
READ_BATCH = 512
#: Seconds after which sends refused at a high-water mark are retried, in case ZeroMQ's
#: notification that the peer drained was consumed by another call on the socket.
RETRY_BLOCKED = 0.02


class ZmqContext:
    """One ZeroMQ context (one I/O thread) and the sockets made in it."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.factory = ZmqFactory()
        self.factory.reactor = reactor
        # if the reactor stops first: close what is left and terminate (txzmq's way)
        self.factory.registerForShutdown()

    def socket(self, socket_type: int, owner: Any, options: ZmqSocketOptions | None = None,
               identity: bytes | None = None, linger: int | None = None) -> ZmqSocket:
        """A socket reporting to ``owner`` (``message_received`` and ``writable_again``),
        with the high-water marks, ``max_message_size`` and ``linger`` of ``options``
        (None: ZeroMQ's defaults and no linger)."""
        return ZmqSocket(self.factory, socket_type, owner, options, identity, linger)

    def close(self) -> defer.Deferred:
        """Terminate the context once its sockets are closed.  ZeroMQ flushes a closed
        socket for its ``linger`` ms first, and ``zmq_ctx_term`` blocks until then: it
        runs in a thread, the Deferred fires when it returned."""
        factory = self.factory
        if factory.context is None:
            return defer.succeed(None)
        for connection in list(factory.connections):
            connection.shutdown()
        if factory.trigger is not None:
            self.reactor.removeSystemEventTrigger(factory.trigger)
            factory.trigger = None
        context, factory.context = factory.context, None
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), context.term)
        d.addErrback(log.err, "msgproto: zmq: terminating a context failed")
        return d


class ZmqSocket(ZmqConnection):
    """A txzmq socket that hands whole messages to ``owner.message_received`` and calls
    ``owner.writable_again`` after every read pass, to retry sends refused by a full HWM.

    txzmq registers ZeroMQ's notification descriptor with the reactor.  ``ZMQ_FD`` is edge
    triggered and any call on the socket may consume a notification (of a message that
    arrived, or of a peer that drained), so a read pass is scheduled after every send (as
    txzmq does) and, while a send is refused, every ``RETRY_BLOCKED`` seconds.
    """

    def __init__(self, factory: ZmqFactory, socket_type: int, owner: Any,
                 options: ZmqSocketOptions | None, identity: bytes | None = None,
                 linger: int | None = None) -> None:
        self.socketType = socket_type  # noqa: N815 - txzmq's name
        self.owner = owner
        self._scheduled = None
        self._retry = None
        super().__init__(factory, identity=identity)  # no endpoint yet: options first
        sock = self.socket
        if options is not None:
            sock.set(pyzmq.SNDHWM, options.sndhwm)
            sock.set(pyzmq.RCVHWM, options.rcvhwm)
            sock.set(pyzmq.MAXMSGSIZE, options.max_message_size)
        if linger is None:
            linger = options.linger if options is not None else 0
        sock.set(pyzmq.LINGER, linger)

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self._cancel_scheduled()
        for _ in range(READ_BATCH):
            if self.socket is None:
                return
            try:
                parts = self.socket.recv_multipart(pyzmq.NOBLOCK, copy=False)
            except pyzmq.Again:
                break
            log.callWithLogger(self, self.owner.message_received, parts)
        else:
            self.schedule_read()  # more may be waiting: go on after other events
        if self.socket is not None:
            self.owner.writable_again()

    def messageReceived(self, message: Any) -> None:  # noqa: N802 - unused: see doRead
        self.owner.message_received(message)

    def schedule_read(self) -> None:
        if self._scheduled is None and self.factory is not None:
            self._scheduled = self.factory.reactor.callLater(0, self.doRead)

    def _cancel_scheduled(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None

    def send_parts(self, parts: list[bytes]) -> None:
        """Queue one message in ZeroMQ or raise ``ZMQError`` (``EAGAIN``: HWM reached)."""
        try:
            self.socket.send_multipart(parts, pyzmq.NOBLOCK)
        except pyzmq.ZMQError as e:
            if e.errno == pyzmq.EAGAIN:
                # The refused call may have consumed the notification of an arrival, or
                # of a peer that drained.  A read pass at once would spin while the peer
                # stays full; so: read now only if something arrived, retry sends soon.
                if self.socket.get(pyzmq.EVENTS) & pyzmq.POLLIN:
                    self.schedule_read()
                if self._retry is None:
                    self._retry = self.factory.reactor.callLater(RETRY_BLOCKED, self._retried)
            raise
        self.schedule_read()

    def _retried(self) -> None:
        self._retry = None
        self.doRead()

    def close(self, linger: int) -> None:
        """Close the socket; ZeroMQ goes on flushing its queue for ``linger`` ms."""
        self._cancel_scheduled()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.socket is not None:
            self.socket.set(pyzmq.LINGER, linger)
            self.shutdown()
