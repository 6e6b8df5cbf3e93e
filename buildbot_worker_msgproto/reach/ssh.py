"""SSH tunnelling: reach a master that is only reachable through an SSH server.

The worker logs in to an SSH server with a key (``twisted.conch``, no ``ssh`` binary),
verifies the server's host key against a ``known_hosts`` file (no trust on first use), and
opens a ``direct-tcpip`` channel per connection to the master's host and port *as seen from
the SSH server*.  :class:`SSHTunnelEndpoint` is an ordinary Twisted client endpoint whose
connections are such channels, so every stream transport (framed tcp and PB, amp, websocket,
amqp) and TLS on top of them run through it unchanged.  :class:`LocalForward` serves
transports that open their own sockets (zmq), in :mod:`.ssh_forward`: it listens on
127.0.0.1 and splices each accepted connection into a channel.

The channels of one endpoint share one SSH connection while any of them is open; the
connection is closed with its last channel, so a reconnect logs in again (and a half-dead
SSH connection is never reused).  Every failure (TCP, host key, login, channel refused)
fails ``connect()`` with an :class:`SSHTunnelError` saying why, so the reconnecting
service retries with backoff as for a refused connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import ipaddress
import os
import re
from typing import Any

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.error import ConchError
from twisted.conch.error import HostKeyChanged
from twisted.conch.ssh import connection as ssh_connection
from twisted.conch.ssh import forwarding
from twisted.conch.ssh import keys
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh import userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer
from twisted.internet import error
from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.interfaces import IConsumer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.logger import LogLevel
from twisted.logger import globalLogPublisher
from twisted.python import log
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from buildbot_worker_msgproto.security.files import read_file

#: Seconds for TCP connect + key exchange + login before the attempt is given up.
SSH_CONNECT_TIMEOUT = 30.0
#: Seconds the SSH server may take to answer a channel open (else the SSH connection is
#: presumed dead and dropped).
CHANNEL_OPEN_TIMEOUT = 30.0
#: Our receive window per channel (OpenSSH uses 2 MiB for TCP forwarding).
CHANNEL_WINDOW = 2 * 1024 * 1024
CHANNEL_MAX_PACKET = 32768
#: Private keys tried when none is given, as ssh(1) does.
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")

#: Host key algorithms for each known_hosts key type.
_ALGORITHMS = {b"ssh-rsa": (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa")}


#: SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 5.1): what to check.
_OPEN_FAILURES = {
    1: "; the SSH server does not allow it: check AllowTcpForwarding and PermitOpen in "
       "its sshd_config and the options of the key in authorized_keys",
    2: "; the SSH server could not connect there: is the master listening on that host "
       "and port as seen from the SSH server?",
}


def _warnings_only(event: dict[str, Any]) -> None:
    if event.get("log_level", LogLevel.info) >= LogLevel.warn:
        globalLogPublisher(event)


#: conch logs every channel open and close at info level: keep warnings and errors only.
_QUIET = Logger(observer=_warnings_only)


class SSHTunnelError(Exception):
    """The SSH tunnel could not be set up (the message says why)."""


class HostKeyRejected(SSHTunnelError):
    """The SSH server's host key is unknown or differs from known_hosts."""


class SSHLoginRefused(SSHTunnelError):
    """The SSH server accepted none of our keys."""


class ChannelRefused(SSHTunnelError):
    """The SSH server refused to open the tunnel to the master (e.g. AllowTcpForwarding)."""


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as OpenSSH prints it (``SHA256:...``)."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in known_hosts: ``host``, or ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def parse_destination(value: str) -> tuple[str, str, int]:
    """``user@host[:port]`` (``[v6addr]:port`` for IPv6) as (user, host, port).

    The user defaults to the current login name, the port to 22.  Raises ValueError.
    """
    text = value.strip()
    user, at, hostport = text.rpartition("@")
    if at and not user:
        raise ValueError(f"SSH tunnel {value!r}: empty user name before '@'")
    user = user or getpass.getuser()
    match = (re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", hostport)
             or re.fullmatch(r"([^:\[\]\s]+)(?::(\d+))?", hostport))
    if match is None:
        try:  # a bare IPv6 address, port 22
            ipaddress.IPv6Address(hostport)
            match = re.fullmatch(r"(.+)()", hostport)
        except ValueError:
            raise ValueError(f"SSH tunnel {value!r} is not USER@HOST[:PORT] "
                             "(IPv6: USER@[ADDRESS]:PORT)") from None
    host, port_text = match.group(1), match.group(2)
    port = int(port_text) if port_text else 22
    if not 0 < port < 65536:
        raise ValueError(f"SSH tunnel {value!r}: port {port} out of range")
    return user, host, port


def load_private_key(path: str) -> keys.Key:
    """The private key in ``path`` (OpenSSH or PEM format, no passphrase)."""
    data = read_file(path, "SSH key")
    try:
        key = keys.Key.fromString(data)
    except keys.EncryptedKeyError:
        raise ValueError(f"the SSH key {path!r} is protected by a passphrase, which is not "
                         "supported: use a key without one for the worker") from None
    except (keys.BadKeyError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load the SSH key {path!r}: {e or 'not a key'}") from None
    if key.isPublic():
        raise ValueError(f"{path!r} is a public key; --ssh-key needs the private key file")
    return key


def _home(*names: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".ssh", *names)


@dataclasses.dataclass(frozen=True)
class SSHSettings:
    """Where the SSH server is, who logs in with which keys, and how its host key is checked."""

    host: str
    user: str
    key_files: tuple[str, ...]
    known_hosts: str
    port: int = 22
    #: The loaded private keys, in the order of ``key_files``.
    keys: tuple[keys.Key, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def create(cls, tunnel: str | None, key_files: str | list[str] | tuple[str, ...] | None = None,
               known_hosts: str | None = None) -> SSHSettings | None:
        """Checked settings with the keys loaded, or None without ``tunnel``.

        ``tunnel`` is ``user@host[:port]``; ``key_files`` default to the first existing of
        ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``; ``known_hosts`` to
        ``~/.ssh/known_hosts``, which must have an entry for the SSH server.
        Raises ValueError with what is wrong.
        """
        if not tunnel:
            if key_files or known_hosts:
                raise ValueError("ssh_key and ssh_known_hosts need ssh_tunnel (USER@HOST[:PORT])")
            return None
        user, host, port = parse_destination(tunnel)
        if isinstance(key_files, str):
            key_files = [key_files]
        if key_files:
            paths = [os.path.abspath(os.path.expanduser(p)) for p in key_files]
        else:
            paths = [p for p in map(_home, DEFAULT_KEY_NAMES) if os.path.exists(p)][:1]
            if not paths:
                raise ValueError("no SSH key given and none of ~/.ssh/"
                                 f"{{{','.join(DEFAULT_KEY_NAMES)}}} exists: make one "
                                 "(ssh-keygen -t ed25519 -N '') and name it with --ssh-key")
        loaded = tuple(load_private_key(p) for p in paths)
        known_hosts = os.path.abspath(os.path.expanduser(known_hosts or _home("known_hosts")))
        settings = cls(host, user, tuple(paths), known_hosts, port, loaded)
        settings.check_known_hosts()
        return settings

    @property
    def where(self) -> str:
        """``user@host:port``, for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def host_name(self) -> str:
        """The SSH server's name in known_hosts."""
        return known_hosts_name(self.host, self.port)

    def known_hosts_file(self) -> KnownHostsFile:
        """The known_hosts file (read again at each check, so edits apply at once)."""
        return KnownHostsFile.fromPath(FilePath(self.known_hosts))

    def known_key_types(self) -> list[bytes]:
        """The key types known_hosts has for the SSH server (hashed entries included)."""
        name = self.host_name.encode("utf-8")
        types = []
        for entry in self.known_hosts_file().iterentries():
            key_type = getattr(entry, "keyType", None)
            if key_type and entry.matchesHost(name) and key_type not in types:
                types.append(key_type)
        return types

    def check_known_hosts(self) -> None:
        """Raise ValueError unless known_hosts is readable and names the SSH server."""
        try:
            with open(self.known_hosts, "rb"):
                pass
        except OSError as e:
            raise ValueError(f"cannot read the SSH known_hosts file {self.known_hosts!r}: "
                             f"{e.strerror or e}") from None
        if not self.known_key_types():
            port = f"-p {self.port} " if self.port != 22 else ""
            raise ValueError(
                f"the SSH known_hosts file {self.known_hosts!r} has no host key for "
                f"{self.host_name}: add it, e.g. ssh-keyscan {port}{self.host} >> "
                f"{self.known_hosts} (and check the key's fingerprint with the SSH server's "
                "administrator)")


@implementer(IAddress)
@dataclasses.dataclass(frozen=True)
class SSHTunnelAddress:
    """The far end of a tunnel channel: ``host:port`` as the SSH server ``via`` reaches it."""

    host: str
    port: int
    via: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} via ssh {self.via}"


# ============================================================================ the channel


@implementer(IConsumer, IPushProducer)
class TunnelChannel(SSHChannel):
    """One ``direct-tcpip`` channel, exposed to a protocol as its transport.

    Writes beyond the server's window are buffered and a registered producer is paused
    until the window opens again.  ``pauseProducing`` stops delivering data *and* stops
    widening our window, so the server stops sending.  EOF or close from the server closes
    the connection (there is no half-close); ``connectionLost`` is called exactly once.
    """

    name = b"direct-tcpip"
    _log = _QUIET

    def __init__(self, tunnel: _Tunnel, factory: protocol.Factory, dest: SSHTunnelAddress,
                 ready: defer.Deferred) -> None:
        super().__init__(localWindow=CHANNEL_WINDOW, localMaxPacket=CHANNEL_MAX_PACKET,
                         conn=tunnel.conn)
        self.tunnel = tunnel
        self.factory = factory
        self.dest = dest
        self.ready: defer.Deferred | None = ready
        self.protocol: protocol.Protocol | None = None
        self.disconnecting = False
        self.reading_paused = False
        self._out = bytearray()
        self._in: list[bytes] = []
        self._producer: Any = None
        self._streaming = False
        self._producer_paused = False
        self._reported = False
        self._released = False
        self._reason: Failure | None = None
        self._timer = tunnel.reactor.callLater(CHANNEL_OPEN_TIMEOUT, self._open_timed_out)

    # -- opening
    def channelOpen(self, specificData: bytes) -> None:  # noqa: N802 - conch's name
        self._cancel_timer()
        ready, self.ready = self.ready, None
        if ready is None or ready.called:  # cancelled meanwhile
            self._close_now()
            return
        try:
            proto = self.factory.buildProtocol(self.dest)
        except Exception:
            self._close_now()
            ready.errback()
            return
        if proto is None:
            self._close_now()
            ready.errback(Failure(error.ConnectionRefusedError("the factory refused")))
            return
        self.protocol = proto
        proto.makeConnection(self)
        ready.callback(proto)

    def openFailed(self, reason: Any) -> None:  # noqa: N802
        self._cancel_timer()
        self._release()
        ready, self.ready = self.ready, None
        if ready is None or ready.called:
            return
        if isinstance(reason, ConchError):
            desc = reason.value.decode("utf-8", "replace") if isinstance(
                reason.value, bytes) else str(reason.value)
            hint = _OPEN_FAILURES.get(reason.data, "")
            ready.errback(ChannelRefused(
                f"the SSH server {self.tunnel.settings.where} refused to open a tunnel to "
                f"{self.dest.host}:{self.dest.port}: {desc or 'refused'} "
                f"(code {reason.data}){hint}"))
        else:
            ready.errback(SSHTunnelError(
                f"the SSH connection to {self.tunnel.settings.where} was lost while opening "
                f"the tunnel to {self.dest.host}:{self.dest.port}"))

    def _open_timed_out(self) -> None:
        self._timer = None
        ready, self.ready = self.ready, None
        if ready is not None and not ready.called:
            ready.errback(SSHTunnelError(
                f"the SSH server {self.tunnel.settings.where} did not answer the request "
                f"for a tunnel to {self.dest.host}:{self.dest.port} within "
                f"{CHANNEL_OPEN_TIMEOUT:g} s; dropping that SSH connection"))
        self.tunnel.drop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- receiving
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.reading_paused or self._in:
            self._in.append(data)
        elif self.protocol is not None and not self._reported:
            self.protocol.dataReceived(data)

    def eofReceived(self) -> None:  # noqa: N802
        # The master closed its side; we have no half-close: finish sending, then close.
        self.loseConnection()

    def closeReceived(self) -> None:  # noqa: N802
        # The server will accept nothing more: drop what is queued and close our side too.
        self._out.clear()
        self._close_now()

    def closed(self) -> None:
        self._cancel_timer()
        self._report_lost(self._reason or self.tunnel.lost_reason
                          or Failure(error.ConnectionDone("tunnel channel closed")))
        self._release()

    # -- sending
    def write(self, data: bytes) -> None:
        if self.disconnecting or self.localClosed or not data:
            return
        self._out += data
        self._flush()

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def addWindowBytes(self, data: int) -> None:  # noqa: N802
        self.remoteWindowLeft += data
        self._flush()

    def _flush(self) -> None:
        sent = 0
        if self.conn is not None and not self.localClosed:
            step = max(1, self.remoteMaxPacket)
            with memoryview(self._out) as view:
                while sent < len(view) and self.remoteWindowLeft > 0:
                    n = min(len(view) - sent, self.remoteWindowLeft, step)
                    self.conn.sendData(self, bytes(view[sent:sent + n]))
                    self.remoteWindowLeft -= n
                    sent += n
        if sent:
            del self._out[:sent]
        if self._out:
            self._pause_producer()
        else:
            if self.disconnecting:
                self._finish_close()
                return
            self._resume_producer()

    def _pause_producer(self) -> None:
        if self._producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_producer(self) -> None:
        if self._producer is None:
            return
        if not self._streaming:
            self._producer.resumeProducing()
        elif self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    # -- ITransport / IConsumer / IPushProducer
    def loseConnection(self) -> None:  # noqa: N802
        if self.disconnecting:
            return
        self.disconnecting = True
        if not self._out:
            self._finish_close()

    def abortConnection(self) -> None:  # noqa: N802
        """Drop the channel now; the protocol hears connectionLost at once."""
        self._out.clear()
        self.disconnecting = True
        self._reason = self._reason or Failure(error.ConnectionAborted())
        self._close_now()
        self.tunnel.reactor.callLater(0, self._report_lost, self._reason)
        self._release()

    def _finish_close(self) -> None:
        if self.conn is not None and not self.localClosed:
            self.conn.sendEOF(self)
        self._close_now()

    def _close_now(self) -> None:
        conn = self.conn
        if conn is not None and not self.localClosed and self in conn.channelsToRemoteChannel:
            conn.sendClose(self)

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        """Nothing to do: the SSH connection's socket has TCP_NODELAY already."""

    def getTcpNoDelay(self) -> bool:  # noqa: N802
        return True

    def getPeer(self) -> SSHTunnelAddress:  # noqa: N802
        return self.dest

    def getHost(self) -> Any:  # noqa: N802
        return self.tunnel.local_address()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer, self._streaming = producer, bool(streaming)
        self._producer_paused = False
        if self._reported:
            producer.stopProducing()
        elif self._out:
            self._pause_producer()
        elif not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None
        self._producer_paused = False

    def pauseProducing(self) -> None:  # noqa: N802
        self.reading_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.reading_paused = False
        while self._in and not self.reading_paused and not self._reported:
            data = self._in.pop(0)
            if self.protocol is not None:
                self.protocol.dataReceived(data)
        if not self.reading_paused and self.conn is not None and not self.localClosed \
                and self in self.conn.channelsToRemoteChannel \
                and self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def stopProducing(self) -> None:  # noqa: N802
        self.loseConnection()

    # -- the end
    def _report_lost(self, reason: Failure) -> None:
        if self._reported:
            return
        self._reported = True
        self._in.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.tunnel.channel_released(self)


# ============================================================================ SSH connection


class _Connection(ssh_connection.SSHConnection):
    """The ``ssh-connection`` service: channels, and no window growth for paused ones."""

    _log = _QUIET

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
    _log = _QUIET

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

    _log = _QUIET

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


__all__ = ["SSHSettings", "SSHTunnelEndpoint", "SSHTunnelError",
           "HostKeyRejected", "SSHLoginRefused", "ChannelRefused"]
