"""``buildbot-worker-msgproto gen-keys``: the files, and that they work for TLS and CURVE."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import zmq
import zmq.auth
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder
from cryptography.x509.verification import Store
from twisted.internet import defer
from twisted.internet import endpoints
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet import ssl
from twisted.trial import unittest

from buildbot_worker_msgproto.scripts import gen_keys
from buildbot_worker_msgproto.scripts import runner
from buildbot_worker_msgproto.security import certificates

SCRIPT = os.path.join(os.path.dirname(sys.executable), "buildbot-worker-msgproto")


def run_in_process(*args: str) -> int:
    """Parse like the console script (through runner's subCommands) and run the command."""
    config = runner.Options()
    config.parseOptions(["gen-keys", *args])
    assert isinstance(config.subOptions, gen_keys.GenKeysOptions)
    return gen_keys.genKeys(config.subOptions)


def load_cert(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def generated(outdir: str, *args: str) -> gen_keys.Layout:
    assert run_in_process(*args, outdir) == 0
    return gen_keys.Layout(outdir)


# -- files and certificates --------------------------------------------------------------------


@pytest.fixture
def material(tmp_path: Any) -> gen_keys.Layout:
    outdir = str(tmp_path / "keys")
    assert run_in_process("--master-host", "master.example.org", "--master-host", "10.0.0.7",
                          "--master-host", "::1", "--worker", "w1", "--worker", "wé-2",
                          "--days", "30", outdir) == 0
    return gen_keys.Layout(outdir, ["w1", "wé-2"])


def test_certificates_chain_to_the_ca(material: gen_keys.Layout) -> None:
    ca = load_cert(material.ca_cert)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    store = Store([ca])
    master = load_cert(material.master_cert)
    master.verify_directly_issued_by(ca)
    # RFC 5280 path validation with hostname checks, as a TLS client does.
    for host in (x509.DNSName("master.example.org"),
                 x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        PolicyBuilder().store(store).build_server_verifier(host).verify(master, [])
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(store).build_server_verifier(
            x509.DNSName("localhost")).verify(master, [])
    for name in material.workers:
        cert = load_cert(material.worker_cert(name))
        cert.verify_directly_issued_by(ca)
        verified = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
        assert verified.subjects == [x509.UniformResourceIdentifier(certificates.worker_uri(name))]


def test_other_ca_does_not_verify(material: gen_keys.Layout, tmp_path: Any) -> None:
    other = generated(str(tmp_path / "other"))
    master = load_cert(material.master_cert)
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature or ValueError (issuer)
        master.verify_directly_issued_by(load_cert(other.ca_cert))
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(Store([load_cert(other.ca_cert)])).build_server_verifier(
            x509.DNSName("master.example.org")).verify(master, [])


def test_names_and_usages(material: gen_keys.Layout) -> None:
    master = load_cert(material.master_cert)
    san = master.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["master.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"),
                                                       ipaddress.ip_address("::1")]
    assert master.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "master.example.org"
    assert master.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert isinstance(master.public_key(), ec.EllipticCurvePublicKey)
    assert master.public_key().curve.name == "secp256r1"
    lifetime = master.not_valid_after_utc - master.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=10)
    for name in ("w1", "wé-2"):
        cert = load_cert(material.worker_cert(name))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert certificates.worker_names_from_certificate(cert) == [name]
        assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert certificates.worker_uri("wé-2") == "urn:buildbot-msgproto:worker:w%C3%A9-2"
    assert certificates.worker_names_from_certificate(master) == []


def test_defaults_and_private_key_files(tmp_path: Any) -> None:
    layout = generated(str(tmp_path / "keys"), "--worker", "w1")
    san = load_cert(layout.master_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    master = load_cert(layout.master_cert)
    lifetime = master.not_valid_after_utc - master.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=gen_keys.DEFAULT_DAYS) == \
        datetime.timedelta(days=825)
    assert stat.S_IMODE(os.stat(layout.outdir).st_mode) == 0o700
    private = [layout.ca_key, layout.master_key, layout.worker_key("w1"),
               layout.curve_master_secret, layout.curve_worker_secret("w1"),
               layout.ssh_worker_key("w1")]
    for path in private:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for path in set(gen_keys.Layout(layout.outdir, ["w1"]).all_files()) - set(private):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    # Every private key belongs to its certificate.
    for key_path, cert_path in ((layout.ca_key, layout.ca_cert),
                                (layout.master_key, layout.master_cert),
                                (layout.worker_key("w1"), layout.worker_cert("w1"))):
        key = serialization.load_pem_private_key(read(key_path), password=None)
        assert key.public_key() == load_cert(cert_path).public_key()


def test_fingerprint_file_and_output(tmp_path: Any, capsys: Any) -> None:
    layout = generated(str(tmp_path / "keys"))
    der = load_cert(layout.master_cert).public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    written = read(layout.master_fingerprint).decode().strip()
    assert written.replace(":", "").lower() == expected
    assert len(written.split(":")) == 32
    assert written in capsys.readouterr().out


def test_refuses_to_overwrite_without_force(tmp_path: Any, capsys: Any) -> None:
    outdir = str(tmp_path / "keys")
    layout = generated(outdir, "--worker", "w1")
    before = {p: read(p) for p in gen_keys.Layout(outdir, ["w1"]).all_files()}
    capsys.readouterr()
    # Even a run that only adds a worker writes nothing while one target file exists.
    assert run_in_process("--worker", "w1", "--worker", "w2", outdir) == 1
    out = capsys.readouterr().out
    assert "refusing to overwrite" in out and layout.ca_key in out
    assert not os.path.exists(layout.worker_cert("w2"))
    assert {p: read(p) for p in before} == before
    os.chmod(layout.master_key, 0o644)
    assert run_in_process("--force", "--worker", "w1", outdir) == 0
    assert read(layout.ca_key) != before[layout.ca_key]
    assert read(layout.master_cert) != before[layout.master_cert]
    assert stat.S_IMODE(os.stat(layout.master_key).st_mode) == 0o600


@pytest.mark.parametrize("args", [
    ["--worker", "bad/name"], ["--worker", "1abc"], ["--worker", ""], ["--worker", "a" * 65],
    ["--master-host", "not a host"], ["--master-host", "-bad.example"], ["--days", "0"],
    ["--days", "x"], [],
])
def test_bad_arguments(args: list[str], tmp_path: Any) -> None:
    config = runner.Options()
    extra = [] if args == [] else [str(tmp_path / "k")]
    with pytest.raises(runner.usage.UsageError):
        config.parseOptions(["gen-keys", *args, *extra])
    assert not os.path.exists(tmp_path / "k")


def test_duplicate_worker_is_refused(tmp_path: Any) -> None:
    with pytest.raises(gen_keys.GenKeysError, match="more than once"):
        gen_keys.generate(str(tmp_path / "k"), workers=["w1", "w1"])
    assert not os.path.exists(tmp_path / "k")


def test_console_script(tmp_path: Any) -> None:
    outdir = str(tmp_path / "keys")
    argv = [SCRIPT, "gen-keys", "--worker", "w1", "--master-host", "m.example", outdir]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    layout = gen_keys.Layout(outdir, ["w1"])
    assert all(os.path.exists(p) for p in layout.all_files())
    assert read(layout.master_fingerprint).decode().strip() in done.stdout
    load_cert(layout.worker_cert("w1")).verify_directly_issued_by(load_cert(layout.ca_cert))
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "refusing to overwrite" in again.stdout
    forced = subprocess.run(argv[:2] + ["--force"] + argv[2:], capture_output=True, text=True,
                            timeout=60)
    assert forced.returncode == 0, forced.stdout + forced.stderr


# -- a real TLS handshake with Twisted ---------------------------------------------------------


class _Server(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.factory.peers.append(self.transport.getPeerCertificate().to_cryptography())
        self.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class _Client(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = b""
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == b"ping":
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.factory.done.callback(self.received)


class TlsHandshake(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", tmp], check=True))
        self.good = generated(os.path.join(tmp, "good"), "--worker", "w1")
        self.other = generated(os.path.join(tmp, "other"), "--worker", "w1")

    @staticmethod
    def private(layout: gen_keys.Layout, who: str) -> ssl.PrivateCertificate:
        cert, key = ((layout.master_cert, layout.master_key) if who == "master"
                     else (layout.worker_cert(who), layout.worker_key(who)))
        return ssl.PrivateCertificate.loadPEM(read(key) + read(cert))

    @defer.inlineCallbacks
    def exchange(self, server: gen_keys.Layout, client: gen_keys.Layout,
                 hostname: str = "localhost", client_cert: bool = True) -> Any:
        """Returns (bytes the client got back, client certificates the server saw)."""
        master = self.private(server, "master")
        server_options = ssl.CertificateOptions(
            privateKey=master.privateKey.original, certificate=master.original,
            # A trustRoot on a server means: require a client certificate chaining to it.
            trustRoot=ssl.Certificate.loadPEM(read(server.ca_cert)))
        client_options = ssl.optionsForClientTLS(
            hostname, trustRoot=ssl.Certificate.loadPEM(read(client.ca_cert)),
            clientCertificate=self.private(client, "w1") if client_cert else None)
        server_factory = protocol.ServerFactory.forProtocol(_Server)
        server_factory.connections, server_factory.peers = [], []
        port = yield endpoints.SSL4ServerEndpoint(
            reactor, 0, server_options, interface="127.0.0.1").listen(server_factory)
        self.addCleanup(port.stopListening)
        client_factory = protocol.ClientFactory.forProtocol(_Client)
        client_factory.done = defer.Deferred()
        yield endpoints.SSL4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, client_options).connect(client_factory)
        received = yield client_factory.done
        yield defer.gatherResults([c.lost for c in server_factory.connections])
        return received, server_factory.peers

    @defer.inlineCallbacks
    def test_handshake_succeeds(self) -> Any:
        for hostname in ("localhost", "127.0.0.1"):
            received, peers = yield self.exchange(self.good, self.good, hostname)
            self.assertEqual(received, b"ping")
            self.assertEqual([certificates.worker_names_from_certificate(p) for p in peers],
                             [["w1"]])
            self.assertEqual(peers[0], load_cert(self.good.worker_cert("w1")))

    @defer.inlineCallbacks
    def test_worker_without_certificate_is_rejected(self) -> Any:
        received, peers = yield self.exchange(self.good, self.good, client_cert=False)
        self.assertEqual((received, peers), (b"", []))

    @defer.inlineCallbacks
    def test_wrong_hostname_fails(self) -> Any:
        received, peers = yield self.exchange(self.good, self.good, "elsewhere.example")
        self.assertEqual((received, peers), (b"", []))

    @defer.inlineCallbacks
    def test_worker_cert_from_other_ca_is_rejected(self) -> Any:
        # The worker trusts the right CA but presents a certificate of another CA.
        mixed = gen_keys.Layout(tempfile.mkdtemp(), ["w1"])
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", mixed.outdir], check=True))
        os.makedirs(os.path.dirname(mixed.ca_cert))
        for src, dst in ((self.good.ca_cert, mixed.ca_cert),
                         (self.other.worker_cert("w1"), mixed.worker_cert("w1")),
                         (self.other.worker_key("w1"), mixed.worker_key("w1"))):
            with open(dst, "wb") as f:
                f.write(read(src))
        received, peers = yield self.exchange(self.good, mixed)
        self.assertEqual((received, peers), (b"", []))

    @defer.inlineCallbacks
    def test_master_cert_from_other_ca_is_rejected(self) -> Any:
        received, peers = yield self.exchange(self.other, self.good)
        self.assertEqual((received, peers), (b"", []))


# -- ZeroMQ CURVE ------------------------------------------------------------------------------


def _exchange(ctx: zmq.Context[Any], server_secret: str, client_secret: str,
              server_public: str, wait_ms: int) -> bytes | None:
    server_pub, server_sec = zmq.auth.load_certificate(server_secret)
    client_pub, client_sec = zmq.auth.load_certificate(client_secret)
    expected_server_pub, _ = zmq.auth.load_certificate(server_public)
    server = ctx.socket(zmq.REP)
    client = ctx.socket(zmq.REQ)
    try:
        for s in (server, client):
            s.linger = 0
        server.curve_secretkey, server.curve_publickey = server_sec, server_pub
        server.curve_server = True
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.curve_secretkey, client.curve_publickey = client_sec, client_pub
        client.curve_serverkey = expected_server_pub
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        if not server.poll(wait_ms):
            return None
        server.send(server.recv() + b" back")
        assert client.poll(5000), "the reply did not arrive"
        return client.recv()
    finally:
        server.close()
        client.close()


def test_curve_keys_work(tmp_path: Any) -> None:
    assert zmq.has("curve")
    layout = generated(str(tmp_path / "keys"), "--worker", "w1", "--worker", "w2")
    other = generated(str(tmp_path / "other"), "--worker", "w1")
    for path in (layout.curve_master_public, layout.curve_worker_public("w1")):
        public, secret = zmq.auth.load_certificate(path)
        assert secret is None and len(public) == 40
    ctx = zmq.Context()
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        # The master's ZAP handler allows exactly the keys in curve/workers/.
        auth.configure_curve(domain="*", location=os.path.dirname(layout.curve_worker_public("w1")))
        for name in ("w1", "w2"):
            assert _exchange(ctx, layout.curve_master_secret, layout.curve_worker_secret(name),
                             layout.curve_master_public, 10000) == b"hello back"
        # A worker key that is not in curve/workers/ is refused by the master.
        assert _exchange(ctx, layout.curve_master_secret, other.curve_worker_secret("w1"),
                         layout.curve_master_public, 1500) is None
        # A worker expecting another master's key does not talk to this master.
        assert _exchange(ctx, layout.curve_master_secret, layout.curve_worker_secret("w1"),
                         other.curve_master_public, 1500) is None
    finally:
        auth.stop()
        ctx.term()


def test_ssh_key_pair(tmp_path: Any) -> None:
    """The worker's SSH key loads as --ssh-key does and its .pub is an authorized_keys line
    for that very key."""
    from twisted.conch.ssh import keys

    from buildbot_worker_msgproto.reach.ssh import load_private_key

    layout = gen_keys.generate(str(tmp_path / "keys"), workers=["w1"]).layout
    private = load_private_key(layout.ssh_worker_key("w1"))
    assert private.sshType() == b"ssh-ed25519"
    line = read(layout.ssh_worker_key("w1") + ".pub").decode()
    assert line.endswith(" buildbot worker w1\n")
    assert keys.Key.fromString(line.encode()) == private.public()
