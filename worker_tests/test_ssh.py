"""SSH tunnel: settings checks, and refusals against a real OpenSSH sshd (unknown or
changed host key, unauthorized key, forwarding not allowed), connection sharing and loss,
and the local forward used by zmq."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from buildbot_worker_msgproto.reach import ssh
from buildbot_worker_msgproto.reach import ssh_forward
from master_tests import sshd
from master_tests.sshd import ssh_server  # noqa: F401 - the fixture
from master_tests.sshd import write_key_pair

TIMEOUT = 30


def _known_hosts(path: str, name: str, public_line: str) -> str:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{name} {public_line}\n")
    return path


# ============================================================================ settings


class TestParse:
    @pytest.mark.parametrize("value, expected", [
        ("bb@gw.example.org", ("bb", "gw.example.org", 22)),
        ("bb@gw.example.org:2222", ("bb", "gw.example.org", 2222)),
        ("bb@10.0.0.1:22", ("bb", "10.0.0.1", 22)),
        ("bb@[::1]:2222", ("bb", "::1", 2222)),
        ("bb@[::1]", ("bb", "::1", 22)),
        ("bb@::1", ("bb", "::1", 22)),
        ("a@b@host", ("a@b", "host", 22)),
    ])
    def test_valid(self, value: str, expected: tuple) -> None:
        assert ssh.parse_destination(value) == expected

    def test_user_defaults_to_the_login_name(self) -> None:
        import getpass
        assert ssh.parse_destination("host:2200") == (getpass.getuser(), "host", 2200)

    @pytest.mark.parametrize("value, why", [
        ("@host", "empty user"),
        ("bb@host:0", "out of range"),
        ("bb@host:99999", "out of range"),
        ("bb@host:port", "not USER@HOST[:PORT]"),
        ("bb@", "not USER@HOST[:PORT]"),
        ("bb@[::1]:x", "not USER@HOST[:PORT]"),
    ])
    def test_invalid(self, value: str, why: str) -> None:
        with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
            ssh.parse_destination(value)

    def test_known_hosts_names(self) -> None:
        assert ssh.known_hosts_name("gw", 22) == "gw"
        assert ssh.known_hosts_name("gw", 2222) == "[gw]:2222"
        assert ssh.known_hosts_name("::1", 2222) == "[::1]:2222"


class TestSettings:
    @pytest.fixture
    def files(self, tmp_path: Any) -> Any:
        key = str(tmp_path / "id")
        host_line = write_key_pair(str(tmp_path / "host"))
        write_key_pair(key)
        kh = _known_hosts(str(tmp_path / "known_hosts"), "[gw]:2222", host_line)
        return key, kh, tmp_path

    def test_valid(self, files: Any) -> None:
        key, kh, _ = files
        s = ssh.SSHSettings.create("bb@gw:2222", key, kh)
        assert (s.user, s.host, s.port, s.key_files, s.known_hosts) == (
            "bb", "gw", 2222, (key,), kh)
        assert len(s.keys) == 1 and not s.keys[0].isPublic()
        assert s.where == "bb@gw:2222"

    def test_nothing_given(self) -> None:
        assert ssh.SSHSettings.create(None) is None

    def test_key_without_tunnel(self, files: Any) -> None:
        with pytest.raises(ValueError, match="need ssh_tunnel"):
            ssh.SSHSettings.create(None, files[0])

    def test_missing_key(self, files: Any) -> None:
        with pytest.raises(ValueError, match="cannot read the SSH key .*nope"):
            ssh.SSHSettings.create("bb@gw:2222", str(files[2] / "nope"), files[1])

    def test_public_key_instead_of_private(self, files: Any) -> None:
        with pytest.raises(ValueError, match="is a public key"):
            ssh.SSHSettings.create("bb@gw:2222", files[0] + ".pub", files[1])

    def test_garbage_key(self, files: Any) -> None:
        bad = files[2] / "bad"
        bad.write_text("not a key\n")
        with pytest.raises(ValueError, match="cannot load the SSH key"):
            ssh.SSHSettings.create("bb@gw:2222", str(bad), files[1])

    def test_passphrase_protected_key(self, files: Any) -> None:
        path = files[2] / "locked"
        path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"secret")))
        with pytest.raises(ValueError, match="protected by a passphrase"):
            ssh.SSHSettings.create("bb@gw:2222", str(path), files[1])

    def test_missing_known_hosts(self, files: Any) -> None:
        with pytest.raises(ValueError, match="cannot read the SSH known_hosts file"):
            ssh.SSHSettings.create("bb@gw:2222", files[0], str(files[2] / "nope"))

    def test_known_hosts_without_the_server(self, files: Any) -> None:
        # the entry is for port 2222: port 22 is another name ("gw", not "[gw]:2222")
        with pytest.raises(ValueError, match=r"has no host key for gw: .*ssh-keyscan gw"):
            ssh.SSHSettings.create("bb@gw", files[0], files[1])

    def test_hashed_known_hosts_entry(self, files: Any) -> None:
        key, _, tmp = files
        public = keys.Key.fromFile(str(tmp / "host.pub"))
        kh = KnownHostsFile(FilePath(str(tmp / "hashed")))
        kh.addHostKey(b"[gw]:2200", public)
        kh.save()
        assert b"[gw]" not in (tmp / "hashed").read_bytes()
        assert ssh.SSHSettings.create("bb@gw:2200", key, str(tmp / "hashed")).port == 2200


class TestOptions:
    """create-worker flags, buildbot.tac, client_endpoint() and Worker(...) with a tunnel."""

    @pytest.fixture
    def files(self, tmp_path: Any) -> Any:
        key = str(tmp_path / "id")
        write_key_pair(key)
        kh = _known_hosts(str(tmp_path / "kh"), "[gw]:2222",
                          write_key_pair(str(tmp_path / "host")))
        return key, kh, tmp_path

    @staticmethod
    def _parse(*args: str) -> Any:
        from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions

        options = CreateWorkerOptions()
        options.parseOptions([*args, "basedir", "127.0.0.1:9989", "w", "pw"])
        return options

    def test_create_worker_writes_the_tac(self, files: Any, monkeypatch: Any) -> None:
        from buildbot_worker_msgproto.scripts.create_worker import make_tac

        key, kh, tmp = files
        monkeypatch.chdir(tmp)
        options = self._parse("--ssh-tunnel", "bb@gw:2222", "--ssh-key", "id",
                              "--ssh-key", key, "--ssh-known-hosts", kh)
        assert options["ssh-key"] == [key, key]  # made absolute
        tac = make_tac(options)
        assert "ssh_tunnel = 'bb@gw:2222'" in tac
        assert f"ssh_key = {[key, key]!r}" in tac
        assert f"ssh_known_hosts = {kh!r}" in tac
        assert "ssh_tunnel=ssh_tunnel, ssh_key=ssh_key, ssh_known_hosts=ssh_known_hosts" in tac
        compile(tac, "buildbot.tac", "exec")
        assert "ssh_tunnel = None" in make_tac(self._parse())

    def test_create_worker_refusals(self, files: Any) -> None:
        from twisted.python import usage

        key, kh, tmp = files
        with pytest.raises(usage.UsageError, match="needs --ssh-tunnel"):
            self._parse("--ssh-key", key)
        with pytest.raises(usage.UsageError, match="cannot read the SSH key"):
            self._parse("--ssh-tunnel", "bb@gw:2222", "--ssh-key", str(tmp / "no"),
                        "--ssh-known-hosts", kh)
        with pytest.raises(usage.UsageError, match="has no host key for gw"):
            self._parse("--ssh-tunnel", "bb@gw", "--ssh-key", key, "--ssh-known-hosts", kh)
        with pytest.raises(usage.UsageError, match="not --connection-string"):
            self._parse("--ssh-tunnel", "bb@gw:2222", "--ssh-key", key,
                        "--ssh-known-hosts", kh, "--connection-string", "tcp:host=h:port=1")

    def test_client_endpoint(self, files: Any) -> None:
        from buildbot_worker_msgproto.reach.endpoints import client_endpoint
        from buildbot_worker_msgproto.reach.tls import TLSSettings
        from buildbot_worker_msgproto.reach.tls import VerifiedTLSEndpoint
        from buildbot_worker_msgproto.transports.base import ClientTarget

        settings = ssh.SSHSettings.create("bb@gw:2222", files[0], files[1])
        plain = client_endpoint(reactor, ClientTarget("10.0.0.5", 9989, ssh=settings))
        assert isinstance(plain, ssh.SSHTunnelEndpoint)
        assert (plain.dest_host, plain.dest_port) == ("10.0.0.5", 9989)
        tls = client_endpoint(reactor, ClientTarget("10.0.0.5", 9989, ssh=settings,
                                                    tls=TLSSettings(fingerprint="ab" * 32)))
        assert isinstance(tls, VerifiedTLSEndpoint)
        assert isinstance(tls.wrapped, ssh.SSHTunnelEndpoint)
        with pytest.raises(ValueError, match="not a connection string"):
            client_endpoint(reactor, ClientTarget(connection_string="tcp:host=h:port=1",
                                                  ssh=settings))
        with pytest.raises(ValueError, match="HTTP proxy"):
            client_endpoint(reactor, ClientTarget("h", 1, ssh=settings,
                                                  proxy_connection_string="tcp:p:3128"))

    def test_worker_arguments(self, files: Any, monkeypatch: Any) -> None:
        from buildbot_worker_msgproto import worker as worker_module
        from buildbot_worker_msgproto.worker import Worker

        made: list[Any] = []

        def recording_client_endpoint(*args: Any) -> Any:
            made.append(worker_module.client_endpoint.__wrapped__(*args))
            return made[-1]

        recording_client_endpoint.__wrapped__ = worker_module.client_endpoint
        monkeypatch.setattr(worker_module, "client_endpoint", recording_client_endpoint)

        key, kh, tmp = files
        with pytest.raises(ValueError, match="need ssh_tunnel"):
            Worker("h", 1, "w", "pw", str(tmp), 0, ssh_key=key)
        with pytest.raises(ValueError, match="without connection_string"):
            Worker(None, None, "w", "pw", str(tmp), 0, connection_string="tcp:host=h:port=1",
                   ssh_tunnel="bb@gw:2222", ssh_key=key, ssh_known_hosts=kh)
        with pytest.raises(ValueError, match="protected by a passphrase|cannot load"):
            (tmp / "bad").write_text("junk")
            Worker("h", 1, "w", "pw", str(tmp), 0, ssh_tunnel="bb@gw:2222",
                   ssh_key=str(tmp / "bad"), ssh_known_hosts=kh)
        for protocol_name in ("msg", "pb"):
            made.clear()
            Worker("127.0.0.1", 9989, "w", "pw", str(tmp), 0, protocol=protocol_name,
                   ssh_tunnel="bb@gw:2222", ssh_key=[key], ssh_known_hosts=kh)
            [endpoint] = made
            assert isinstance(endpoint, ssh.SSHTunnelEndpoint), endpoint
            assert endpoint.settings.where == "bb@gw:2222"
            assert (endpoint.dest_host, endpoint.dest_port) == ("127.0.0.1", 9989)


# ============================================================================ against sshd


class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Any = None
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.reason = reason
        self.lost.callback(None)


class _Echo(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.factory.open.add(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.open.discard(self)


class _CountingFactory(protocol.Factory):
    def __init__(self) -> None:
        self.built: list[_Recorder] = []

    def buildProtocol(self, addr: Any) -> _Recorder:  # noqa: N802
        proto = _Recorder()
        self.built.append(proto)
        return proto


@defer.inlineCallbacks
def _closed_port() -> Any:
    """A port of 127.0.0.1 where nothing listens (it did a moment ago)."""
    closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    port = closed.getHost().port
    yield closed.stopListening()
    return port


@pytest.mark.usefixtures("ssh_server")
class TestTunnel(unittest.TestCase):
    def setUp(self) -> None:
        self.server = sshd.current()
        echo_factory = protocol.Factory.forProtocol(_Echo)
        echo_factory.open = set()
        self.echo = reactor.listenTCP(0, echo_factory, interface="127.0.0.1")
        self.addCleanup(self.echo.stopListening)
        self.addCleanup(self._echo_closed, echo_factory)
        self.dest_port = self.echo.getHost().port
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    @defer.inlineCallbacks
    def _echo_closed(self, factory: Any) -> Any:
        # sshd closes its side of the tunnelled connections a moment after the channel
        for _ in range(TIMEOUT * 20):
            if not factory.open:
                return
            yield task.deferLater(reactor, 0.05, lambda: None)

    def endpoint(self, key: str | None = None, known_hosts: str | None = None,
                 port: int | None = None) -> ssh.SSHTunnelEndpoint:
        settings = ssh.SSHSettings.create(self.server.tunnel, key or self.server.client_key,
                                          known_hosts or self.server.known_hosts)
        return ssh.SSHTunnelEndpoint(reactor, settings, "127.0.0.1", port or self.dest_port)

    @defer.inlineCallbacks
    def assert_refused(self, endpoint: ssh.SSHTunnelEndpoint, error: type,
                       *fragments: str) -> Any:
        factory = _CountingFactory()
        d = endpoint.connect(factory).addTimeout(TIMEOUT, reactor)
        failure = yield self.assertFailure(d, error)
        for fragment in fragments:
            self.assertIn(fragment, str(failure))
        self.assertEqual(factory.built, [])  # no protocol ever saw a connection
        yield task.deferLater(reactor, 0.05, lambda: None)
        return failure

    @defer.inlineCallbacks
    def test_echo_through_the_tunnel(self) -> Any:
        before = self.server.tunnels_to(self.dest_port)
        proto = yield self.endpoint().connect(_CountingFactory()).addTimeout(TIMEOUT, reactor)
        payload = os.urandom(300_000)
        proto.transport.write(payload)
        for _ in range(TIMEOUT * 20):
            if len(proto.data) >= len(payload):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(proto.data, payload)
        self.assertEqual(self.server.tunnels_to(self.dest_port), before + 1)
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def test_unknown_host_key(self) -> Any:
        # known_hosts knows the server only by an ECDSA key; it presents its ed25519 key
        ecdsa = keys.Key(ec.generate_private_key(ec.SECP256R1())).public().toString("openssh")
        kh = _known_hosts(os.path.join(self.tmp, "kh"), self.server.host_name,
                          ecdsa.decode())
        host_key = keys.Key.fromFile(self.server.host_key + ".pub")
        yield self.assert_refused(self.endpoint(known_hosts=kh), ssh.HostKeyRejected,
                                  "which is not in", kh, self.server.host_name,
                                  ssh.fingerprint(host_key), "refusing to connect")

    @defer.inlineCallbacks
    def test_changed_host_key(self) -> Any:
        host_key = keys.Key.fromFile(self.server.host_key + ".pub")
        yield self.assert_refused(self.endpoint(known_hosts=self.server.wrong_known_hosts),
                                  ssh.HostKeyRejected, "is NOT the one",
                                  self.server.wrong_known_hosts, self.server.host_name,
                                  ssh.fingerprint(host_key))

    @defer.inlineCallbacks
    def test_unauthorized_key(self) -> Any:
        yield self.assert_refused(self.endpoint(key=self.server.stranger_key),
                                  ssh.SSHLoginRefused, self.server.stranger_key,
                                  f"login of {self.server.user!r}", "authorized_keys")

    @defer.inlineCallbacks
    def test_forwarding_not_allowed(self) -> Any:
        yield self.assert_refused(self.endpoint(key=self.server.restricted_key),
                                  ssh.ChannelRefused, "refused to open a tunnel to 127.0.0.1:",
                                  "AllowTcpForwarding")

    @defer.inlineCallbacks
    def test_nothing_listening_behind_the_tunnel(self) -> Any:
        port = yield _closed_port()
        yield self.assert_refused(self.endpoint(port=port), ssh.ChannelRefused,
                                  "could not connect there")

    @defer.inlineCallbacks
    def test_ssh_server_unreachable(self) -> Any:
        port = yield _closed_port()
        settings = ssh.SSHSettings(
            "127.0.0.1", self.server.user, (self.server.client_key,), self.server.known_hosts,
            port, (keys.Key.fromFile(self.server.client_key),))
        endpoint = ssh.SSHTunnelEndpoint(reactor, settings, "127.0.0.1", self.dest_port)
        yield self.assert_refused(endpoint, ssh.SSHTunnelError, "cannot reach the SSH server")

    @defer.inlineCallbacks
    def test_channels_share_a_connection_and_die_with_it(self) -> Any:
        endpoint = self.endpoint()
        first = yield endpoint.connect(_CountingFactory()).addTimeout(TIMEOUT, reactor)
        second = yield endpoint.connect(_CountingFactory()).addTimeout(TIMEOUT, reactor)
        tunnel = endpoint._tunnel
        self.assertIsNotNone(tunnel)
        self.assertEqual(len(tunnel.channels), 2)
        tunnel.ssh.transport.abortConnection()  # the SSH connection dies
        yield defer.gatherResults([first.lost, second.lost]).addTimeout(TIMEOUT, reactor)
        for proto in (first, second):
            self.assertIn("the SSH connection to", proto.reason.getErrorMessage())
        self.assertIsNone(endpoint._tunnel)
        # a new connect logs in again
        third = yield endpoint.connect(_CountingFactory()).addTimeout(TIMEOUT, reactor)
        self.assertIsNot(endpoint._tunnel, tunnel)
        third.transport.abortConnection()
        yield third.lost

    @defer.inlineCallbacks
    def test_ssh_connection_closes_with_its_last_channel(self) -> Any:
        endpoint = self.endpoint()
        proto = yield endpoint.connect(_CountingFactory()).addTimeout(TIMEOUT, reactor)
        tunnel = endpoint._tunnel
        proto.transport.loseConnection()
        yield proto.lost.addTimeout(TIMEOUT, reactor)
        for _ in range(TIMEOUT * 20):
            if tunnel.lost:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(tunnel.lost)

    @defer.inlineCallbacks
    def test_local_forward(self) -> Any:
        forward = ssh_forward.LocalForward(reactor, self.endpoint())
        port = forward.start()
        self.addCleanup(forward.stop)
        before = self.server.tunnels_to(self.dest_port)
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            _CountingFactory())
        proto.transport.write(b"through the forward")
        for _ in range(TIMEOUT * 20):
            if proto.data:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(proto.data, b"through the forward")
        self.assertEqual(self.server.tunnels_to(self.dest_port), before + 1)
        proto.transport.loseConnection()
        yield proto.lost
        yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_local_forward_closes_when_the_tunnel_fails(self) -> Any:
        forward = ssh_forward.LocalForward(reactor, self.endpoint(
            known_hosts=self.server.wrong_known_hosts))
        port = forward.start()
        self.addCleanup(forward.stop)
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            _CountingFactory())
        yield proto.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(forward.failures, 1)
        self.assertGreater(forward.next_delay(), 0)
