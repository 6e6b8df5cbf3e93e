"""ZeroMQ (pyzmq under Twisted, via txzmq): one master ROUTER socket, a DEALER per worker.

Messages on the wire (the master's ROUTER adds and strips the DEALER's identity)::

    [frame]            one frame, opaque bytes
    [b"", b"open"]     control: the worker starts a transport (its first message)
    [b"", b"close"]    control: this side closed the transport (either direction)

ZeroMQ hides connects and disconnects, hence the two control messages: ``open`` makes the
master create a receiver for that identity at once, ``close`` makes the other side's
receiver see ``transport_closed``.  Control messages with another verb are ignored.

The worker's DEALER uses a fresh random identity per session.  The master forgets an
identity when its transport ends, so a frame from an identity it does not know (the late
frame of an ended session, or a worker still talking to a master that restarted) is
answered with ``close``, which ends that worker's session at once; it never opens one.

A vanished peer is found by the session's heartbeats (``detects_disconnect=False``) or, on
the master, by the first send to a worker whose connection is gone: ``ZMQ_ROUTER_MANDATORY``
makes that ``EHOSTUNREACH``, which ends that peer's transport loudly.  A full high-water
mark (``EAGAIN``) drops nothing: frames wait, in order, in a per-peer queue here and the
receiver gets ``writable_changed(False)`` until it drains.  See ``docs/transports/zmq.rst``.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
from typing import Any
from typing import Callable

import zmq as pyzmq
from twisted.application import service
from twisted.internet import defer
from twisted.internet import task
from twisted.python import log
from txzmq import ZmqFactory
from txzmq.connection import ZmqConnection

from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.endpoints import DEFAULT_BACKLOG

NAME = "zmq"

#: Messages ZeroMQ queues per peer and direction before ``EAGAIN`` (libzmq's own default).
DEFAULT_SNDHWM = 1000
DEFAULT_RCVHWM = 1000
#: ``ZMQ_MAXMSGSIZE``: ZeroMQ drops a connection that sends a larger message before
#: buffering it.  Four times the protocol's default ``max_frame_size`` (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Milliseconds a closing transport may take to flush queued frames (also ``ZMQ_LINGER``).
DEFAULT_LINGER = 1000
#: Messages read per reactor turn before letting other events run.
READ_BATCH = 512
#: Seconds after which sends refused at a high-water mark are retried, in case ZeroMQ's
#: notification that the peer drained was consumed by another call on the socket.
RETRY_BLOCKED = 0.02
#: ZeroMQ releases a closed socket's port in its I/O thread, a moment later: a listener
#: restarted in the same process retries binding for this long (seconds).
BIND_RETRY_FOR = 2.0

OPEN = (b"", b"open")
CLOSE = (b"", b"close")

_DEFAULTS = {"sndhwm": DEFAULT_SNDHWM, "rcvhwm": DEFAULT_RCVHWM,
             "max_message_size": DEFAULT_MAX_MESSAGE_SIZE, "linger": DEFAULT_LINGER,
             "backlog": DEFAULT_BACKLOG}
_MASTER_OPTIONS = frozenset({"endpoint", "port", "interface", *_DEFAULTS})
_WORKER_OPTIONS = frozenset({"sndhwm", "rcvhwm", "max_message_size", "linger"})

#: How a transport ended: our ``close`` went out; the peer closed or is gone, so there is
#: nobody to tell; or anything else (abort, failed send, malformed message, listener
#: stopped), when queued frames are dropped and the master tells the peer if it can.
FLUSHED, PEER_GONE, DROPPED = "flushed", "peer_gone", "dropped"

_factory: ZmqFactory | None = None


def _zmq_factory(reactor: Any) -> ZmqFactory:
    """One ZeroMQ context (one I/O thread) per process, terminated at reactor shutdown,
    once closed sockets had up to ``linger`` ms to flush."""
    global _factory
    if _factory is None or _factory.context is None:
        _factory = ZmqFactory()
        _factory.reactor = reactor
        _factory.lingerPeriod = DEFAULT_LINGER
        _factory.registerForShutdown()
    return _factory


def _values(options: dict[str, Any], allowed: frozenset[str], side: str) -> dict[str, int]:
    """The integer options with their defaults, checked (the worker CLI gives strings)."""
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown zmq {side} options {sorted(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    values = dict(_DEFAULTS)
    for key in values:
        if key in options:
            try:
                values[key] = int(options[key])
            except (TypeError, ValueError):
                raise ValueError(f"zmq option {key!r} must be an integer, "
                                 f"got {options[key]!r}") from None
    for key in ("sndhwm", "rcvhwm", "linger", "backlog"):
        if values[key] < 0:
            raise ValueError(f"zmq option {key!r} must not be negative")
    if values["max_message_size"] == 0 or values["max_message_size"] < -1:
        raise ValueError("zmq option 'max_message_size' must be positive (or -1: no limit)")
    return values


def _guarantees(max_message_size: int) -> TransportGuarantees:
    return TransportGuarantees(ordered=True, reliable=True,
                               max_frame_size=max_message_size if max_message_size > 0 else None,
                               encrypted=False, detects_disconnect=False)


class _Socket(ZmqConnection):
    """A txzmq socket that hands whole messages to ``owner.message_received`` and calls
    ``owner.writable_again`` after every read pass, to retry sends refused by a full HWM.

    txzmq registers ZeroMQ's notification descriptor with the reactor.  ``ZMQ_FD`` is edge
    triggered and any call on the socket may consume a notification (of a message that
    arrived, or of a peer that drained), so a read pass is scheduled after every send (as
    txzmq does) and, while a send is refused, every ``RETRY_BLOCKED`` seconds.
    """

    def __init__(self, factory: ZmqFactory, socket_type: int, values: dict[str, int],
                 owner: Any, identity: bytes | None = None) -> None:
        self.socketType = socket_type  # noqa: N815 - txzmq's name
        self.owner = owner
        self._scheduled = None
        self._retry = None
        super().__init__(factory, identity=identity)  # no endpoint yet: options first
        sock = self.socket
        sock.set(pyzmq.SNDHWM, values["sndhwm"])
        sock.set(pyzmq.RCVHWM, values["rcvhwm"])
        sock.set(pyzmq.MAXMSGSIZE, values["max_message_size"])
        sock.set(pyzmq.LINGER, values["linger"])

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


class _QueuedTransport(FrameTransport):
    """The master's per-peer transport and the worker's transport: messages go out in
    order through a queue that keeps those ZeroMQ refused with ``EAGAIN``."""

    def __init__(self, reactor: Any, receiver: FrameReceiver, linger: int,
                 guarantees: TransportGuarantees) -> None:
        self.reactor = reactor
        self.receiver = receiver
        self.linger = linger
        self.guarantees = guarantees
        self.queue: collections.deque[tuple[bytes, ...]] = collections.deque()
        self.writable = True
        self.receiving = True
        self.closing = False
        self.closed = False
        self.got_frames = False
        self._linger_timer = None

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        """Hand one message to ZeroMQ or raise ``ZMQError``."""
        raise NotImplementedError

    def _finished(self, how: str) -> None:
        """Release the socket or the identity (``how``: FLUSHED, PEER_GONE or DROPPED)."""
        raise NotImplementedError

    # --- FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if self.closing or self.closed:
            return
        self.queue.extend((frame,) for frame in frames)
        self.flush()

    def close(self) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.queue.append(CLOSE)
        self.flush()
        if not self.closed:  # stuck at a high-water mark: give up after ``linger``
            self._linger_timer = self.reactor.callLater(
                self.linger / 1000.0, self.failed,
                f"zmq: frames queued for {self.peer()} were not sent within {self.linger} ms "
                "of closing; discarded")

    def abort(self) -> None:
        self.end("aborted", DROPPED)

    # --- internals
    def flush(self) -> None:
        """Send queued messages until ZeroMQ refuses one (it is retried later)."""
        while self.queue and not self.closed:
            message = self.queue[0]
            try:
                self._send_now(message)
            except pyzmq.ZMQError as e:
                if e.errno == pyzmq.EAGAIN:
                    if self.writable:
                        self.writable = False
                        self.receiver.writable_changed(False)
                    return
                if e.errno == pyzmq.EHOSTUNREACH and message is CLOSE:
                    self.end("closed", PEER_GONE)  # it left first: nothing was lost
                    return
                self.failed(self._send_error(e))
                return
            if message is CLOSE:
                self.end("closed", FLUSHED)
                return
            self.queue.popleft()
        if not self.writable and not self.closed:
            self.writable = True
            self.receiver.writable_changed(True)

    def _send_error(self, error: pyzmq.ZMQError) -> str:
        if error.errno == pyzmq.EHOSTUNREACH:
            return (f"zmq peer {self.peer()} is unreachable (its connection is gone); "
                    f"{len(self.queue)} queued message(s) not delivered")
        return f"zmq send to {self.peer()} failed: {error}"

    def failed(self, reason: str) -> None:
        """A send failed for good, or the peer broke the rules: end loudly."""
        log.msg(f"msgproto: {reason}")
        self.end(reason, DROPPED)

    def end(self, reason: str, how: str) -> None:
        """The transport is over: release it and tell the receiver on the next turn."""
        if self.closed:
            return
        self.closed = True
        self.receiving = False
        self.queue.clear()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        self._finished(how)
        self.reactor.callLater(0, self.receiver.transport_closed, reason)

    def deliver(self, frame: bytes) -> None:
        """One received frame: pass it on, or refuse it if it is too large."""
        if not self.receiving:
            return
        self.got_frames = True
        if len(frame) > self.receiver.max_incoming_frame_size():
            self.receiving = False  # ignore what follows; the receiver closes or aborts
            self.receiver.frame_rejected(len(frame))
            return
        self.receiver.frame_received(frame)

    def control(self, verb: bytes) -> None:
        """A control message from the peer of this transport."""
        if verb == CLOSE[1]:
            self.end("closed by the peer", PEER_GONE)


def _verb(parts: list[Any]) -> bytes | None:
    """The verb of a control message ``[b"", verb]``, None for a frame ``[frame]``."""
    if len(parts) == 2 and not parts[0].bytes:
        return parts[1].bytes
    return None


# ====================================================================== master: ROUTER


class PeerTransport(_QueuedTransport):
    """One worker (a DEALER identity) behind the master's shared ROUTER socket."""

    def __init__(self, router: RouterListening, identity: bytes, address: str | None,
                 receiver: FrameReceiver) -> None:
        super().__init__(router.reactor, receiver, router.values["linger"], router.guarantees)
        self.router = router
        self.identity = identity
        self.address = address

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        self.router.conn.send_parts([self.identity, *message])

    def flush(self) -> None:
        super().flush()
        if self.queue and not self.closed:  # retried after the socket's next read pass
            self.router.blocked[self.identity] = self

    def _finished(self, how: str) -> None:
        self.router.forget(self, tell_peer=how == DROPPED)

    def peer(self) -> str:
        return f"{self.address or '?'} (zmq id {self.identity.hex()[:12]})"


class RouterListening:
    """The master's single ROUTER socket, serving every worker; a ``Listening``."""

    def __init__(self, reactor: Any, values: dict[str, int],
                 new_receiver: ReceiverFactory) -> None:
        self.reactor = reactor
        self.values = values
        self.new_receiver = new_receiver
        self.guarantees = _guarantees(values["max_message_size"])
        self.peers: dict[bytes, PeerTransport] = {}
        self.blocked: dict[bytes, PeerTransport] = {}
        self.conn = _Socket(_zmq_factory(reactor), pyzmq.ROUTER, values, self)
        sock = self.conn.socket
        sock.set(pyzmq.ROUTER_MANDATORY, 1)  # EAGAIN / EHOSTUNREACH instead of dropping
        sock.set(pyzmq.ROUTER_HANDOVER, 1)  # a reconnecting DEALER gets its identity back
        sock.set(pyzmq.BACKLOG, values["backlog"])
        self.endpoint = ""

    async def bind(self, endpoint: str) -> None:
        deadline = self.reactor.seconds() + BIND_RETRY_FOR
        while True:
            try:
                self.conn.socket.bind(endpoint)
                break
            except pyzmq.ZMQError as e:
                if e.errno != pyzmq.EADDRINUSE or self.reactor.seconds() >= deadline:
                    self.conn.close(0)
                    raise
            await task.deferLater(self.reactor, 0.02, lambda: None)
        self.endpoint = self.conn.socket.get(pyzmq.LAST_ENDPOINT).decode()

    # --- Listening
    def stop(self) -> defer.Deferred:
        """Close the socket, which ends every transport it serves (each peer is told)."""
        if self.conn.socket is not None:
            for peer in list(self.peers.values()):
                peer.end("the zmq listener stopped", DROPPED)
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.socket.unbind(self.endpoint)  # stop accepting at once
            self.conn.close(self.values["linger"])
        d: defer.Deferred = defer.Deferred()
        self.reactor.callLater(0, d.callback, None)  # after the receivers were told
        return d

    def address(self) -> str:
        return f"{NAME}:{self.endpoint}"

    @property
    def port_number(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    # --- from the socket
    def message_received(self, parts: list[Any]) -> None:
        identity, parts = parts[0].bytes, parts[1:]
        verb = _verb(parts)
        peer = self.peers.get(identity)
        if peer is None:
            if verb == OPEN[1]:
                self._open(identity, parts[0])
            elif verb != CLOSE[1]:  # a frame of an ended session, or of a former master's
                self._tell_closed(identity)
        elif verb is not None:
            peer.control(verb)
        elif len(parts) != 1:
            peer.failed(f"malformed zmq message from {peer.peer()}: "
                        f"{len(parts)} parts, expected 1")
        else:
            peer.deliver(parts[0].bytes)

    def _open(self, identity: bytes, part: Any) -> None:
        try:
            address = part.get("Peer-Address")
        except pyzmq.ZMQError:
            address = None
        peer = PeerTransport(self, identity, address, self.new_receiver())
        self.peers[identity] = peer
        peer.receiver.transport_opened(peer)

    def writable_again(self) -> None:
        for peer in list(self.blocked.values()):
            self.blocked.pop(peer.identity, None)
            peer.flush()

    # --- from peers
    def forget(self, peer: PeerTransport, tell_peer: bool) -> None:
        if self.peers.get(peer.identity) is peer:
            del self.peers[peer.identity]
        self.blocked.pop(peer.identity, None)
        if tell_peer:
            self._tell_closed(peer.identity)

    def _tell_closed(self, identity: bytes) -> None:
        """Best effort ``close`` to a DEALER (if it is gone or full, its heartbeat notices)."""
        if self.conn.socket is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.send_parts([identity, *CLOSE])


def _endpoint(options: dict[str, Any]) -> str:
    if "endpoint" in options:
        return options["endpoint"]
    interface = str(options.get("interface", "*"))
    if ":" in interface and not interface.startswith("["):
        interface = f"[{interface}]"
    return f"tcp://{interface}:{options['port'] or '*'}"


def validate_options(options: dict[str, Any]) -> None:
    """Master side: ``endpoint`` (a ZeroMQ endpoint) or ``port`` (and ``interface``), plus
    ``sndhwm``, ``rcvhwm``, ``max_message_size``, ``linger`` and ``backlog``."""
    _values(options, _MASTER_OPTIONS, "master")
    if ("endpoint" in options) == ("port" in options):
        raise ValueError("the zmq transport needs exactly one of 'endpoint' "
                         "(e.g. 'tcp://*:9990') and 'port' (with optional 'interface')")
    if "endpoint" in options:
        if not isinstance(options["endpoint"], str) or "://" not in options["endpoint"]:
            raise ValueError("zmq 'endpoint' must be a ZeroMQ endpoint, e.g. 'tcp://*:9990'")
        if "interface" in options:
            raise ValueError("zmq 'interface' goes with 'port', not with 'endpoint'")
    elif isinstance(options["port"], bool) or not isinstance(options["port"], int):
        raise ValueError("zmq 'port' must be an int (0: any free port)")


async def listen(reactor: Any, options: dict[str, Any],
                 new_receiver: ReceiverFactory) -> RouterListening:
    """Bind the master's one ROUTER socket; every worker is a peer of it."""
    validate_options(options)
    listening = RouterListening(reactor, _values(options, _MASTER_OPTIONS, "master"),
                                new_receiver)
    await listening.bind(_endpoint(options))
    return listening


# ====================================================================== worker: DEALER


class DealerTransport(_QueuedTransport):
    """The worker's side of one session: a DEALER socket with a fresh random identity."""

    def __init__(self, client: ZmqClientService, receiver: FrameReceiver) -> None:
        super().__init__(client.reactor, receiver, client.values["linger"], client.guarantees)
        self.client = client
        self.identity = secrets.token_hex(16).encode("ascii")
        self.conn = _Socket(_zmq_factory(client.reactor), pyzmq.DEALER, client.values, self,
                            identity=self.identity)
        # ZeroMQ connects and reconnects by itself; messages wait in the socket meanwhile.
        self.conn.socket.connect(client.endpoint)
        self.queue.append(OPEN)
        self.flush()

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        self.conn.send_parts(list(message))

    def _finished(self, how: str) -> None:
        # After our ``close`` ZeroMQ flushes for up to ``linger`` ms in the background;
        # otherwise what is still queued belongs to a dead session and is discarded.
        self.conn.close(self.linger if how == FLUSHED else 0)
        self.client.transport_ended(self)

    def message_received(self, parts: list[Any]) -> None:
        verb = _verb(parts)
        if verb is not None:
            self.control(verb)
        elif len(parts) != 1:
            self.failed(f"malformed zmq message from the master: {len(parts)} parts")
        else:
            self.deliver(parts[0].bytes)

    def writable_again(self) -> None:
        if self.queue:
            self.flush()

    def peer(self) -> str:
        return self.client.endpoint


class ZmqClientService(service.Service):
    """The worker's reconnecting client: one DEALER socket per session.

    A session starts at once (ZeroMQ connects lazily, so ``open`` and ``hello`` wait in the
    socket until the master is reachable).  When its transport ends, for whatever reason,
    the socket is closed and a new session starts after ``retry_policy(attempt)`` seconds;
    as with Twisted's ClientService, ``attempt`` is 1 after a session that heard from the
    master and grows by one after each session that did not.
    """

    def __init__(self, reactor: Any, endpoint: str, values: dict[str, int],
                 new_receiver: ReceiverFactory,
                 retry_policy: Callable[[int], float] | None) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.values = values
        self.guarantees = _guarantees(values["max_message_size"])
        self.new_receiver = new_receiver
        self.retry_policy = retry_policy
        self.transport: DealerTransport | None = None
        self.attempt = 0
        self._retry = None
        self._stopped: defer.Deferred | None = None

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self._connect()

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.transport is None:
            return defer.succeed(None)
        stopped = self._stopped = defer.Deferred()
        self.transport.close()  # what is queued, then ``close``; at most ``linger`` ms
        return stopped

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        receiver = self.new_receiver()
        self.transport = DealerTransport(self, receiver)
        receiver.transport_opened(self.transport)

    def transport_ended(self, transport: DealerTransport) -> None:
        if transport is not self.transport:
            return
        self.transport = None
        if self._stopped is not None:
            # the receiver hears transport_closed on the next turn: fire after that
            self.reactor.callLater(0, self._stopped.callback, None)
            self._stopped = None
        if not self.running:
            return
        self.attempt = 1 if transport.got_frames else self.attempt + 1
        delay = self.retry_policy(self.attempt) if self.retry_policy else 1.0
        self._retry = self.reactor.callLater(delay, self._connect)


def client_service(reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory,
                   retry_policy: Any = None) -> ZmqClientService:
    """The worker's reconnecting DEALER client of the master's ROUTER at host:port (or at
    the ZeroMQ endpoint given as connection string)."""
    if target.use_tls:
        raise ValueError("the zmq transport has no TLS (CURVE is not supported yet); "
                         "use the tcp transport with TLS, or an encrypted network")
    if target.proxy_connection_string:
        raise ValueError("the zmq transport cannot tunnel through an HTTP proxy")
    values = _values(target.options, _WORKER_OPTIONS, "worker")
    if target.connection_string:
        if "://" not in target.connection_string:
            raise ValueError("with the zmq transport a connection string must be a ZeroMQ "
                             f"endpoint (e.g. tcp://host:9990), not {target.connection_string!r}")
        endpoint = target.connection_string
    else:
        host = target.host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        endpoint = f"tcp://{host}:{target.port}"
    return ZmqClientService(reactor, endpoint, values, new_receiver, retry_policy)
