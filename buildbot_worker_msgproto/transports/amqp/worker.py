"""The worker's side of the amqp transport: a client endpoint whose every connection is a
new broker connection carrying one session; Twisted's ``ClientService`` reconnects it."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import pika
from twisted.internet import protocol

from buildbot_worker_msgproto.reach.endpoints import client_endpoint as stream_endpoint
from buildbot_worker_msgproto.transports.amqp import options as amqp_options
from buildbot_worker_msgproto.transports.amqp.broker import LinkEndpoint
from buildbot_worker_msgproto.transports.amqp.options import AmqpWorkerOptions
from buildbot_worker_msgproto.transports.amqp.session import AmqpClientTransport
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.messaging import Marker
from buildbot_worker_msgproto.transports.messaging import session_factory


class AmqpClientEndpoint(LinkEndpoint):
    """``connect(factory)``: a broker connection, the worker's exclusive queue, an
    ``open`` marker; it fires with the session's protocol.  ``target`` host:port is the
    broker's; the connection goes directly, with TLS, or through an SSH tunnel."""

    def __init__(self, reactor: Any, target: ClientTarget) -> None:
        options = AmqpWorkerOptions.parse(target.options)
        self.names = options.names
        self.user = options.user
        self.vhost = options.vhost
        # ``target.tls`` (CA file, pin, client certificate) implies TLS, as in client_endpoint
        self.encrypted = target.use_tls or target.tls is not None
        port = target.port or (amqp_options.DEFAULT_TLS_PORT if self.encrypted
                               else amqp_options.DEFAULT_PORT)
        target = dataclasses.replace(target, port=port, use_tls=self.encrypted)
        broker = target.connection_string or f"{target.host or 'localhost'}:{port}"
        parameters = pika.ConnectionParameters(
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, options.password),
            heartbeat=options.heartbeat,
            client_properties={"connection_name": f"msgproto worker {self.user}"})
        super().__init__(reactor, stream_endpoint(reactor, target), parameters,
                         options.prefetch, self._setup, "msgproto-worker: amqp",
                         f"{broker} vhost {self.vhost}")
        self.broker = broker

    async def _setup(self, link: Any, factory: protocol.Factory) -> Any:
        queue = self.names.worker_queue(self.user)
        await link.channel.queue_declare(queue=queue, exclusive=True, auto_delete=True)
        transport = AmqpClientTransport(link, self.names, self.user, self.broker, self.vhost,
                                        self.encrypted, secrets.token_hex(16))
        await link.consume(queue, transport.on_message)
        await transport.publish(Marker.OPEN)
        return transport.start(factory)


def client_endpoint(reactor: Any, target: ClientTarget) -> AmqpClientEndpoint:
    """The worker's endpoint to the broker at ``target`` host:port.

    ``target.options``: those of
    :class:`~buildbot_worker_msgproto.transports.amqp.options.AmqpWorkerOptions`.
    """
    return AmqpClientEndpoint(reactor, target)


def client_factory(reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory) -> Any:
    """Sessions over :func:`client_endpoint`."""
    return session_factory(new_receiver)
