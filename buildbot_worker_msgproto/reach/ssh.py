"""SSH tunnelling: reach a master that is only reachable through an SSH server.

The worker logs in to an SSH server with a key (``twisted.conch``, no ``ssh`` binary),
verifies the server's host key against a ``known_hosts`` file (no trust on first use), and
opens a ``direct-tcpip`` channel per connection to the master's host and port *as seen from
the SSH server*.  :class:`SSHTunnelEndpoint` is an ordinary Twisted client endpoint whose
connections are such channels, so every stream transport (framed tcp and PB, amp, websocket,
amqp) and TLS on top of them run through it unchanged.  ``LocalForward`` serves
transports that open their own sockets (zmq), in :mod:`.ssh_forward`: it listens on
127.0.0.1 and splices each accepted connection into a channel.  The settings (server,
keys, known_hosts) are :mod:`.ssh_settings`, a channel is :mod:`.ssh_channel`; this
module is the SSH connection (host key check, login) and the endpoint.

The channels of one endpoint share one SSH connection while any of them is open; the
connection is closed with its last channel, so a reconnect logs in again (and a half-dead
SSH connection is never reused).  Every failure (TCP, host key, login, channel refused)
fails ``connect()`` with an :class:`SSHTunnelError` saying why, so the reconnecting
service retries with backoff as for a refused connection.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.conch.error import HostKeyChanged
from twisted.conch.ssh import connection as ssh_connection
from twisted.conch.ssh import forwarding
from twisted.conch.ssh import keys
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh import userauth
from twisted.internet import defer
from twisted.internet import error
from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_worker_msgproto.reach.ssh_channel import QUIET
from buildbot_worker_msgproto.reach.ssh_channel import ChannelRefused
from buildbot_worker_msgproto.reach.ssh_channel import HostKeyRejected
from buildbot_worker_msgproto.reach.ssh_channel import SSHLoginRefused
from buildbot_worker_msgproto.reach.ssh_channel import SSHTunnelAddress
from buildbot_worker_msgproto.reach.ssh_channel import SSHTunnelError
from buildbot_worker_msgproto.reach.ssh_channel import TunnelChannel
from buildbot_worker_msgproto.reach.ssh_settings import SSHSettings
from buildbot_worker_msgproto.reach.ssh_settings import fingerprint
from buildbot_worker_msgproto.reach.ssh_settings import known_hosts_name
from buildbot_worker_msgproto.reach.ssh_settings import load_private_key
from buildbot_worker_msgproto.reach.ssh_settings import parse_destination

#: Seconds for TCP connect + key exchange + login before the attempt is given up.
SSH_CONNECT_TIMEOUT = 30.0

#: Host key algorithms for each known_hosts key type.
_ALGORITHMS = {b"ssh-rsa": (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa")}


class _Connection(ssh_connection.SSHConnection):
    """The ``ssh-connection`` service: channels, and no window growth for paused ones."""

    _log = QUIET

    def __init__(self, tunnel: _Tunnel) -> None:
        super().__init__()
        self.tunnel = tunnel

    def serviceStarted(self) -> None:  # noqa: N802
        super().serviceStarted()
        self.tunnel.logged_in(self)

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:  # noqa: N802, N803
        if getattr(channel, "reading_paused", False):
            return  # resumeProducing widens it again
        super().adjustWindow(channel, bytesToAdd)


class _KeyAuth(userauth.SSHUserAuthClient):
    """Public-key login only, with each configured key in turn."""

    preferredOrder = [b"publickey"]
    _log = QUIET

    def __init__(self, user: bytes, instance: Any, private_keys: tuple[keys.Key, ...]) -> None:
        super().__init__(user, instance)
        self._keys = list(private_keys)
        self._key: keys.Key | None = None

    def getPublicKey(self) -> keys.Key | None:  # noqa: N802
        if not self._keys:
            return None
        self._key = self._keys.pop(0)
        return self._key.public()

    def getPrivateKey(self) -> defer.Deferred:  # noqa: N802
        return defer.succeed(self._key)

    def auth_password(self) -> bool:
        return False  # not supported: keys only

    def auth_keyboard_interactive(self) -> bool:
        return False


class _ClientTransport(ssh_transport.SSHClientTransport):
    """The SSH client: checks the host key against known_hosts, then logs in."""

    _log = QUIET

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel
        self.stage = "key exchange"
        self.failure: SSHTunnelError | None = None

    def connectionMade(self) -> None:  # noqa: N802
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)
        # ask for the host key types known_hosts has, as ssh(1) does
        preferred = []
        try:
            for key_type in self.tunnel.settings.known_key_types():
                preferred.extend(_ALGORITHMS.get(key_type, (key_type,)))
        except OSError:
            pass
        supported = list(self.supportedPublicKeys)
        self.supportedPublicKeys = ([a for a in preferred if a in supported]
                                    + [a for a in supported if a not in preferred])
        super().connectionMade()

    def verifyHostKey(self, hostKey: bytes, fingerprint_: bytes) -> defer.Deferred:  # noqa: N802, N803
        settings = self.tunnel.settings
        key = keys.Key.fromString(hostKey)
        name = settings.host_name
        what = f"{key.sshType().decode('ascii', 'replace')} {fingerprint(key)}"
        try:
            known = settings.known_hosts_file().hasHostKey(name.encode("utf-8"), key)
        except HostKeyChanged as e:
            self.failure = HostKeyRejected(
                f"the SSH server {name} presented the host key {what}, which is NOT the one "
                f"for {name} in {settings.known_hosts} (line {e.lineno}): refusing to connect "
                "(a man in the middle, or a reinstalled server: check with its administrator)")
            return defer.fail(self.failure)
        if not known:
            self.failure = HostKeyRejected(
                f"the SSH server {name} presented the host key {what}, which is not in "
                f"{settings.known_hosts}: refusing to connect (add it there once its "
                "fingerprint is confirmed with the server's administrator)")
            return defer.fail(self.failure)
        self.stage = "login"
        return defer.succeed(True)

    def connectionSecure(self) -> None:  # noqa: N802
        settings = self.tunnel.settings
        self.requestService(_KeyAuth(settings.user.encode("utf-8"), _Connection(self.tunnel),
                                     settings.keys))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:  # noqa: N802
        if reason == ssh_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE \
                and self.failure is None:
            s = self.tunnel.settings
            self.failure = SSHLoginRefused(
                f"the SSH server {s.where} refused the login of {s.user!r} with the key(s) "
                f"{', '.join(s.key_files)}: is the public key in that user's "
                "authorized_keys on the SSH server?")
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:  # noqa: N802, N803
        if self.failure is None:
            self.failure = SSHTunnelError(
                f"the SSH server {self.tunnel.settings.where} disconnected during the "
                f"{self.stage}: {description.decode('utf-8', 'replace')} (code {reasonCode})")

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.tunnel.transport_lost(self, reason)
        super().connectionLost(reason)


class _ClientFactory(protocol.Factory):
    noisy = False

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: Any) -> _ClientTransport:  # noqa: N802
        proto = _ClientTransport(self.tunnel)
        proto.factory = self
        self.tunnel.ssh = proto
        return proto


class _Tunnel:
    """One SSH connection and its channels; ``ready`` fires once logged in."""

    def __init__(self, endpoint: SSHTunnelEndpoint) -> None:
        self.endpoint = endpoint
        self.reactor = endpoint.reactor
        self.settings = endpoint.settings
        self.ready: defer.Deferred = defer.Deferred()
        self.conn: _Connection | None = None
        self.ssh: _ClientTransport | None = None
        self.channels: set[TunnelChannel] = set()
        self.lost_reason: Failure | None = None
        self.closing = False
        self.lost = False
        self.usable = True
        self._waiters: list[defer.Deferred] = []
        self.ready.addBoth(self._fire_waiters)
        s = self.settings
        self._connecting = HostnameEndpoint(self.reactor, s.host, s.port,
                                            timeout=SSH_CONNECT_TIMEOUT).connect(
            _ClientFactory(self))
        self._connecting.addErrback(self._tcp_failed)
        self._timer = self.reactor.callLater(SSH_CONNECT_TIMEOUT, self._timed_out)

    def when_ready(self) -> defer.Deferred:
        """A new Deferred firing with this tunnel once logged in (or failing)."""
        d: defer.Deferred = defer.Deferred()
        if self.ready.called:
            self._fire(d, self._result)
        else:
            self._waiters.append(d)
        return d

    _result: Any = None

    def _fire_waiters(self, result: Any) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d, result)
        if not isinstance(result, Failure) and not self.channels:
            self.close()  # every waiter gave up meanwhile: do not keep an idle login

    @staticmethod
    def _fire(d: defer.Deferred, result: Any) -> None:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def _tcp_failed(self, reason: Failure) -> None:
        self.usable = False
        self._fail(SSHTunnelError(f"cannot reach the SSH server {self.settings.where}: "
                                  f"{reason.getErrorMessage()}"))

    def _timed_out(self) -> None:
        self._timer = None
        stage = self.ssh.stage if self.ssh is not None else "TCP connection"
        self._fail(SSHTunnelError(f"the SSH server {self.settings.where} did not finish the "
                                  f"{stage} within {SSH_CONNECT_TIMEOUT:g} s"))
        self.drop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fail(self, exc: Exception) -> None:
        self.usable = False
        self._cancel_timer()
        if not self.ready.called:
            self.ready.errback(Failure(exc))

    def logged_in(self, conn: _Connection) -> None:
        self._cancel_timer()
        self.conn = conn
        if self.ssh is not None:
            self.ssh.stage = "session"
        if not self.ready.called:
            self.ready.callback(self)

    def transport_lost(self, ssh: _ClientTransport, reason: Failure | None) -> None:
        self.usable = False
        self.lost = True
        self._cancel_timer()
        why = reason.getErrorMessage() if reason is not None else "closed"
        if not self.ready.called:
            self._fail(ssh.failure or SSHTunnelError(
                f"the SSH connection to {self.settings.where} was lost during the "
                f"{ssh.stage}: {why}"))
        elif not self.closing:
            log.msg(f"SSH tunnel: the SSH connection to {self.settings.where} was lost: {why}")
        self.lost_reason = Failure(error.ConnectionLost(
            f"the SSH connection to {self.settings.where} was lost: {why}"))
        self.endpoint.tunnel_gone(self)

    def local_address(self) -> Any:
        if self.ssh is not None and self.ssh.transport is not None:
            return self.ssh.transport.getHost()
        return None

    def open_channel(self, factory: protocol.Factory, dest_host: str,
                     dest_port: int) -> defer.Deferred:
        """A channel to ``dest_host:dest_port``; fires with the connected protocol."""
        channel: list[TunnelChannel] = []

        def cancel(d: defer.Deferred) -> None:
            if channel:
                channel[0].abortConnection()

        ready: defer.Deferred = defer.Deferred(cancel)
        dest = SSHTunnelAddress(dest_host, dest_port, self.settings.where)
        chan = TunnelChannel(self, factory, dest, ready)
        channel.append(chan)
        self.channels.add(chan)
        self.conn.openChannel(chan, forwarding.packOpen_direct_tcpip(
            (dest_host, dest_port), ("127.0.0.1", 0)))
        return ready

    def channel_released(self, channel: TunnelChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            self.close()

    def close(self) -> None:
        """Log out (the last channel is gone)."""
        self.usable = False
        self.endpoint.tunnel_gone(self)
        if self.closing:
            return
        self.closing = True
        if self.ssh is not None and self.ssh.transport is not None and not self.lost:
            self.ssh.sendDisconnect(ssh_transport.DISCONNECT_BY_APPLICATION, b"tunnel closed")

    def drop(self) -> None:
        """Abort the SSH connection now."""
        self.usable = False
        self.closing = True
        self.endpoint.tunnel_gone(self)
        if self.ssh is not None and self.ssh.transport is not None:
            if not self.lost:
                self.ssh.transport.abortConnection()
        elif not self._connecting.called:
            self._connecting.cancel()


# ============================================================================ endpoints


@implementer(IStreamClientEndpoint)
class SSHTunnelEndpoint:
    """Connects to ``dest_host:dest_port`` through a ``direct-tcpip`` channel of an SSH
    connection to ``settings``' server (``dest_host`` is resolved by the SSH server)."""

    def __init__(self, reactor: Any, settings: SSHSettings, dest_host: str,
                 dest_port: int) -> None:
        self.reactor = reactor
        self.settings = settings
        self.dest_host = dest_host
        self.dest_port = int(dest_port)
        self._tunnel: _Tunnel | None = None

    def __repr__(self) -> str:
        return (f"<SSHTunnelEndpoint ssh:{self.settings.where} -> "
                f"{self.dest_host}:{self.dest_port}>")

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        tunnel = self._tunnel
        if tunnel is None or not tunnel.usable:
            tunnel = self._tunnel = _Tunnel(self)
        opening: list[defer.Deferred] = []

        def cancel(d: defer.Deferred) -> None:
            if opening:
                opening[0].cancel()
            elif not tunnel.channels:
                tunnel.drop()

        result: defer.Deferred = defer.Deferred(cancel)

        def logged_in(t: _Tunnel) -> None:
            if result.called:
                return
            if not t.usable:  # lost between login and now
                raise SSHTunnelError(f"the SSH connection to {self.settings.where} was lost")
            d = t.open_channel(factory, self.dest_host, self.dest_port)
            opening.append(d)
            d.addCallbacks(result.callback, failed)

        def failed(reason: Failure) -> None:
            if result.called:
                return
            if not reason.check(defer.CancelledError):
                log.msg(f"SSH tunnel to the master {self.dest_host}:{self.dest_port} via "
                        f"{self.settings.where} failed: {reason.getErrorMessage()}; "
                        "will retry")
            result.errback(reason)

        tunnel.when_ready().addCallback(logged_in).addErrback(failed)
        return result

    def tunnel_gone(self, tunnel: _Tunnel) -> None:
        if self._tunnel is tunnel:
            self._tunnel = None


def tunnel_endpoint(reactor: Any, settings: SSHSettings, dest_host: str,
                    dest_port: int) -> SSHTunnelEndpoint:
    """The tunnel endpoint to the master, logging that a tunnel is used."""
    log.msg(f"Using SSH tunnel via {settings.where} (host key checked against "
            f"{settings.known_hosts}) to reach the master at {dest_host}:{dest_port}")
    return SSHTunnelEndpoint(reactor, settings, dest_host, dest_port)


__all__ = ["ChannelRefused", "HostKeyRejected", "SSHLoginRefused", "SSHSettings",
           "SSHTunnelAddress", "SSHTunnelEndpoint", "SSHTunnelError", "fingerprint",
           "known_hosts_name", "load_private_key", "parse_destination", "tunnel_endpoint"]
