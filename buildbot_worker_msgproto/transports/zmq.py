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

CURVE (``docs/security/curve.rst``): with ``curve_secret_key`` and ``curve_authorized_keys``
the ROUTER is a CURVE server and every connecting worker's public key is checked by a ZAP
handler that runs in the reactor (:class:`ZapHandler`, one per ZeroMQ context, shared by
the CURVE listeners of the process through ``ZMQ_ZAP_DOMAIN``); a refused worker's
connection is closed by ZeroMQ during its handshake, before any message reaches us.  The
worker's DEALER is a CURVE client with ``curve_secret_key`` and ``curve_server_key``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import secrets
from typing import Any
from typing import Callable

import zmq as pyzmq
import zmq.auth as pyzmq_auth
from twisted.application import service
from twisted.internet import defer
from twisted.internet import task
from twisted.python import log
from txzmq import ZmqFactory
from txzmq.connection import ZmqConnection
from zmq.utils import z85

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
_CURVE_MASTER = ("curve_secret_key", "curve_authorized_keys")
_CURVE_WORKER = ("curve_secret_key", "curve_server_key")
_MASTER_OPTIONS = frozenset({"endpoint", "port", "interface", *_DEFAULTS, *_CURVE_MASTER})
_WORKER_OPTIONS = frozenset({"sndhwm", "rcvhwm", "max_message_size", "linger", *_CURVE_WORKER})

#: Where libzmq sends its ZAP requests (RFC 27), one handler per context.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: A refused worker's DEALER reconnects every 100 ms: log its refusal once per this many s.
ZAP_LOG_INTERVAL = 60.0

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


def _guarantees(max_message_size: int, encrypted: bool = False) -> TransportGuarantees:
    return TransportGuarantees(ordered=True, reliable=True,
                               max_frame_size=max_message_size if max_message_size > 0 else None,
                               encrypted=encrypted, detects_disconnect=False)


# ====================================================================== CURVE keys


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """One side's CURVE key pair (Z85) and, on a worker, the master's public key."""

    public: bytes
    secret: bytes = dataclasses.field(repr=False)
    server: bytes | None = None

    def apply(self, sock: Any) -> None:
        """Make ``sock`` a CURVE client (``server`` set) or server; before bind/connect."""
        if self.server is None:
            sock.set(pyzmq.CURVE_SERVER, 1)
        else:
            sock.set(pyzmq.CURVE_SERVERKEY, self.server)
        sock.set(pyzmq.CURVE_PUBLICKEY, self.public)
        sock.set(pyzmq.CURVE_SECRETKEY, self.secret)


def _check_z85(key: bytes | None, what: str, path: str) -> bytes:
    if key is None or len(key) != 40:
        raise ValueError(f"zmq option: {path!r} has no valid CURVE {what} "
                         "(40 Z85 characters, as written by gen-keys)")
    try:
        z85.decode(key)
    except Exception:
        raise ValueError(f"zmq option: the CURVE {what} in {path!r} is not Z85") from None
    return key


def _load_key_file(option: str, path: Any, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a ZeroMQ certificate file (``zmq.auth`` format)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"zmq option {option!r} must be the path of a key file, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"zmq option {option!r}: no such key file {str(path)!r}")
    try:
        public, secret_key = pyzmq_auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"zmq option {option!r}: cannot read {str(path)!r}: {e}") from None
    public = _check_z85(public, "public key", str(path))
    if secret:
        if secret_key is None:
            raise ValueError(f"zmq option {option!r}: {str(path)!r} holds no secret key (give "
                             "the .key_secret file, not the public .key file)")
        secret_key = _check_z85(secret_key, "secret key", str(path))
        if pyzmq.curve_public(secret_key) != public:
            raise ValueError(f"zmq option {option!r}: the public key in {str(path)!r} does "
                             "not belong to its secret key")
    return public, secret_key


def _need_curve() -> None:
    if not pyzmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support "
                         f"(libzmq {pyzmq.zmq_version()}); CURVE options cannot be used")


def _half(options: dict[str, Any], names: tuple[str, str], side: str) -> bool:
    """True if CURVE is configured (both names), False if not (neither); else refuse."""
    given = [name for name in names if options.get(name) not in (None, "")]
    if len(given) == 1:
        missing = next(name for name in names if name not in given)
        raise ValueError(f"zmq {side} option {given[0]!r} needs {missing!r} as well: CURVE "
                         f"needs both {names[0]!r} and {names[1]!r} (or neither)")
    return bool(given)


def master_curve(options: dict[str, Any]) -> tuple[CurveKeys, str] | None:
    """The master's key pair and the directory of authorized worker keys, or None."""
    if not _half(options, _CURVE_MASTER, "master"):
        return None
    _need_curve()
    public, secret = _load_key_file("curve_secret_key", options["curve_secret_key"], True)
    directory = options["curve_authorized_keys"]
    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise ValueError("zmq option 'curve_authorized_keys' must be a directory of worker "
                         f"public key files (*.key), got {directory!r}")
    AuthorizedKeys(str(directory)).load()  # refuse unreadable key files at config time
    return CurveKeys(public, secret), str(directory)


def worker_curve(options: dict[str, Any]) -> CurveKeys | None:
    """The worker's key pair and the master's public key, or None."""
    if not _half(options, _CURVE_WORKER, "worker"):
        return None
    _need_curve()
    public, secret = _load_key_file("curve_secret_key", options["curve_secret_key"], True)
    server, _ = _load_key_file("curve_server_key", options["curve_server_key"], False)
    return CurveKeys(public, secret, server)


class AuthorizedKeys:
    """The public keys of ``directory/*.key`` (file name without ``.key``: the key's name).

    Read again whenever the directory's modification time changes, so adding or removing
    a key file takes effect at the next connection attempt, without a restart.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.keys: dict[bytes, str] = {}  # binary (32 bytes) public key -> name
        self._stamp: int | None = None

    def load(self) -> dict[bytes, str]:
        keys = {}
        for entry in sorted(os.listdir(self.directory)):
            if not entry.endswith(".key"):
                continue
            path = os.path.join(self.directory, entry)
            public, _ = _load_key_file("curve_authorized_keys", path, False)
            keys[z85.decode(public)] = entry[:-len(".key")]
        return keys

    def lookup(self, key: bytes) -> str | None:
        """The name of the binary public ``key``, None if it is not authorized."""
        try:
            stamp: int | None = os.stat(self.directory).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.keys = self.load()
            except (OSError, ValueError) as e:  # keep the last good set; logged once
                log.msg(f"msgproto: zmq CURVE: cannot reload {self.directory} "
                        f"(keeping the {len(self.keys)} key(s) read before): {e}")
        return self.keys.get(key)


class ZapHandler:
    """ZeroMQ authentication (ZAP, RFC 27) of CURVE clients, in the reactor: no thread.

    libzmq asks ``inproc://zeromq.zap.01`` of the socket's context about every CURVE
    handshake and waits for the answer before the connection may carry messages.  Only one
    socket per context can bind that endpoint, and every socket of this module shares one
    context, so there is one handler per context, bound while at least one CURVE listener
    exists; each listener registers its authorized keys under its own ``ZMQ_ZAP_DOMAIN``.

    It is a ROUTER rather than the usual REP: a reply that cannot be sent cannot leave it
    stuck in REP's strict receive/send alternation.  A refused client gets status 400;
    libzmq then sends it a CURVE ERROR and closes the connection, so nothing it sent ever
    reaches the application.
    """

    _counter = itertools.count(1)

    def __init__(self, factory: ZmqFactory) -> None:
        self.factory = factory
        self.domains: dict[bytes, AuthorizedKeys] = {}
        self._logged: dict[tuple[bytes, bytes], float] = {}
        values = dict(_DEFAULTS, linger=0)
        self.conn = _Socket(factory, pyzmq.ROUTER, values, self)
        try:
            self.conn.socket.bind(ZAP_ENDPOINT)
        except pyzmq.ZMQError as e:
            self.conn.close(0)
            raise RuntimeError(f"zmq CURVE: cannot bind the ZAP handler at {ZAP_ENDPOINT} "
                               f"(another one runs in this process?): {e}") from None

    def register(self, keys: AuthorizedKeys) -> bytes:
        domain = b"msgproto-%d" % next(self._counter)
        self.domains[domain] = keys
        return domain

    def unregister(self, domain: bytes) -> None:
        self.domains.pop(domain, None)

    def close(self) -> None:
        # zmq_close releases an inproc endpoint later, in the reaper thread; an explicit
        # unbind releases it at once, so a new handler can bind it straight away.
        if self.conn.socket is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.socket.unbind(ZAP_ENDPOINT)
        self.conn.close(0)

    # --- from the socket
    def message_received(self, parts: list[Any]) -> None:
        frames = [part.bytes for part in parts]
        if len(frames) < 3 or frames[1] != b"":
            return  # not a ZAP request: nothing to answer
        routing, request = frames[0], frames[2:]
        if len(request) < 6 or request[0] != b"1.0":
            request_id = request[1] if len(request) > 1 else b""
            self._reply(routing, request_id, b"400", b"malformed ZAP request", b"")
            return
        _, request_id, domain, address, _identity, mechanism, *credentials = request
        keys = self.domains.get(domain)
        if keys is None:
            if mechanism == b"NULL" and not domain:
                # a plain (non-CURVE) socket of the same context: not ours to judge
                self._reply(routing, request_id, b"200", b"OK", b"")
            else:
                self._reply(routing, request_id, b"400", b"unknown ZAP domain", b"")
            return
        name = None
        if mechanism == b"CURVE" and len(credentials) == 1:
            name = keys.lookup(credentials[0])
        if name is None:
            self._refused(domain, address, mechanism, credentials)
            self._reply(routing, request_id, b"400", b"unknown key", b"")
        else:
            self._reply(routing, request_id, b"200", b"OK", name.encode("utf-8"))

    def _refused(self, domain: bytes, address: bytes, mechanism: bytes,
                 credentials: list[bytes]) -> None:
        key = (z85.encode(credentials[0])
               if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32
               else mechanism)
        now = self.factory.reactor.seconds()
        if now - self._logged.get((domain, key), -ZAP_LOG_INTERVAL) >= ZAP_LOG_INTERVAL:
            self._logged[(domain, key)] = now
            if len(self._logged) > 1000:
                self._logged.clear()
            log.msg(f"msgproto: zmq CURVE: refused {address.decode(errors='replace')}: "
                    f"public key {key.decode(errors='replace')} is not in "
                    f"{self.domains[domain].directory} (logged at most every "
                    f"{ZAP_LOG_INTERVAL:.0f} s per key)")

    def _reply(self, routing: bytes, request_id: bytes, status: bytes, text: bytes,
               user_id: bytes) -> None:
        with contextlib.suppress(pyzmq.ZMQError):  # the asking connection went away
            self.conn.send_parts([routing, b"", b"1.0", request_id, status, text, user_id, b""])

    def writable_again(self) -> None:
        pass


_zap: ZapHandler | None = None
_zap_users = 0


def _zap_acquire(factory: ZmqFactory, keys: AuthorizedKeys) -> bytes:
    """Register ``keys`` with the process's ZAP handler (bound first if needed)."""
    global _zap, _zap_users
    if _zap is None or _zap.factory is not factory or _zap.conn.socket is None:
        _zap, _zap_users = ZapHandler(factory), 0
    _zap_users += 1
    return _zap.register(keys)


def _zap_release(domain: bytes) -> None:
    global _zap, _zap_users
    if _zap is None:
        return
    _zap.unregister(domain)
    _zap_users -= 1
    if _zap_users <= 0:
        _zap.close()
        _zap, _zap_users = None, 0


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
                 receiver: FrameReceiver, curve_key_name: str | None = None) -> None:
        super().__init__(router.reactor, receiver, router.values["linger"], router.guarantees)
        self.router = router
        self.identity = identity
        self.address = address
        #: With CURVE: the name of the worker's authorized key file (``NAME`` of
        #: ``NAME.key``), as the ZAP handler approved it; None without CURVE.
        self.curve_key_name = curve_key_name

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        self.router.conn.send_parts([self.identity, *message])

    def flush(self) -> None:
        super().flush()
        if self.queue and not self.closed:  # retried after the socket's next read pass
            self.router.blocked[self.identity] = self

    def _finished(self, how: str) -> None:
        self.router.forget(self, tell_peer=how == DROPPED)

    def peer(self) -> str:
        key = f", CURVE key {self.curve_key_name}" if self.curve_key_name else ""
        return f"{self.address or '?'} (zmq id {self.identity.hex()[:12]}{key})"


class RouterListening:
    """The master's single ROUTER socket, serving every worker; a ``Listening``."""

    def __init__(self, reactor: Any, values: dict[str, int],
                 new_receiver: ReceiverFactory,
                 curve: tuple[CurveKeys, str] | None = None) -> None:
        self.reactor = reactor
        self.values = values
        self.new_receiver = new_receiver
        self.guarantees = _guarantees(values["max_message_size"], encrypted=curve is not None)
        self.peers: dict[bytes, PeerTransport] = {}
        self.blocked: dict[bytes, PeerTransport] = {}
        factory = _zmq_factory(reactor)
        self.conn = _Socket(factory, pyzmq.ROUTER, values, self)
        sock = self.conn.socket
        sock.set(pyzmq.ROUTER_MANDATORY, 1)  # EAGAIN / EHOSTUNREACH instead of dropping
        sock.set(pyzmq.ROUTER_HANDOVER, 1)  # a reconnecting DEALER gets its identity back
        sock.set(pyzmq.BACKLOG, values["backlog"])
        self.zap_domain: bytes | None = None
        if curve is not None:
            keys, directory = curve
            authorized = AuthorizedKeys(directory)
            if not authorized.load():
                log.msg(f"msgproto: zmq CURVE: no worker key (*.key) in {directory}: "
                        "no worker can connect until one is added")
            try:
                self.zap_domain = _zap_acquire(factory, authorized)
            except Exception:
                self.conn.close(0)
                raise
            keys.apply(sock)  # the ZAP handler is bound before the ROUTER accepts anyone
            sock.set(pyzmq.ZAP_DOMAIN, self.zap_domain)
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
                    self._release_zap()
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
        self._release_zap()  # after the ROUTER: it never runs without its ZAP handler
        d: defer.Deferred = defer.Deferred()
        self.reactor.callLater(0, d.callback, None)  # after the receivers were told
        return d

    def _release_zap(self) -> None:
        if self.zap_domain is not None:
            _zap_release(self.zap_domain)
            self.zap_domain = None

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
        key_name = None
        if self.zap_domain is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                key_name = part.get("User-Id") or None  # the ZAP handler's answer
        peer = PeerTransport(self, identity, address, self.new_receiver(), key_name)
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
    ``sndhwm``, ``rcvhwm``, ``max_message_size``, ``linger`` and ``backlog``, and for CURVE
    both ``curve_secret_key`` and ``curve_authorized_keys`` (the files are read here)."""
    _values(options, _MASTER_OPTIONS, "master")
    master_curve(options)
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
                                new_receiver, master_curve(options))
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
        if client.curve is not None:
            client.curve.apply(self.conn.socket)
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
                 retry_policy: Callable[[int], float] | None,
                 curve: CurveKeys | None = None) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.values = values
        self.curve = curve
        self.guarantees = _guarantees(values["max_message_size"], encrypted=curve is not None)
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
        raise ValueError("the zmq transport has no TLS; for encryption use ZeroMQ CURVE "
                         "(the curve_secret_key and curve_server_key transport options, see "
                         "docs/security/curve.rst)")
    if target.proxy_connection_string:
        raise ValueError("the zmq transport cannot tunnel through an HTTP proxy")
    values = _values(target.options, _WORKER_OPTIONS, "worker")
    curve = worker_curve(target.options)
    if target.ssh is not None:
        return _tunnelled_client(reactor, target, values, new_receiver, retry_policy, curve)
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
    return ZmqClientService(reactor, endpoint, values, new_receiver, retry_policy, curve)


def _tunnelled_client(reactor: Any, target: ClientTarget, values: dict[str, int],
                      new_receiver: ReceiverFactory, retry_policy: Any,
                      curve: CurveKeys | None) -> service.MultiService:
    """The DEALER client connecting to a local forward (127.0.0.1, a free port) whose
    connections go through the SSH tunnel to the master's ROUTER."""
    from buildbot_worker_msgproto.transports import ssh
    from buildbot_worker_msgproto.transports import ssh_forward
    from buildbot_worker_msgproto.transports.endpoints import check_ssh_target

    check_ssh_target(target)
    forward = ssh_forward.LocalForward(reactor, ssh.tunnel_endpoint(
        reactor, target.ssh, target.host or "localhost", target.port))
    client = ZmqClientService(reactor, "", values, new_receiver, retry_policy, curve)
    return ssh_forward.ForwardedService(forward, client,
                                lambda port: setattr(client, "endpoint",
                                                     f"tcp://127.0.0.1:{port}"))
