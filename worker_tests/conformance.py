"""The transport conformance suite, run against every backend over loopback sockets.

Each backend gets a subclass of :class:`ConformanceMixin` naming it and saying how to
listen and connect; the suite checks what every backend must do for the session core:
open, many small frames in order, frames of at least 16 MiB, close from either side,
a vanished peer, an oversized frame refused without buffering it, backpressure, and a
real session handshake with a request over the transport.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.internet import reactor
from twisted.internet import task
from twisted.trial import unittest

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.driver import responder
from buildbot_worker_msgproto.protocol import events as ev
from buildbot_worker_msgproto.protocol.auth import ScramCredentials
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MIB
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import TransportGuarantees

LARGE_FRAME = 16 * MIB + 1
TIMEOUT = 60


#: Sessions that end with their connection (no resume): these tests are about what a
#: transport reports, which a resumable session would hide behind a suspension.
ONE_CONNECTION = DEFAULT_LIMITS.replace(resume_window=0)

class RecordingReceiver:
    """A FrameReceiver that records everything a transport reports."""

    def __init__(self, max_frame: int = 64 * MIB) -> None:
        self.max_frame = max_frame
        self.transport: FrameTransport | None = None
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.frames: list[bytes] = []
        self.rejected: list[int] = []
        self.writability: list[bool] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def transport_opened(self, transport: FrameTransport) -> None:
        self.transport = transport
        self.opened.callback(transport)

    def frame_received(self, frame: bytes) -> None:
        self.frames.append(frame)
        self._check()

    def frame_rejected(self, size: int) -> None:
        self.rejected.append(size)
        self.transport.abort()

    def transport_closed(self, reason: str) -> None:
        if not self.closed.called:
            self.closed.callback(reason)

    def max_incoming_frame_size(self) -> int:
        return self.max_frame

    def writable_changed(self, writable: bool) -> None:
        self.writability.append(writable)

    def wait_frames(self, count: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((count, d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self._waiters):
            if len(self.frames) >= item[0]:
                self._waiters.remove(item)
                item[1].callback(self.frames)


def _timeout(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


@defer.inlineCallbacks
def wait_until(condition: Callable[[], Any], what: str, seconds: float = TIMEOUT) -> Any:
    """Poll ``condition`` every 50 ms for at most ``seconds``; fail naming ``what``."""
    for _ in range(int(seconds * 20)):
        if condition():
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@defer.inlineCallbacks
def close_all(receivers: list[Any], listening: Any) -> Any:
    """Abort every transport of ``receivers`` still open, then stop ``listening``."""
    for receiver in receivers:
        if receiver.transport is not None and not receiver.closed.called:
            receiver.transport.abort()
    yield listening.stop()
    yield task.deferLater(reactor, 0.05, lambda: None)


class ConformanceMixin:
    """What every transport must pass; subclasses set ``backend`` and the two hooks."""

    backend = ""
    #: The transport notices a peer that vanished (else the session heartbeat does).
    detects_disconnect = True

    def server_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def client_target(self, listening: Any) -> ClientTarget:
        raise NotImplementedError

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.module = registry.load(self.backend)
        self.server_receivers: list[Any] = []
        self.client_receivers: list[Any] = []
        self.server_receiver_factory = RecordingReceiver
        self.client_receiver_factory = RecordingReceiver
        self.listening = yield defer.ensureDeferred(
            self.module.listen(reactor, self.server_options(), self._new_server_receiver))
        self.client = None

    def _new_server_receiver(self) -> Any:
        receiver = self.server_receiver_factory()
        self.server_receivers.append(receiver)
        return receiver

    def _new_client_receiver(self) -> Any:
        receiver = self.client_receiver_factory()
        self.client_receivers.append(receiver)
        return receiver

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        if self.client is not None:
            yield self.client.stopService()
        yield close_all(self.server_receivers + self.client_receivers, self.listening)

    def start_client(self, new_receiver: Callable[[], Any]) -> None:
        """Start the client service of this backend, each connection to ``new_receiver()``."""
        self.client = registry.client_service(self.backend, reactor,
                                              self.client_target(self.listening),
                                              new_receiver, lambda n: 0.2)
        self.client.startService()

    @defer.inlineCallbacks
    def listen_again(self, new_server_receiver: Callable[[], Any]) -> Any:
        """Stop listening and listen again, each connection to ``new_server_receiver()``."""
        yield self.listening.stop()
        self.listening = yield defer.ensureDeferred(
            self.module.listen(reactor, self.server_options(), new_server_receiver))

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """Start a client; return (client receiver, server receiver) once both are open."""
        self.start_client(self._new_client_receiver)
        yield wait_until(lambda: self.client_receivers and self.server_receivers,
                         "a connection")
        client, server = self.client_receivers[0], self.server_receivers[0]
        yield _timeout(client.opened)
        yield _timeout(server.opened)
        return client, server

    # ------------------------------------------------------------------ the suite
    @defer.inlineCallbacks
    def test_open_reports_a_peer(self) -> Any:
        client, server = yield self.connect()
        for transport in (client.transport, server.transport):
            # Buildbot's own connections print their peer as host:port: so does every
            # transport; the rest goes to describe()
            self.assertRegex(transport.peer(), r"^\S+:[0-9]+$")
            self.assertTrue(transport.describe().startswith(transport.peer()))
            guarantees = transport.guarantees
            self.assertIsInstance(guarantees, TransportGuarantees)
            self.assertTrue(guarantees.ordered and guarantees.reliable)
            self.assertEqual(guarantees.detects_disconnect, self.detects_disconnect)
            if guarantees.max_frame_size is not None:  # the suite sends frames this large
                self.assertGreaterEqual(guarantees.max_frame_size, LARGE_FRAME)
            self.assertEqual(transport.transport_name, self.backend)
            # what status displays and the connection check show of the protection
            encryption = transport.encryption()
            self.assertIsInstance(encryption, str)
            if guarantees.encrypted:
                self.assertNotIn("none", encryption)
            else:  # in the clear, but maybe through the worker's SSH tunnel
                self.assertRegex(encryption, r"^(SSH tunnel \(.*\)|none)( to the broker)?$")

    @defer.inlineCallbacks
    def test_many_small_frames_in_order_both_ways(self) -> Any:
        client, server = yield self.connect()
        count = 5000
        client.transport.send_frames([b"c%d" % i for i in range(count)])
        for i in range(count):
            server.transport.send_frames([b"s%d" % i])
        received_by_server = yield _timeout(server.wait_frames(count))
        received_by_client = yield _timeout(client.wait_frames(count))
        self.assertEqual(received_by_server, [b"c%d" % i for i in range(count)])
        self.assertEqual(received_by_client, [b"s%d" % i for i in range(count)])

    @defer.inlineCallbacks
    def test_large_frames_both_ways(self) -> Any:
        client, server = yield self.connect()
        big = bytes(range(256)) * (LARGE_FRAME // 256) + b"!"
        client.transport.send_frames([big, b"after"])
        frames = yield _timeout(server.wait_frames(2))
        self.assertEqual(len(frames[0]), len(big))
        self.assertTrue(frames[0] == big and frames[1] == b"after")
        server.transport.send_frames([big])
        frames = yield _timeout(client.wait_frames(1))
        self.assertTrue(frames[0] == big)

    @defer.inlineCallbacks
    def test_close_from_client(self) -> Any:
        client, server = yield self.connect()
        yield self.assert_last_words(client, server, b"last words")

    @defer.inlineCallbacks
    def test_close_from_server(self) -> Any:
        client, server = yield self.connect()
        yield self.assert_last_words(server, client, b"bye")

    @defer.inlineCallbacks
    def assert_last_words(self, closing: RecordingReceiver, peer: RecordingReceiver,
                          frame: bytes) -> Any:
        """``closing`` sends ``frame`` and closes: ``peer`` gets the frame, then the close."""
        closing.transport.send_frames([frame])
        closing.transport.close()
        yield _timeout(peer.closed)
        self.assertEqual(peer.frames, [frame])

    @defer.inlineCallbacks
    def test_peer_vanishing_without_close(self) -> Any:
        if not self.detects_disconnect:
            raise unittest.SkipTest(f"{self.backend} leaves dead-peer detection to heartbeats")
        client, server = yield self.connect()
        client.transport.abort()
        yield _timeout(server.closed)

    @defer.inlineCallbacks
    def test_oversized_frame_is_refused(self) -> Any:
        self.server_receiver_factory = lambda: RecordingReceiver(max_frame=1024)
        client, server = yield self.connect()
        client.transport.send_frames([b"x" * 4096])
        yield _timeout(server.closed)
        self.assertEqual(server.frames, [])
        self.assertEqual(len(server.rejected), 1)

    @defer.inlineCallbacks
    def test_backpressure_is_reported_and_nothing_is_lost(self) -> Any:
        client, server = yield self.connect()
        frames = [bytes([i % 256]) * MIB for i in range(48)]
        client.transport.send_frames(frames)
        received = yield _timeout(server.wait_frames(len(frames)))
        self.assertEqual([f[:1] for f in received], [f[:1] for f in frames])
        yield self.assert_writable_again(client)

    @defer.inlineCallbacks
    def assert_writable_again(self, receiver: RecordingReceiver) -> Any:
        """The transport of ``receiver`` reported backpressure, then (within 5 s) that it
        is writable again."""
        self.assertIn(False, receiver.writability)
        for _ in range(100):
            if receiver.writability[-1]:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(receiver.writability[-1], "never became writable again")

    @defer.inlineCallbacks
    def start_sessions(self, limits: Limits = ONE_CONNECTION) -> Any:
        """Listen with real master sessions, connect a real worker session; wait for auth.

        Returns (master drivers, master handler, worker drivers, worker handler).
        """
        masters: list[SessionDriver] = []
        workers: list[SessionDriver] = []
        handler = _MasterHandler()
        worker_handler = _WorkerHandler()

        def new_master_driver() -> SessionDriver:
            driver = SessionDriver(Session(Role.MASTER, limits, now=reactor.seconds()),
                                   handler, reactor)
            masters.append(driver)
            self.server_receivers.append(_DriverAdapter(driver))
            return driver

        def new_worker_driver() -> SessionDriver:
            session = Session(Role.WORKER, now=reactor.seconds(), worker_name="w1",
                              password="pw")
            driver = SessionDriver(session, worker_handler, reactor)
            workers.append(driver)
            self.client_receivers.append(_DriverAdapter(driver))
            return driver

        yield self.listen_again(new_master_driver)
        self.start_client(new_worker_driver)
        yield _timeout(handler.ready)
        return masters, handler, workers, worker_handler

    @defer.inlineCallbacks
    def test_session_handshake_and_request(self) -> Any:
        masters, handler, _, worker_handler = yield self.start_sessions()
        result = yield _timeout(masters[0].request("print", message="over " + self.backend))
        self.assertIsNone(result)
        self.assertEqual(worker_handler.printed, ["over " + self.backend])
        masters[0].close("normal", "test done")
        yield _timeout(worker_handler.ended)

    @defer.inlineCallbacks
    def test_silent_peer_is_detected_by_session_heartbeats(self) -> Any:
        """Whatever the transport notices, a peer that goes silent (a dead link, a frozen
        process) is declared dead by the session's heartbeat timeout."""
        limits = ONE_CONNECTION.replace(heartbeat_interval=0.2, heartbeat_timeout=0.8)
        masters, handler, workers, _ = yield self.start_sessions(limits)
        workers[0].transport.send_frames = lambda frames: None  # the link goes dead
        code = yield _timeout(handler.ended, 10)
        self.assertEqual(code, "heartbeat_timeout")


class LoopbackStreamConformance(ConformanceMixin):
    """The suite for a stream transport (tcp, amp) listening on any port of 127.0.0.1;
    ``ssh_settings()`` puts an SSH tunnel between worker and master."""

    def ssh_settings(self) -> Any:
        return None

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1"}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            ssh=self.ssh_settings())


class _MasterHandler(MessageHandler):
    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.credentials = ScramCredentials.from_password("pw", 4096)

    def hello_received(self, driver: SessionDriver, event: ev.HelloReceived) -> None:
        driver.answer_hello(self.credentials if event.worker == "w1" else None)

    def authenticated(self, driver: SessionDriver, event: ev.Authenticated) -> None:
        if not self.ready.called:
            self.ready.callback(event)

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        if not self.ended.called:
            self.ended.callback(code)


class _WorkerHandler(MessageHandler):
    def __init__(self) -> None:
        self.printed: list[str] = []
        self.ended: defer.Deferred = defer.Deferred()

    @responder("print")
    def on_print(self, message: dict[str, Any]) -> None:
        self.printed.append(message["message"])

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        if not self.ended.called:
            self.ended.callback(code)


class _DriverAdapter:
    """Lets tearDown treat session drivers like recording receivers."""

    def __init__(self, driver: SessionDriver) -> None:
        self.driver = driver
        self.closed = defer.Deferred()

    @property
    def transport(self) -> Any:
        return None if self.driver.session.is_closed else self.driver.transport
