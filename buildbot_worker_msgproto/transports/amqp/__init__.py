"""AMQP 0-9-1 through a RabbitMQ broker, with pika's Twisted adapter.

Topology (docs/transports/amqp.rst has the full story and the broker permissions):

- the master declares a durable direct exchange (``msgproto``) and consumes from its
  own exclusive queue (``msgproto.master``), bound to the exchange under its own name;
- each worker connection declares an exclusive queue named after its AMQP user
  (``msgproto.worker.<user>``), publishes to the exchange, and the master answers
  through the default exchange.

One worker session is one AMQP connection.  Every message carries the session id in
``correlation_id`` and a marker in ``type`` (``open``, ``frame``, ``close``, ``abort``);
worker messages also carry ``user_id``, which the broker validates against the
connection's user, so the master attributes frames to (user, session) and makes one
receiver per worker session when its ``open`` marker arrives, like a ROUTER socket.
The master derives the reply queue from the validated user, never from the message.

Publisher confirms and mandatory publishing on both sides, manual consumer acks: a frame
is delivered, or its sender's transport reports closed.  The broker connection is
re-established by itself on both sides (Twisted's ``ClientService``); sessions do not
survive a broker restart.

The package: :mod:`.options` (the declared options, names, broker permissions), :mod:`.broker` (a
broker connection and the endpoint that opens one), :mod:`.session` (a session's
transport, either side), :mod:`.master` and :mod:`.worker`.
"""

from __future__ import annotations

from buildbot_worker_msgproto.transports.amqp.master import AmqpListening
from buildbot_worker_msgproto.transports.amqp.master import listen
from buildbot_worker_msgproto.transports.amqp.options import BROKER_MAX_MESSAGE
from buildbot_worker_msgproto.transports.amqp.options import DEFAULT_USER
from buildbot_worker_msgproto.transports.amqp.options import AmqpMasterOptions
from buildbot_worker_msgproto.transports.amqp.options import AmqpWorkerOptions
from buildbot_worker_msgproto.transports.amqp.options import Names
from buildbot_worker_msgproto.transports.amqp.options import master_permissions
from buildbot_worker_msgproto.transports.amqp.options import worker_permissions
from buildbot_worker_msgproto.transports.amqp.session import AmqpClientTransport
from buildbot_worker_msgproto.transports.amqp.session import AmqpPeer
from buildbot_worker_msgproto.transports.amqp.worker import AmqpClientEndpoint
from buildbot_worker_msgproto.transports.amqp.worker import client_endpoint
from buildbot_worker_msgproto.transports.amqp.worker import client_factory

NAME = "amqp"
MasterOptions = AmqpMasterOptions
WorkerOptions = AmqpWorkerOptions

__all__ = ["BROKER_MAX_MESSAGE", "DEFAULT_USER", "NAME", "AmqpClientEndpoint",
           "AmqpClientTransport", "AmqpListening", "AmqpMasterOptions", "AmqpPeer",
           "AmqpWorkerOptions", "MasterOptions", "Names", "WorkerOptions", "client_endpoint",
           "client_factory", "listen", "master_permissions", "worker_permissions"]
