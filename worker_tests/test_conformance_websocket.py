"""The transport conformance suite against WebSocket, plus what is WebSocket's own.

Run three times: plain, with permessage-deflate, and through an HTTP CONNECT proxy
started in-process on 127.0.0.1 (buildbot-worker's ``proxy_connection_string`` path).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import twisted
from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol.limits import MIB
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports import websocket
from buildbot_worker_msgproto.transports.base import ClientTarget
from worker_tests.conformance import ConformanceMixin
from worker_tests.conformance import RecordingReceiver
from worker_tests.conformance import _DriverAdapter
from worker_tests.conformance import _timeout
from worker_tests.conformance import wait_until
from worker_tests.http_proxy_server import ConnectProxyFactory

_TEST_PEM = os.path.join(os.path.dirname(twisted.__file__), "test", "server.pem")


class WebSocketConformance(ConformanceMixin, unittest.TestCase):
    backend = "websocket"
    path = "/msg"
    compression = "off"

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1", "path": self.path,
                "compression": self.compression == "on"}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            options={"path": self.path, "compression": self.compression})

    def protocols(self, *receivers: RecordingReceiver) -> list[Any]:
        return [receiver.transport.protocol for receiver in receivers]

    # ------------------------------------------------------------------ WebSocket's own
    @defer.inlineCallbacks
    def test_guarantees_and_address(self) -> Any:
        client, server = yield self.connect()
        for receiver in (client, server):
            self.assertEqual(receiver.transport.guarantees, websocket.PLAIN)
            self.assertFalse(receiver.transport.guarantees.encrypted)
        self.assertEqual(self.listening.address(),
                         f"ws://127.0.0.1:{self.listening.port_number}{self.path}")

    @defer.inlineCallbacks
    def test_compression_is_what_was_configured(self) -> Any:
        client, server = yield self.connect()
        for proto in self.protocols(client, server):
            negotiated = proto._perMessageCompress is not None
            self.assertEqual(negotiated, self.compression == "on")

    @defer.inlineCallbacks
    def test_auto_ping_options_reach_autobahn(self) -> Any:
        client, server = yield self.connect()
        for proto in self.protocols(client, server):
            self.assertEqual(proto.autoPingInterval, websocket.DEFAULT_AUTO_PING_INTERVAL)
            self.assertEqual(proto.autoPingTimeout, websocket.DEFAULT_AUTO_PING_TIMEOUT)
            self.assertTrue(proto.tcpNoDelay)

    @defer.inlineCallbacks
    def test_text_message_is_refused_with_a_clear_reason(self) -> Any:
        client, server = yield self.connect()
        client.transport.protocol.sendMessage(b'{"type": "hello"}', isBinary=False)
        reason = yield _timeout(server.closed)
        self.assertEqual(reason, websocket.TEXT_REFUSED)
        self.assertEqual(server.frames, [])
        reason = yield _timeout(client.closed)
        self.assertIn("1003", reason)
        self.assertIn("binary", reason)

    @defer.inlineCallbacks
    def test_close_while_backpressured(self) -> Any:
        """A close with a full send buffer still delivers everything and ends."""
        client, server = yield self.connect()
        big = os.urandom(8 * MIB)
        client.transport.send_frames([big])
        self.assertEqual(client.writability, [False])
        client.transport.close()
        yield _timeout(server.closed, 10)
        self.assertTrue(server.frames == [big])
        yield _timeout(client.closed, 10)

    @defer.inlineCallbacks
    def test_limit_is_read_per_message_and_grows(self) -> Any:
        self.server_receiver_factory = lambda: RecordingReceiver(max_frame=1024)
        client, server = yield self.connect()
        client.transport.send_frames([b"a" * 1024])
        yield _timeout(server.wait_frames(1))
        server.max_frame = 64 * 1024  # as a session does once authenticated
        client.transport.send_frames([b"b" * 60_000])
        frames = yield _timeout(server.wait_frames(2))
        self.assertEqual(len(frames[1]), 60_000)
        self.assertEqual(server.rejected, [])

    @defer.inlineCallbacks
    def test_oversized_frame_is_refused_before_its_payload_arrives(self) -> Any:
        """The header alone triggers the refusal: the payload is never sent here."""
        self.server_receiver_factory = lambda: RecordingReceiver(max_frame=1024)
        client, server = yield self.connect()
        proto = client.transport.protocol
        proto.beginMessage(isBinary=True)
        proto.beginMessageFrame(10 * MIB)
        proto.sendMessageFrameData(b"x" * 10)
        yield _timeout(server.closed)
        self.assertEqual(server.rejected, [10 * MIB])

    @defer.inlineCallbacks
    def test_a_session_explains_a_refused_frame_before_closing(self) -> Any:
        """Pre-auth, a real master session refuses a 1 MiB frame at its header and its
        ``close`` frame (code frame_too_large) still reaches the peer."""

        masters: list[SessionDriver] = []

        def new_master_driver() -> SessionDriver:
            driver = SessionDriver(Session(Role.MASTER, now=reactor.seconds()),
                                   MessageHandler(), reactor)
            masters.append(driver)
            self.server_receivers.append(_DriverAdapter(driver))
            return driver

        yield self.listen_again(new_master_driver)
        self.start_client(self._new_client_receiver)
        yield wait_until(lambda: self.client_receivers, "a client connection", 10)
        client = self.client_receivers[0]
        yield _timeout(client.opened)
        client.transport.send_frames([b"x" * MIB])
        reason = yield _timeout(client.closed)
        self.assertIn("WebSocket closed by peer (code 1000)", reason)
        self.assertEqual(len(client.frames), 1)
        self.assertIn(b"frame_too_large", client.frames[0])
        self.assertTrue(masters[0].session.is_closed)

    @defer.inlineCallbacks
    def test_sending_is_not_bound_by_the_incoming_limit(self) -> Any:
        self.server_receiver_factory = lambda: RecordingReceiver(max_frame=1024)
        client, server = yield self.connect()
        client.transport.send_frames([b"small"])
        yield _timeout(server.wait_frames(1))  # autobahn now holds the 1024 limit
        server.transport.send_frames([b"y" * 100_000])
        frames = yield _timeout(client.wait_frames(1))
        self.assertEqual(len(frames[0]), 100_000)

    @defer.inlineCallbacks
    def test_endless_opening_handshake_is_dropped(self) -> Any:
        lost: defer.Deferred = defer.Deferred()

        class Flood(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                self.transport.write(b"GET /msg HTTP/1.1\r\nX-Pad: " + b"a" * 200_000)

            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                lost.callback(None)

        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.listening.port_number).connect(
            protocol.Factory.forProtocol(Flood))
        yield _timeout(lost, 3)  # autobahn alone would wait for its 5 s handshake timeout
        self.assertEqual(self.server_receivers, [])

    @defer.inlineCallbacks
    def test_wrong_path_is_refused_and_no_session_starts(self) -> Any:
        self.client = registry.client_service(
            "websocket", reactor, ClientTarget(host="127.0.0.1", port=self.listening.port_number,
                                  options={"path": "/elsewhere"}),
            self._new_client_receiver, lambda n: 0.1)
        self.client.startService()
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(self.server_receivers, [])
        self.assertEqual(self.client_receivers, [])


class WebSocketCompressionConformance(WebSocketConformance):
    compression = "on"

    @defer.inlineCallbacks
    def test_backpressure_is_reported_and_nothing_is_lost(self) -> Any:
        # The shared test sends 48 constant MiB that deflate to a few KiB and never fill
        # a socket buffer: send incompressible frames instead.
        client, server = yield self.connect()
        frames = [os.urandom(MIB) for _ in range(48)]
        client.transport.send_frames(frames)
        received = yield _timeout(server.wait_frames(len(frames)))
        self.assertTrue(received == frames)
        yield self.assert_writable_again(client)

    @defer.inlineCallbacks
    def test_compressed_bomb_is_refused_while_inflating(self) -> Any:
        self.server_receiver_factory = lambda: RecordingReceiver(max_frame=64 * 1024)
        client, server = yield self.connect()
        client.transport.send_frames([b"\0" * (64 * MIB)])  # deflates to ~64 KiB
        yield _timeout(server.closed)
        self.assertEqual(server.frames, [])
        self.assertEqual(len(server.rejected), 1)
        self.assertGreater(server.rejected[0], 64 * 1024)


# ---------------------------------------------------------------------- proxy
class WebSocketProxyConformance(ConformanceMixin, unittest.TestCase):
    """The whole suite again, the worker side tunnelling through a CONNECT proxy."""

    backend = "websocket"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.proxy = ConnectProxyFactory()
        self.proxy_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.proxy)
        yield super().setUp()

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        yield super().tearDown()
        yield self.proxy_port.stopListening()

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1"}

    def client_target(self, listening: Any) -> ClientTarget:
        proxy = f"tcp:host=127.0.0.1:port={self.proxy_port.getHost().port}"
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            proxy_connection_string=proxy)

    @defer.inlineCallbacks
    def test_traffic_goes_through_the_proxy(self) -> Any:
        client, server = yield self.connect()
        client.transport.send_frames([b"via proxy" * 1000])
        yield _timeout(server.wait_frames(1))
        self.assertEqual(self.proxy.tunnels, [f"127.0.0.1:{self.listening.port_number}"])
        self.assertGreater(self.proxy.relayed, 9000)
        # the master sees the proxy, not the worker, as its peer
        proxy_side = client.transport.protocol.transport.getPeer()
        self.assertEqual(proxy_side.port, self.proxy_port.getHost().port)


# ---------------------------------------------------------------------- options
class WebSocketOptions(unittest.TestCase):
    def test_master_defaults(self) -> None:
        options = websocket.MasterOptions.parse({"port": 9990})
        self.assertEqual(options, websocket.WebSocketMasterOptions(
            port=9990, backlog=4096, tls=False, path="/msg", compression=False,
            auto_ping_interval=20.0, auto_ping_timeout=20.0))

    def test_bad_master_options(self) -> None:
        for options in ({}, {"port": True}, {"port": 1, "pth": "/x"},
                        {"port": 1, "path": "msg"}, {"port": 1, "compression": "maybe"},
                        {"port": 1, "auto_ping_interval": -1},
                        {"port": 1, "auto_ping_timeout": "soon"}, {"port": 1, "backlog": 0}):
            with self.assertRaises(ValueError, msg=repr(options)):
                websocket.MasterOptions.parse(options)

    def test_worker_options_are_strings(self) -> None:
        settings = websocket.WorkerOptions.parse(
            {"path": "/ws/msg", "compression": "on", "auto_ping_interval": "5",
             "auto_ping_timeout": "0"})
        self.assertEqual(settings, websocket.WebSocketSettings("/ws/msg", True, 5.0, 0.0))
        with self.assertRaises(ValueError):
            registry.client_service("websocket", reactor,
                                    ClientTarget("h", 1, options={"port": "1"}),
                                    RecordingReceiver)

    def test_client_url(self) -> None:
        url = websocket.client_url
        self.assertEqual(url(ClientTarget("master", 9990), "/msg"), "ws://master:9990/msg")
        self.assertEqual(url(ClientTarget("master", 443, use_tls=True), "/m"),
                         "wss://master:443/m")
        self.assertEqual(url(ClientTarget("::1", 80), "/msg"), "ws://[::1]:80/msg")
        self.assertEqual(url(ClientTarget(connection_string="tcp:host=m.example:port=81"),
                             "/msg"), "ws://m.example:81/msg")
        self.assertEqual(url(ClientTarget(connection_string="unix:path=/run/m.sock"), "/x"),
                         "ws://localhost/x")


# ---------------------------------------------------------------------- wss
class WebSocketTLSConformance(ConformanceMixin, unittest.TestCase):
    """wss:// with Twisted's own self-signed test certificate (CN localhost)."""

    backend = "websocket"

    def server_options(self) -> dict[str, Any]:
        return {"port": f"ssl:0:interface=127.0.0.1:privateKey={_TEST_PEM}"}

    def client_target(self, listening: Any) -> ClientTarget:
        roots = tempfile.mkdtemp(prefix="msgproto-ws-roots-")
        self.addCleanup(shutil.rmtree, roots, True)
        shutil.copy(_TEST_PEM, roots)
        return ClientTarget(connection_string=f"tls:host=localhost:port={listening.port_number}"
                                              f":trustRoots={roots}")

    @defer.inlineCallbacks
    def test_encrypted(self) -> Any:
        client, server = yield self.connect()
        self.assertEqual(client.transport.guarantees, websocket.ENCRYPTED)
        self.assertEqual(server.transport.guarantees, websocket.ENCRYPTED)
        for receiver in (client, server):
            self.assertRegex(receiver.transport.encryption(), r"^TLS \(TLSv1\.[23], \S+\)$")
        self.assertTrue(self.listening.address().startswith("wss://127.0.0.1:"))
        self.assertTrue(client.transport.protocol.factory.url.startswith("wss://localhost:"))
