"""The broker side of the amqp transport: one broker connection with a confirm-mode
channel (pika's Twisted adapter), the publisher confirms of one sender, and the client
endpoint whose connections are such links (Twisted's ``ClientService`` reconnects it)."""

from __future__ import annotations

import contextlib
from typing import Any
from typing import Callable

import pika
from pika import exceptions as pika_exceptions
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import defer
from twisted.internet import protocol
from twisted.python import log

from buildbot_worker_msgproto.transports.amqp.options import CLOSE_TIMEOUT
from buildbot_worker_msgproto.transports.amqp.options import CONNECT_TIMEOUT
from buildbot_worker_msgproto.transports.amqp.options import describe
from buildbot_worker_msgproto.transports.base import OneProtocolFactory

#: Unconfirmed bytes above which a sender reports "not writable", and below which
#: it reports "writable" again; each message counts its body plus MESSAGE_OVERHEAD.
#: Confirms take a round trip to the broker, so this caps a sender at HIGH_WATER per
#: round trip: it is the default transfer window's cap (``max_transfer_window``, 32 MiB)
#: plus room for other messages, so that the session's window, not this mark, sizes
#: transfers to the path (4 MiB held uploads at 40 MiB/s over a 100 ms path).
HIGH_WATER = 36 * 1024 * 1024
LOW_WATER = 9 * 1024 * 1024
MESSAGE_OVERHEAD = 256

#: Sets up a new link (declarations, consuming) and returns the protocol now using it.
LinkSetup = Callable[[Any, protocol.Factory], Any]


class _PikaProtocol(TwistedProtocolConnection):
    """pika's Twisted protocol, remembering why opening failed and when it is lost."""

    def __init__(self, parameters: pika.connection.Parameters, reactor: Any) -> None:
        super().__init__(parameters, custom_reactor=reactor)
        self.open_error: Any = None
        self._lost_waiters: list[defer.Deferred] = []
        self.lost_reason: str | None = None

    def _on_connection_failed(self, connection: Any, error: Any = None) -> None:
        self.open_error = error
        super()._on_connection_failed(connection, error)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        ready = self.ready
        if ready is not None:
            ready.addErrback(lambda _: None)  # the attempt reports it; avoid "unhandled"
        super().connectionLost(reason)
        self.lost_reason = reason.getErrorMessage() if reason is not None else "lost"
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(self.lost_reason)

    def when_lost(self) -> defer.Deferred:
        if self.lost_reason is not None:
            return defer.succeed(self.lost_reason)
        d: defer.Deferred = defer.Deferred()
        self._lost_waiters.append(d)
        return d


class BrokerLink:
    """One broker connection with one channel in confirm mode."""

    def __init__(self, reactor: Any, proto: _PikaProtocol, channel: Any) -> None:
        self.reactor = reactor
        self.proto = proto
        self.channel = channel
        self.on_returned: Callable[[Any, Any], None] | None = None
        channel.add_on_return_callback(self._returned)
        channel.on_closed.addBoth(self._channel_closed)

    def when_lost(self) -> defer.Deferred:
        return self.proto.when_lost()

    @property
    def is_lost(self) -> bool:
        return self.proto.lost_reason is not None

    def _returned(self, message: Any) -> None:
        if self.on_returned is not None:
            self.on_returned(message.method, message.properties)

    def _channel_closed(self, reason: Any) -> None:
        # A channel error (permissions, a vanished exchange...) ends the link as a whole.
        if isinstance(reason, pika_exceptions.ChannelClosedByBroker) and not self.is_lost:
            log.msg(f"msgproto: amqp: the broker closed the channel: {describe(reason)}")
            self.close()

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: Any) -> defer.Deferred:
        try:
            return self.channel.basic_publish(exchange=exchange, routing_key=routing_key,
                                              body=body, properties=properties,
                                              mandatory=True)
        except Exception as e:  # e.g. the channel is closing
            return defer.fail(e)

    async def consume(self, queue: str, on_message: Callable[[Any, bytes], None],
                      exclusive: bool = True) -> None:
        """Consume ``queue`` (``exclusive``: as its only consumer)."""
        queue_object, _tag = await self.channel.basic_consume(queue=queue, auto_ack=False,
                                                              exclusive=exclusive)
        self._drain(queue_object, on_message)

    def _drain(self, queue_object: Any, on_message: Callable[[Any, bytes], None]) -> None:
        # Iterative, so a backlog of deliveries does not grow the stack.
        while True:
            d = queue_object.get()
            if not d.called:
                d.addCallbacks(self._delivered_later, lambda _: None,
                               callbackArgs=(queue_object, on_message))
                return
            box: list[Any] = []
            d.addCallbacks(box.append, lambda _: None)  # an error: the consumer is gone
            if not box or not self._deliver(box[0], on_message):
                return

    def _delivered_later(self, message: Any, queue_object: Any,
                         on_message: Callable[[Any, bytes], None]) -> None:
        if self._deliver(message, on_message):
            self._drain(queue_object, on_message)

    def _deliver(self, message: Any, on_message: Callable[[Any, bytes], None]) -> bool:
        try:
            on_message(message.properties, message.body)
        except Exception:
            log.err(None, "msgproto: amqp: error handling a delivery")
        if self.channel.is_open:
            self.channel.basic_ack(delivery_tag=message.method.delivery_tag)
            return True
        return False

    def close(self) -> defer.Deferred:
        """Close gracefully (pending publishes are flushed); abort if that hangs."""
        if self.is_lost:
            return defer.succeed(self.proto.lost_reason)
        with contextlib.suppress(Exception):  # already closing
            self.proto.close()
        timer = self.reactor.callLater(CLOSE_TIMEOUT, self.abort)
        d = self.when_lost()

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(cancel_timer)

    def abort(self) -> None:
        transport = self.proto.transport
        if transport is not None and not self.is_lost:
            transport.abortConnection()

    def loseConnection(self) -> None:  # noqa: N802 - how ClientService stops a connection
        self.close()


async def open_link(reactor: Any, endpoint: Any, parameters: pika.connection.Parameters,
                     prefetch: int) -> BrokerLink:
    proto = _PikaProtocol(parameters, reactor)
    try:
        await endpoint.connect(OneProtocolFactory(proto))
        try:
            await proto.ready
        except Exception as e:
            raise ConnectionError(describe(proto.open_error or e))
        channel = await proto.channel()
        await channel.confirm_delivery()
        await channel.basic_qos(prefetch_count=prefetch)
        return BrokerLink(reactor, proto, channel)
    except BaseException:
        if proto.transport is not None and proto.lost_reason is None:
            proto.transport.abortConnection()
        raise


class PublishFlow:
    """Unconfirmed publishes of one sender: writability (``on_writable(bool)`` when it
    changes) and "all sent" waiters."""

    def __init__(self, on_writable: Callable[[bool], None]) -> None:
        self.on_writable = on_writable
        self.pending = 0
        self.pending_bytes = 0
        self.writable = True
        self._drained: list[defer.Deferred] = []

    def track(self, d: defer.Deferred, size: int) -> defer.Deferred:
        size += MESSAGE_OVERHEAD
        self.pending += 1
        self.pending_bytes += size
        if self.writable and self.pending_bytes > HIGH_WATER:
            self._set_writable(False)
        d.addBoth(self._settled, size)
        return d

    def _settled(self, result: Any, size: int) -> Any:
        self.pending -= 1
        self.pending_bytes -= size
        if not self.writable and self.pending_bytes <= LOW_WATER:
            self._set_writable(True)
        if self.pending == 0:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)
        return result

    def _set_writable(self, writable: bool) -> None:
        self.writable = writable
        self.on_writable(writable)

    def drained(self) -> defer.Deferred:
        """Fires once every publish so far is confirmed, refused or lost."""
        if self.pending == 0:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._drained.append(d)
        return d


class LinkEndpoint:
    """A client endpoint whose ``connect(factory)`` opens a broker link, has ``setup``
    declare and consume on it and connect a protocol of ``factory``, and fires with that
    protocol; a failed attempt is logged with the reason and closes its link.

    ``endpoint`` is the stream endpoint to the broker (tcp, TLS, an SSH tunnel...).
    """

    def __init__(self, reactor: Any, endpoint: Any, parameters: pika.connection.Parameters,
                 prefetch: int, setup: LinkSetup, label: str, where: str) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.parameters = parameters
        self.prefetch = prefetch
        self.setup = setup
        self.label = label
        self.where = where

    def __repr__(self) -> str:
        return f"<amqp broker {self.where}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        d = defer.ensureDeferred(self._connect(factory))
        d.addTimeout(CONNECT_TIMEOUT, self.reactor)
        return d.addErrback(self._failed)

    async def _connect(self, factory: protocol.Factory) -> Any:
        link = await open_link(self.reactor, self.endpoint, self.parameters, self.prefetch)
        try:
            return await self.setup(link, factory)
        except BaseException:
            await link.close()
            raise

    def _failed(self, failure: Any) -> Any:
        if not failure.check(defer.CancelledError):
            log.msg(f"{self.label}: cannot connect to the broker at {self.where}: "
                    f"{describe(failure.value)}")
        return failure
