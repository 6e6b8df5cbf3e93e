"""The master's side of the zmq transport: one ROUTER socket, a transport per worker
session (DEALER identity)."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import zmq as pyzmq
from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_worker_msgproto.security import curve
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.messaging import Marker
from buildbot_worker_msgproto.transports.messaging import MessageListening
from buildbot_worker_msgproto.transports.zmq.options import ZmqMasterOptions
from buildbot_worker_msgproto.transports.zmq.session import CLOSE
from buildbot_worker_msgproto.transports.zmq.session import ZmqTransport
from buildbot_worker_msgproto.transports.zmq.session import message_marker
from buildbot_worker_msgproto.transports.zmq.sockets import ZmqContext

#: ZeroMQ releases a closed socket's port in its I/O thread, a moment later: a listener
#: restarted in the same process retries binding for this long (seconds).
BIND_RETRY_FOR = 2.0


def _source_port(part: Any, host: str | None) -> int:
    """The TCP port the message ``part`` came from (libzmq's ``ZMQ_SRCFD``), if its socket
    still belongs to ``host``; else 0."""
    try:
        with socket.socket(fileno=os.dup(part.get(pyzmq.SRCFD))) as sock:
            address = sock.getpeername()
    except (OSError, pyzmq.ZMQError, ValueError):
        return 0
    if isinstance(address, tuple) and address[0] == host:
        return int(address[1])
    return 0


class PeerTransport(ZmqTransport):
    """One worker session (a DEALER identity) behind the master's shared ROUTER socket."""

    peer_role = "worker"

    def __init__(self, router: RouterListening, identity: bytes, address: str | None,
                 port: int = 0, curve_key_name: str | None = None) -> None:
        super().__init__(router.reactor, router.options.linger, router.guarantees)
        self.router = router
        self.slot = self.session = self.identity = identity
        self.address = address
        self.port = port
        #: With CURVE: the name of the worker's authorized key file (``NAME`` of
        #: ``NAME.key``), as the ZAP handler approved it; None without CURVE.
        self.curve_key_name = curve_key_name

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        self.router.conn.send_parts([self.identity, *message])

    def flush(self) -> None:
        super().flush()
        if self.queue and not self.closed:  # retried after the socket's next read pass
            self.router.blocked[self.identity] = self

    def _release(self, tell_peer: bool) -> None:
        self.router.forget(self)
        self.router.blocked.pop(self.identity, None)
        if tell_peer:
            self.router.tell_closed(self.identity)

    def peer(self) -> str:
        return f"{self.address or '?'}:{self.port}"

    def describe(self) -> str:
        key = f", CURVE key {self.curve_key_name}" if self.curve_key_name else ""
        return f"{self.peer()} (zmq id {self.identity.hex()[:12]}{key})"


class RouterListening(MessageListening):
    """The master's single ROUTER socket, serving every worker; a ``Listening``.  It owns
    its ZeroMQ context and, with CURVE, the ZAP handler in it."""

    def __init__(self, reactor: Any, options: ZmqMasterOptions, new_receiver: ReceiverFactory,
                 curve_keys: tuple[curve.CurveKeys, str] | None = None) -> None:
        super().__init__(new_receiver)
        self.reactor = reactor
        self.options = options
        self.guarantees = options.guarantees(encrypted=curve_keys is not None)
        self.blocked: dict[bytes, PeerTransport] = {}
        self.context = ZmqContext(reactor)
        self.conn = self.context.socket(pyzmq.ROUTER, self, options)
        sock = self.conn.socket
        sock.set(pyzmq.ROUTER_MANDATORY, 1)  # EAGAIN / EHOSTUNREACH instead of dropping
        sock.set(pyzmq.ROUTER_HANDOVER, 1)  # a reconnecting DEALER gets its identity back
        sock.set(pyzmq.BACKLOG, options.backlog)
        self.zap: curve.ZapHandler | None = None
        if curve_keys is not None:
            keys, directory = curve_keys
            authorized = curve.AuthorizedKeys(directory)
            if not authorized.load():
                log.msg(f"msgproto: zmq CURVE: no worker key (*.key) in {directory}: "
                        "no worker can connect until one is added")
            try:
                self.zap = curve.ZapHandler(self.context, authorized)
            except Exception:
                self.conn.close(0)
                self.context.close()
                raise
            keys.apply(sock)  # the ZAP handler is bound before the ROUTER accepts anyone
            sock.set(pyzmq.ZAP_DOMAIN, curve.ZAP_DOMAIN)
        self.endpoint = ""

    async def bind(self, endpoint: str) -> None:
        deadline = self.reactor.seconds() + BIND_RETRY_FOR
        while True:
            try:
                self.conn.socket.bind(endpoint)
                break
            except pyzmq.ZMQError as e:
                if e.errno != pyzmq.EADDRINUSE or self.reactor.seconds() >= deadline:
                    await self._close(0)
                    raise
            await task.deferLater(self.reactor, 0.02, lambda: None)
        self.endpoint = self.conn.socket.get(pyzmq.LAST_ENDPOINT).decode()

    # --- Listening
    def stop(self) -> defer.Deferred:
        """Close the socket, which ends every session it serves (each peer is told); fires
        once the receivers were told and the context is terminated."""
        if self.conn.socket is not None:
            for peer in list(self.peers.values()):
                peer.end("the zmq listener stopped", tell_peer=True)
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.socket.unbind(self.endpoint)  # stop accepting at once
        return defer.ensureDeferred(self._close(self.options.linger))

    async def _close(self, linger: int) -> None:
        self.conn.close(linger)
        if self.zap is not None:  # after the ROUTER: it never runs without its handler
            self.zap.close()
        await task.deferLater(self.reactor, 0, lambda: None)  # the receivers were told
        await self.context.close()

    def address(self) -> str:
        return f"zmq:{self.endpoint}"

    @property
    def port_number(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    # --- from the socket
    def message_received(self, parts: list[Any]) -> None:
        identity, parts = parts[0].bytes, parts[1:]
        peer = self.peers.get(identity)
        if peer is not None:
            peer.message_parts(parts)
            return
        marker, _ = message_marker(parts)
        if marker in (Marker.OPEN, Marker.CLOSE, Marker.ABORT):
            self.dispatch(identity, identity, marker, meta=parts[0])
        else:  # a frame of an ended session, or of a former master's; or garbage
            self.refuse(identity, identity)

    def new_peer(self, identity: bytes, session: bytes, part: Any) -> PeerTransport:
        try:
            address = part.get("Peer-Address")
        except pyzmq.ZMQError:
            address = None
        key_name = None
        if self.zap is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                key_name = part.get("User-Id") or None  # the ZAP handler's answer
        peer = PeerTransport(self, identity, address, _source_port(part, address), key_name)
        if key_name is not None:
            log.msg(f"msgproto: zmq: session from {peer.describe()}")
        return peer

    def refuse(self, identity: bytes, session: bytes) -> None:
        self.tell_closed(identity)

    def writable_again(self) -> None:
        for peer in list(self.blocked.values()):
            self.blocked.pop(peer.identity, None)
            peer.flush()

    def tell_closed(self, identity: bytes) -> None:
        """Best effort ``close`` to a DEALER (if it is gone or full, its heartbeat notices)."""
        if self.conn.socket is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.send_parts([identity, *CLOSE])


async def listen(reactor: Any, options: ZmqMasterOptions | dict[str, Any],
                 new_receiver: ReceiverFactory) -> RouterListening:
    """Bind the master's one ROUTER socket; every worker is a peer of it."""
    options = ZmqMasterOptions.parse(options)
    listening = RouterListening(reactor, options, new_receiver, options.curve_keys())
    await listening.bind(options.bind_endpoint())
    return listening
