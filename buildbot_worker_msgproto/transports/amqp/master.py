"""The master's side of the amqp transport: one broker connection, kept up by Twisted's
``ClientService``, consuming the master's queue; a session per worker (user, session id)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pika
from twisted.application.internet import ClientService
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.endpoints import clientFromString
from twisted.internet.endpoints import wrapClientTLS
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_worker_msgproto.reach.tls import load_trust_root
from buildbot_worker_msgproto.transports.amqp.broker import LinkEndpoint
from buildbot_worker_msgproto.transports.amqp.options import AmqpMasterOptions
from buildbot_worker_msgproto.transports.amqp.options import describe
from buildbot_worker_msgproto.transports.amqp.session import AmqpPeer
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import ReceiverProtocolFactory
from buildbot_worker_msgproto.transports.messaging import LinkEnded
from buildbot_worker_msgproto.transports.messaging import Marker
from buildbot_worker_msgproto.transports.messaging import MessageListening

#: How the master retries its broker connection (seconds; the worker uses its own policy).
MASTER_RETRY = backoffPolicy(initialDelay=0.5, maxDelay=10.0)
#: The master queue's arguments: several masters consume it, one at a time.
MASTER_QUEUE_ARGUMENTS = {"x-single-active-consumer": True}
#: Sessions refused by a ``close`` (remembered so that each is told once).
REFUSED_REMEMBERED = 1000


class _LinkProtocol(protocol.Protocol):
    """The master's broker link as a Twisted protocol, for ``ClientService``."""

    def __init__(self, listening: AmqpListening) -> None:
        self.listening = listening

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.listening.link = self.transport

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.listening.link_lost(reason.getErrorMessage())


class AmqpListening(MessageListening):
    """The master's broker connection: consumes its queue, one session per worker
    session; a ``Listening``."""

    def __init__(self, reactor: Any, options: AmqpMasterOptions,
                 new_receiver: ReceiverFactory) -> None:
        super().__init__(new_receiver)
        self.reactor = reactor
        self.names = options.names
        parameters = pika.URLParameters(options.url)
        parameters.heartbeat = options.heartbeat
        parameters.client_properties = {"connection_name": "msgproto master"}
        self.encrypted = urlsplit(options.url).scheme == "amqps"
        self.ca_file = options.ca_file
        self.host = parameters.host
        self.port = parameters.port
        self.vhost = parameters.virtual_host
        self.link: Any = None
        self.stopping = False
        self._refused: dict[str, None] = {}
        self._stopped: defer.Deferred | None = None
        endpoint = LinkEndpoint(reactor, self._broker_endpoint(), parameters,
                                options.prefetch, self._setup, "msgproto: amqp",
                                f"{self.host}:{self.port}")
        self.service = ClientService(endpoint, ReceiverProtocolFactory(_LinkProtocol,
                                                                       lambda: self),
                                     retryPolicy=MASTER_RETRY, clock=reactor)

    def _broker_endpoint(self) -> Any:
        if self.encrypted and self.ca_file:
            # Twisted's client TLS (chain and host name or IP address checked, SNI) with
            # the CAs of ca_file as the only trust roots
            from twisted.internet.ssl import optionsForClientTLS

            options = optionsForClientTLS(self.host, trustRoot=load_trust_root(self.ca_file))
            return wrapClientTLS(options, HostnameEndpoint(self.reactor, self.host, self.port))
        host = self.host.replace(":", r"\:")
        kind = "tls" if self.encrypted else "tcp"
        return clientFromString(self.reactor, f"{kind}:host={host}:port={self.port}")

    async def _setup(self, link: Any, factory: protocol.Factory) -> Any:
        channel = link.channel
        await channel.exchange_declare(exchange=self.names.exchange,
                                       exchange_type="direct", durable=True)
        # Shared by every master on the broker, one of them consuming at a time (RabbitMQ's
        # single active consumer): when it stops or dies, the next master gets the
        # workers' messages at once.  Auto-deleted: it exists while a master listens.
        await channel.queue_declare(queue=self.names.master_queue, exclusive=False,
                                    auto_delete=True, arguments=MASTER_QUEUE_ARGUMENTS)
        await channel.queue_bind(queue=self.names.master_queue, exchange=self.names.exchange,
                                 routing_key=self.names.master_queue)
        link.on_returned = self._returned
        await link.consume(self.names.master_queue, self._message, exclusive=False)
        proto = factory.buildProtocol(None)
        proto.makeConnection(link)
        link.when_lost().addCallback(
            lambda reason: proto.connectionLost(Failure(LinkEnded(reason))))
        log.msg(f"msgproto: amqp: consuming from {self.names.master_queue!r} "
                f"on {self.address()}")
        return proto

    async def start(self) -> AmqpListening:
        self.service.startService()
        try:
            await self.service.whenConnected(failAfterFailures=1)
        except Exception as e:
            log.msg(f"msgproto: amqp: the broker at {self.address()} is not reachable yet "
                    f"({describe(e)}); workers can attach once it is")
        # leave ClientService's state machine first: the caller may stop us at once
        await task.deferLater(self.reactor, 0, lambda: None)
        return self

    # -- the broker's deliveries
    def _message(self, properties: Any, body: bytes) -> None:
        user, sid = properties.user_id, properties.correlation_id
        if not user or not sid:
            return  # not from a msgproto worker: user_id is how we know who sent it
        marker = Marker.parse(properties.type or Marker.FRAME.value)
        if marker is not None:
            self.dispatch(user, sid, marker, body)

    def new_peer(self, user: str, sid: str, meta: Any) -> AmqpPeer:
        return AmqpPeer(self, user, sid)

    def refuse(self, user: str, sid: str) -> None:
        """A frame of a session we do not know (e.g. from before our own reconnect):
        tell that session once that it is over."""
        if sid in self._refused:
            return
        self._refused[sid] = None
        while len(self._refused) > REFUSED_REMEMBERED:
            del self._refused[next(iter(self._refused))]
        properties = pika.BasicProperties(type=Marker.CLOSE.value, correlation_id=sid,
                                          delivery_mode=1)
        self.publish(self.names.worker_queue(user), b"", properties).addErrback(
            lambda _: None)

    def _returned(self, method: Any, properties: Any) -> None:
        prefix = self.names.worker_queue_prefix
        if not method.routing_key.startswith(prefix):
            return
        peer = self.peers.get(method.routing_key[len(prefix):])
        if peer is not None and peer.sid == properties.correlation_id:
            peer.end("the worker's queue is gone (its broker connection closed)")

    def link_lost(self, reason: str) -> None:
        """The broker connection is gone (``ClientService`` connects again)."""
        self.link = None
        if not self.stopping:
            log.msg(f"msgproto: amqp: broker connection lost ({reason}); reconnecting")
        for peer in list(self.peers.values()):
            peer.end(f"broker connection lost: {reason}")

    # -- for the peers
    def publish(self, queue: str, body: bytes, properties: Any) -> defer.Deferred:
        if self.link is None:
            return defer.fail(ConnectionError("not connected to the broker"))
        return self.link.publish("", queue, body, properties)

    # -- Listening
    def stop(self) -> defer.Deferred:
        """Close every session (telling its worker), then the broker connection."""
        if self._stopped is None:
            self.stopping = True
            for peer in list(self.peers.values()):
                if self.link is not None:
                    peer.publish(Marker.CLOSE).addErrback(lambda _: None)
                peer.end("the master stopped listening")
            self._stopped = defer.ensureDeferred(self._stop())
        return self._stopped

    async def _stop(self) -> None:
        await self.service.stopService()
        await task.deferLater(self.reactor, 0, lambda: None)  # the receivers were told

    def address(self) -> str:
        return f"amqp://{self.host}:{self.port}/{self.vhost} queue {self.names.master_queue}"


async def listen(reactor: Any, options: AmqpMasterOptions | dict[str, Any],
                 new_receiver: ReceiverFactory) -> AmqpListening:
    """Connect to the broker and consume the master queue (reconnecting by itself)."""
    return await AmqpListening(reactor, AmqpMasterOptions.parse(options), new_receiver).start()
