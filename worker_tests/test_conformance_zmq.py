"""The transport conformance suite against ZeroMQ (one ROUTER, a DEALER per client)."""

from __future__ import annotations

from typing import Any

import zmq as pyzmq
from twisted.internet import defer
from twisted.internet import reactor
from twisted.internet import task
from twisted.trial import unittest

from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports import zmq as zmq_transport
from buildbot_worker_msgproto.transports.base import ClientTarget
from worker_tests.conformance import TIMEOUT
from worker_tests.conformance import ConformanceMixin
from worker_tests.conformance import RecordingReceiver
from worker_tests.conformance import _timeout

#: Small high-water marks, so that 48 MiB in 1 MiB frames hits them: the backpressure
#: test then checks that EAGAIN queues frames (in order, none lost) and is reported.
HWM = 4


class ZmqConformance(ConformanceMixin, unittest.TestCase):
    backend = "zmq"
    detects_disconnect = False  # ZeroMQ hides disconnects: the session heartbeat finds them

    def server_options(self) -> dict[str, Any]:
        return {"port": 0, "interface": "127.0.0.1", "sndhwm": HWM, "rcvhwm": HWM}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            options={"sndhwm": str(HWM), "rcvhwm": str(HWM)})


class ZmqSpecifics(unittest.TestCase):
    """What the ZeroMQ backend adds: control messages, identities, unreachable peers."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.module = registry.load("zmq")
        self.server_receivers: list[RecordingReceiver] = []
        self.client_receivers: list[RecordingReceiver] = []
        self.listening = yield self.listen(0)
        self.clients: list[Any] = []
        self.raw: list[Any] = []

    def listen(self, port: int) -> defer.Deferred:
        return defer.ensureDeferred(self.module.listen(
            reactor, {"port": port, "interface": "127.0.0.1"}, self._new_server_receiver))

    def _new_server_receiver(self) -> RecordingReceiver:
        self.server_receivers.append(RecordingReceiver())
        return self.server_receivers[-1]

    def _new_client_receiver(self) -> RecordingReceiver:
        self.client_receivers.append(RecordingReceiver())
        return self.client_receivers[-1]

    def start_client(self, port: int | None = None) -> Any:
        target = ClientTarget(host="127.0.0.1", port=port or self.listening.port_number)
        client = self.module.client_service(reactor, target, self._new_client_receiver,
                                            lambda n: 0.1)
        client.startService()
        self.clients.append(client)
        return client

    def raw_dealer(self) -> Any:
        sock = pyzmq.Context.instance().socket(pyzmq.DEALER)
        sock.set(pyzmq.LINGER, 0)
        sock.connect(self.listening.endpoint)
        self.raw.append(sock)
        return sock

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        for client in self.clients:
            yield client.stopService()
        for sock in self.raw:
            sock.close(0)
        for receiver in self.server_receivers + self.client_receivers:
            if receiver.transport is not None and not receiver.closed.called:
                receiver.transport.abort()
        yield self.listening.stop()
        yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def wait_for(self, condition: Any, what: str) -> Any:
        for _ in range(TIMEOUT * 20):
            if condition():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def test_guarantees(self) -> None:
        guarantees = self.listening.guarantees
        self.assertEqual((guarantees.ordered, guarantees.reliable, guarantees.encrypted,
                          guarantees.detects_disconnect), (True, True, False, False))
        self.assertEqual(guarantees.max_frame_size, zmq_transport.DEFAULT_MAX_MESSAGE_SIZE)

    def test_options_are_validated(self) -> None:
        good = [{"port": 9990}, {"port": 0, "interface": "::1", "sndhwm": 10},
                {"endpoint": "ipc:///tmp/x", "rcvhwm": 5, "max_message_size": -1,
                 "linger": 0, "backlog": 10}]
        for options in good:
            self.module.validate_options(options)
        bad = [{}, {"port": "9990"}, {"port": 1, "endpoint": "tcp://*:1"},
               {"endpoint": "localhost:1"}, {"endpoint": "tcp://*:1", "interface": "lo"},
               {"port": 1, "sndhwm": -1}, {"port": 1, "max_message_size": 0},
               {"port": 1, "hwm": 5}, {"port": True}]
        for options in bad:
            with self.assertRaises(ValueError, msg=repr(options)):
                self.module.validate_options(options)
        target = ClientTarget(host="h", port=1, options={"sndhwm": "x"})
        with self.assertRaises(ValueError):
            self.module.client_service(reactor, target, RecordingReceiver)
        with self.assertRaises(ValueError):
            self.module.client_service(reactor, ClientTarget("h", 1, use_tls=True),
                                       RecordingReceiver)

    @defer.inlineCallbacks
    def test_one_router_socket_serves_all_workers(self) -> Any:
        for _ in range(5):
            self.start_client()
        yield self.wait_for(lambda: len(self.server_receivers) == 5, "5 peers")
        yield defer.gatherResults([r.opened for r in self.server_receivers])
        for index, receiver in enumerate(self.client_receivers):
            receiver.transport.send_frames([b"from %d" % index])
        for receiver in self.server_receivers:
            frames = yield _timeout(receiver.wait_frames(1))
            receiver.transport.send_frames([b"echo " + frames[0]])
        for index, receiver in enumerate(self.client_receivers):
            frames = yield _timeout(receiver.wait_frames(1))
            self.assertEqual(frames, [b"echo from %d" % index])
        sockets = [c for c in zmq_transport._factory.connections
                   if c.socket.get(pyzmq.TYPE) == pyzmq.ROUTER]
        self.assertEqual(len(sockets), 1)

    @defer.inlineCallbacks
    def test_each_session_has_a_fresh_identity(self) -> Any:
        self.start_client()
        yield self.wait_for(lambda: self.server_receivers, "a peer")
        first = yield _timeout(self.server_receivers[0].opened)
        first.close()
        yield _timeout(self.client_receivers[0].closed)
        yield self.wait_for(lambda: len(self.server_receivers) == 2, "the next session")
        second = yield _timeout(self.server_receivers[1].opened)
        self.assertNotEqual(first.identity, second.identity)

    @defer.inlineCallbacks
    def test_frame_from_an_unknown_identity_is_answered_with_close(self) -> Any:
        sock = self.raw_dealer()
        sock.send(b'{"type":"ping","seq":3,"ack":1}')
        for _ in range(TIMEOUT * 20):
            if sock.poll(0):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sock.recv_multipart(pyzmq.NOBLOCK), [b"", b"close"])
        self.assertEqual(self.server_receivers, [])

    @defer.inlineCallbacks
    def test_unreachable_peer_ends_its_transport_on_send(self) -> Any:
        sock = self.raw_dealer()
        sock.send_multipart([b"", b"open"])
        yield self.wait_for(lambda: self.server_receivers, "a peer")
        server = self.server_receivers[0]
        yield _timeout(server.opened)
        sock.close(0)
        self.raw.remove(sock)
        for _ in range(TIMEOUT * 20):  # until ZeroMQ has noticed the closed connection
            if server.closed.called:
                break
            server.transport.send_frames([b"ping"])
            yield task.deferLater(reactor, 0.05, lambda: None)
        reason = yield _timeout(server.closed)
        self.assertIn("unreachable", reason)

    @defer.inlineCallbacks
    def test_a_restarted_master_makes_the_worker_start_a_new_session(self) -> Any:
        self.start_client()
        yield self.wait_for(lambda: self.server_receivers, "a peer")
        yield _timeout(self.server_receivers[0].opened)
        port = self.listening.port_number
        yield self.listening.stop()
        yield _timeout(self.server_receivers[0].closed)
        self.listening = yield self.listen(port)  # "the restarted master"
        # the old session's DEALER reconnects by itself; its next frame gets a close
        old = self.client_receivers[0]
        old.transport.send_frames([b"a frame of the old session"])
        reason = yield _timeout(old.closed)
        self.assertEqual(reason, "closed by the peer")
        yield self.wait_for(lambda: len(self.server_receivers) == 2, "a new session")
        new = yield _timeout(self.server_receivers[1].opened)
        self.client_receivers[1].transport.send_frames([b"hello again"])
        frames = yield _timeout(self.server_receivers[1].wait_frames(1))
        self.assertEqual(frames, [b"hello again"])
        self.assertIn("127.0.0.1", new.peer())
