"""The worker's side of the zmq transport: a DEALER socket per session, made by the
client endpoint that Twisted's ``ClientService`` reconnects."""

from __future__ import annotations

import secrets
from typing import Any

import zmq as pyzmq
from twisted.internet import defer
from twisted.python.failure import Failure

from buildbot_worker_msgproto.security import curve
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.messaging import LinkEnded
from buildbot_worker_msgproto.transports.messaging import session_factory
from buildbot_worker_msgproto.transports.zmq.options import ZmqWorkerOptions
from buildbot_worker_msgproto.transports.zmq.options import host_port
from buildbot_worker_msgproto.transports.zmq.session import OPEN
from buildbot_worker_msgproto.transports.zmq.session import ZmqTransport
from buildbot_worker_msgproto.transports.zmq.sockets import ZmqContext


class DealerTransport(ZmqTransport):
    """The worker's side of one session: a DEALER socket with a fresh random identity, in
    a ZeroMQ context of its own that ends with the session."""

    peer_role = "master"

    def __init__(self, endpoint: ZmqClientEndpoint, address: str) -> None:
        super().__init__(endpoint.reactor, endpoint.options.linger, endpoint.guarantees)
        self.endpoint = endpoint
        self.address = address
        #: Fires with the protocol once the master was heard from (see ZmqClientEndpoint).
        self.heard: defer.Deferred = defer.Deferred(lambda _: self.abort())
        self.connected = False
        self.identity = secrets.token_hex(16).encode("ascii")
        self.context = ZmqContext(endpoint.reactor)
        try:
            self.conn = self.context.socket(pyzmq.DEALER, self, endpoint.options,
                                            identity=self.identity)
            if endpoint.curve is not None:
                endpoint.curve.apply(self.conn.socket)
            # ZeroMQ connects and reconnects by itself; messages wait in the socket meanwhile.
            self.conn.socket.connect(address)
        except Exception:
            self.context.close()
            raise
        self.queue.append(OPEN)
        self.flush()

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        self.conn.send_parts(list(message))

    def _release(self, tell_peer: bool) -> defer.Deferred:
        # After our ``close`` ZeroMQ flushes for up to ``linger`` ms in the background;
        # otherwise what is still queued belongs to a dead session and is discarded.
        self.conn.close(self.linger if self.close_sent else 0)
        self.endpoint.session_ended()
        return self.context.close()

    def message_received(self, parts: list[Any]) -> None:
        if not self.heard.called and self.protocol is not None:
            self.connected = True  # the master answered: the connection attempt succeeded
            self.heard.callback(self.protocol)
        self.message_parts(parts)

    def _report(self, reason: str) -> None:
        if self.connected:
            super()._report(reason)
            return
        # Never heard from the master: the connection attempt fails (ClientService counts
        # it), and only the session's receiver hears that its transport closed.
        if self.receiver is not None:
            self.receiver.transport_closed(reason)
        if not self.heard.called:
            self.heard.errback(Failure(LinkEnded(
                f"no answer from the master at {self.endpoint.master} ({reason})")))

    def writable_again(self) -> None:
        if self.queue:
            self.flush()

    def peer(self) -> str:
        return self.endpoint.master

    def describe(self) -> str:
        return f"{self.endpoint.master} (zmq id {self.identity.hex()[:12]}, {self.address})"


class ZmqClientEndpoint:
    """The worker's client endpoint: ``connect(factory)`` starts a session on a new DEALER
    socket at once (ZeroMQ connects lazily and silently, so ``open`` and ``hello`` wait in
    the socket until the master is reachable) and fires with its protocol once the master
    answered.  A session that ends before (the master is down, or refuses its CURVE key,
    and the session's handshake timeout ends it) is a failed connection attempt, counted
    by ``ClientService`` as for a refused TCP connect; cancelling the attempt aborts it."""

    def __init__(self, reactor: Any, address: str | None, master: str,
                 options: ZmqWorkerOptions, curve_keys: curve.CurveKeys | None = None,
                 forward: Any = None) -> None:
        self.reactor = reactor
        self.address = address
        self.master = master
        self.options = options
        self.curve = curve_keys
        self.guarantees = options.guarantees(encrypted=curve_keys is not None)
        #: An SSH tunnel's local forward (``acquire``/``release``), used while a session runs.
        self.forward = forward

    def __repr__(self) -> str:
        return f"<ZmqClientEndpoint {self.master}>"

    def connect(self, factory: Any) -> defer.Deferred:
        address = self.address
        try:
            if self.forward is not None:
                address = f"tcp://127.0.0.1:{self.forward.acquire()}"
            transport = DealerTransport(self, address)
        except Exception:
            if address is not self.address:
                self.session_ended()
            return defer.fail()
        try:
            transport.start(factory)
        except Exception:
            return defer.fail()
        return transport.heard

    def session_ended(self) -> None:
        if self.forward is not None:
            self.forward.release()


def client_endpoint(reactor: Any, target: ClientTarget) -> ZmqClientEndpoint:
    """The worker's DEALER endpoint to the master's ROUTER at host:port (or at the ZeroMQ
    endpoint given as connection string, or through an SSH tunnel's local forward)."""
    if target.use_tls or target.tls is not None:
        raise ValueError("the zmq transport has no TLS; for encryption use ZeroMQ CURVE "
                         "(the curve_secret_key and curve_server_key transport options, see "
                         "docs/security/curve.rst)")
    if target.proxy_connection_string:
        raise ValueError("the zmq transport cannot tunnel through an HTTP proxy")
    options = ZmqWorkerOptions.parse(target.options)
    keys = options.curve_keys()
    host = target.host or "localhost"
    master = f"{host}:{target.port}"
    if target.ssh is not None:
        from buildbot_worker_msgproto.reach import ssh
        from buildbot_worker_msgproto.reach.endpoints import check_ssh_target
        from buildbot_worker_msgproto.reach.ssh_forward import LocalForward

        check_ssh_target(target)
        forward = LocalForward(reactor, ssh.tunnel_endpoint(reactor, target.ssh, host,
                                                            target.port))
        return ZmqClientEndpoint(reactor, None, master, options, keys, forward)
    if target.connection_string:
        if "://" not in target.connection_string:
            raise ValueError("with the zmq transport a connection string must be a ZeroMQ "
                             f"endpoint (e.g. tcp://host:9990), not {target.connection_string!r}")
        address = target.connection_string
        master = host_port(address)
    else:
        address = f"tcp://{f'[{host}]' if ':' in host and not host.startswith('[') else host}" \
                  f":{target.port}"
    return ZmqClientEndpoint(reactor, address, master, options, keys)


def client_factory(reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory) -> Any:
    """Sessions over :func:`client_endpoint`."""
    return session_factory(new_receiver)
