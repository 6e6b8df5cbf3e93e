"""The transport conformance suite through a real RabbitMQ broker, plus what only AMQP has:
broker permissions that keep workers apart, master restarts and broker restarts.

The broker comes from master_tests/rabbitmq.py (a private one per pytest session, or
MSGPROTO_AMQP_URL); everything skips if rabbitmq-server is not installed.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika import exceptions as pika_exceptions
from twisted.internet import defer
from twisted.internet import reactor
from twisted.internet import task
from twisted.internet import threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from buildbot_worker_msgproto.transports import amqp
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.amqp.broker import open_link
from buildbot_worker_msgproto.transports.base import ClientTarget
from master_tests import rabbitmq
from master_tests.rabbitmq import amqp_broker  # noqa: F401 - the fixture
from worker_tests.conformance import ConformanceMixin
from worker_tests.conformance import RecordingReceiver
from worker_tests.conformance import _timeout
from worker_tests.conformance import wait_until

WORKER = "w1"


class BrokerConformance(ConformanceMixin):
    """The suite for AMQP through the session's RabbitMQ broker (use the ``amqp_broker``
    fixture); ``ssh_settings()`` puts an SSH tunnel between the worker and the broker."""

    backend = "amqp"
    detects_disconnect = False
    timeout = 120

    def ssh_settings(self) -> Any:
        return None

    def server_options(self) -> dict[str, Any]:
        return rabbitmq.current().master_options()

    def client_target(self, listening: Any, worker: str = WORKER) -> ClientTarget:
        broker = rabbitmq.current()
        return ClientTarget(host=broker.host, port=broker.port,
                            options=broker.worker_options(worker), ssh=self.ssh_settings())


@pytest.mark.usefixtures("amqp_broker")
class AmqpConformance(BrokerConformance, unittest.TestCase):

    def test_guarantees(self) -> Any:
        return self._guarantees()

    @defer.inlineCallbacks
    def _guarantees(self) -> Any:
        client, server = yield self.connect()
        for transport in (client.transport, server.transport):
            self.assertFalse(transport.guarantees.detects_disconnect)
            self.assertTrue(transport.guarantees.ordered)
            self.assertEqual(transport.guarantees.max_frame_size, amqp.BROKER_MAX_MESSAGE)
        broker = rabbitmq.current()
        user = broker.worker_credentials(WORKER)[0]
        # Buildbot's host:port: the worker's AMQP user at the broker
        self.assertEqual(server.transport.peer(), f"{user}@{broker.host}:{broker.port}")
        self.assertIn(f"(amqp user {user}, session ", server.transport.describe())
        self.assertEqual(client.transport.peer(), f"{broker.host}:{broker.port}")

    @defer.inlineCallbacks
    def test_broker_heartbeat_is_negotiated(self) -> Any:
        broker = rabbitmq.current()
        if not broker.controllable:
            raise unittest.SkipTest("needs rabbitmqctl access to the broker")
        yield self.connect()
        out = yield threads.deferToThread(broker.ctl, "list_connections", "-q", "-p",
                                          broker.vhost, "user", "timeout")
        timeouts = dict(line.split() for line in out.splitlines() if line.strip())
        timeouts.pop("user", None)  # the table header
        self.assertEqual(timeouts, {broker.master_user: "10", WORKER: "10"})

    @defer.inlineCallbacks
    def test_master_restart_ends_the_session_and_the_worker_comes_back(self) -> Any:
        client, server = yield self.connect()
        client.transport.send_frames([b"before"])
        yield _timeout(server.wait_frames(1))
        yield self.listening.stop()
        # the stopping master tells its workers at once (no heartbeat wait)
        reason = yield _timeout(client.closed, 10)
        self.assertIn("master", reason)
        self.listening = yield defer.ensureDeferred(
            self.module.listen(reactor, self.server_options(), self._new_server_receiver))
        yield self._new_session_carries(b"after")

    @defer.inlineCallbacks
    def test_vanished_worker_is_noticed_on_the_next_send(self) -> Any:
        """No close marker, the worker's broker connection just drops: its exclusive
        queue goes with it, so the master's next frame comes back unroutable."""
        client, server = yield self.connect()
        client.transport.link.abort()
        yield _timeout(client.closed, 10)
        yield task.deferLater(reactor, 0.2, lambda: None)  # the broker drops the queue
        self.assertFalse(server.closed.called)
        server.transport.send_frames([b"anyone there?"])
        reason = yield _timeout(server.closed, 10)
        self.assertIn("queue is gone", reason)

    @defer.inlineCallbacks
    def test_master_broker_link_drop_ends_the_session_and_the_worker_comes_back(self) -> Any:
        """The master's own broker connection drops (no close markers sent): the master
        reconnects by itself, the worker's old session is refused at its next frame, and
        the worker opens a new one."""
        client, server = yield self.connect()
        old = self.listening.link
        old.abort()
        reason = yield _timeout(server.closed, 10)
        self.assertIn("broker connection lost", reason)
        yield self._poll(lambda: self.listening.link not in (None, old))
        client.transport.send_frames([b"into the void"])
        yield _timeout(client.closed, 10)
        yield self._new_session_carries(b"new session")
        self.assertEqual(server.frames, [])

    @defer.inlineCallbacks
    def test_wrong_password_retries_without_a_session(self) -> Any:
        broker = rabbitmq.current()
        target = ClientTarget(host=broker.host, port=broker.port,
                              options=broker.worker_options(WORKER, password="wrong"))
        attempts: list[int] = []

        def policy(attempt: int) -> float:
            attempts.append(attempt)
            return 0.1

        self.client = registry.client_service(self.backend, reactor, target,
                                              self._new_client_receiver, policy)
        self.client.startService()
        yield self._poll(lambda: len(attempts) >= 2)
        self.assertEqual(self.client_receivers, [])
        self.assertEqual(self.server_receivers, [])
        self.assertEqual(attempts[:2], [1, 2])

    @defer.inlineCallbacks
    def test_workers_cannot_touch_each_others_queues(self) -> Any:
        """w1 runs a session; w2, with the documented permissions, cannot read, bind,
        inject into, or impersonate w1's traffic."""
        broker = rabbitmq.current()
        if not broker.controllable:
            raise unittest.SkipTest("needs the private broker's users and permissions")
        client, server = yield self.connect()
        names = broker.names
        w1_queue = names.worker_queue(WORKER)
        link = yield defer.ensureDeferred(self._raw_link("w2"))
        refused, forged = 403, 406  # ACCESS_REFUSED, PRECONDITION_FAILED
        attempts = {
            "consume w1's queue": (refused, lambda ch: ch.basic_consume(queue=w1_queue)),
            "get from w1's queue": (refused, lambda ch: ch.basic_get(queue=w1_queue)),
            "purge w1's queue": (refused, lambda ch: ch.queue_purge(queue=w1_queue)),
            "delete w1's queue": (refused, lambda ch: ch.queue_delete(queue=w1_queue)),
            "declare w1's queue": (refused, lambda ch: ch.queue_declare(
                queue=w1_queue, auto_delete=True)),
            "declare the master's queue": (refused, lambda ch: ch.queue_declare(
                queue=names.master_queue, auto_delete=True)),
            "consume the master's queue": (refused, lambda ch: ch.basic_consume(
                queue=names.master_queue)),
            "bind its own queue to the exchange": (refused, self._bind_own_queue),
            "publish to w1 through the default exchange": (refused, lambda ch: (
                ch.basic_publish(exchange="", routing_key=w1_queue, body=b"forged",
                                 mandatory=True))),
            "publish as w1 (user_id)": (forged, lambda ch: ch.basic_publish(
                exchange=names.exchange, routing_key=names.master_queue, body=b"forged",
                properties=pika.BasicProperties(user_id=WORKER, correlation_id="x",
                                                type="frame"))),
        }
        try:
            # the control: w2 may use its own queue, so the refusals are about w1's
            channel = yield link.proto.channel()
            own = names.worker_queue("w2")
            yield channel.queue_declare(queue=own, exclusive=True, auto_delete=True)
            yield channel.basic_consume(queue=own)
            for what, (code, attempt) in attempts.items():
                channel = yield link.proto.channel()
                yield channel.confirm_delivery()
                try:
                    yield attempt(channel)
                except pika_exceptions.ChannelClosedByBroker as e:
                    self.assertEqual(e.reply_code, code, f"{what}: {e.reply_text}")
                else:
                    self.fail(f"w2 could {what}")
        finally:
            yield link.close()
        # w1's session is untouched and received nothing forged
        server.transport.send_frames([b"still here"])
        frames = yield _timeout(client.wait_frames(1))
        self.assertEqual(frames, [b"still here"])
        self.assertEqual(server.frames, [])

    @defer.inlineCallbacks
    def _bind_own_queue(self, channel: Any) -> Any:
        # w2 may declare its own queue, but not bind it anywhere to snoop on frames
        broker = rabbitmq.current()
        own = broker.names.worker_queue("w2")
        yield channel.queue_declare(queue=own, exclusive=True, auto_delete=True)
        yield channel.queue_bind(queue=own, exchange=broker.names.exchange,
                                 routing_key=broker.names.master_queue)

    @defer.inlineCallbacks
    def test_broker_restart_both_sides_reconnect(self) -> Any:
        broker = rabbitmq.current()
        if not broker.controllable:
            raise unittest.SkipTest(f"the broker of {rabbitmq.URL_ENV} is not ours to restart")
        self.server_receiver_factory = self.client_receiver_factory = RecordingReceiver
        client, server = yield self.connect()
        yield threads.deferToThread(broker.restart)
        yield _timeout(client.closed, 30)
        yield _timeout(server.closed, 30)
        yield self._new_session_carries(b"after the restart", 60)

    # ------------------------------------------------------------------ helpers
    async def _raw_link(self, user: str) -> Any:
        broker = rabbitmq.current()
        _, password = broker.worker_credentials(user)
        parameters = pika.ConnectionParameters(
            virtual_host=broker.vhost, credentials=pika.PlainCredentials(user, password))
        return await open_link(reactor, TCP4ClientEndpoint(reactor, broker.host, broker.port),
                               parameters, 10)

    @defer.inlineCallbacks
    def _poll(self, predicate: Any, seconds: float = 30) -> Any:
        yield wait_until(predicate, "the broker", seconds)

    @defer.inlineCallbacks
    def _new_session_carries(self, frame: bytes, seconds: float = 30) -> Any:
        """The worker comes back with a second session, which carries ``frame``."""
        yield self._poll(lambda: len(self.client_receivers) >= 2
                         and len(self.server_receivers) >= 2, seconds)
        client2, server2 = self.client_receivers[-1], self.server_receivers[-1]
        yield _timeout(client2.opened)
        client2.transport.send_frames([frame])
        frames = yield _timeout(server2.wait_frames(1))
        self.assertEqual(frames, [frame])


class AmqpOptions(unittest.SynchronousTestCase):
    """Option checking and the permission helpers (no broker needed)."""

    def test_master_options(self) -> None:
        amqp.MasterOptions.parse({})
        amqp.MasterOptions.parse({"url": "amqps://u:p@broker.example.org/vh", "prefetch": 5,
                                  "heartbeat": 0, "queue": "q", "exchange": "x",
                                  "worker_queue_prefix": "w."})
        for bad in ({"port": 5672}, {"url": "http://x"}, {"prefetch": 0},
                    {"heartbeat": "often"}, {"exchange": ""}, {"queue": "q" * 300}):
            with self.assertRaises(ValueError, msg=repr(bad)):
                amqp.MasterOptions.parse(bad)

    def test_worker_options(self) -> None:
        target = ClientTarget(host="127.0.0.1", port=5672, options={"prefetch": "7"})
        endpoint = amqp.client_endpoint(reactor, target)
        self.assertEqual(endpoint.prefetch, 7)
        self.assertEqual(endpoint.user, amqp.DEFAULT_USER)
        with self.assertRaises(ValueError):
            amqp.client_endpoint(reactor, ClientTarget(options={"bogus": "1"}))

    def test_permissions_escape_names(self) -> None:
        names = amqp.Names("ex.1", "master.q", "w.")
        self.assertEqual(amqp.worker_permissions("a.b", names),
                         (r"^w\.a\.b$", r"^ex\.1$", r"^w\.a\.b$"))
        self.assertEqual(amqp.master_permissions(names),
                         (r"^(ex\.1|master\.q)$", r"^(master\.q|amq\.default)$",
                          r"^(ex\.1|master\.q)$"))
