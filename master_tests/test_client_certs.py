"""Mutual TLS on the master (buildbot_msgproto.client_certs), with certificates made by
``gen-keys`` in a temp dir; TLS handshakes run in memory (twisted.test.iosim), no reactor."""

from __future__ import annotations

import dataclasses
import os

import pytest
from cryptography import x509
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import Certificate
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.ssl import trustRootFromCertificates
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from buildbot_msgproto import client_certs
from buildbot_msgproto.config import MsgProtocolConfigError
from buildbot_msgproto.config import parse_options
from buildbot_msgproto.manager import MasterHandshake
from buildbot_msgproto.throttle import LoginThrottle
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.scripts import gen_keys
from buildbot_worker_msgproto.security import certificates
from master_tests.handshake_fakes import FakeClock
from master_tests.handshake_fakes import FakeDispatcher
from master_tests.handshake_fakes import FakeDriver


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("keys"))
    result = gen_keys.generate(os.path.join(root, "a"), workers=["w1", "w2", "ünï_b"])
    other = gen_keys.generate(os.path.join(root, "b"), workers=["w1"])
    return result.layout, other.layout


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


# ------------------------------------------------------------------------- check_binding
@pytest.mark.parametrize("mode", client_certs.MODES)
def test_own_certificate_binds(keys, mode):
    layout, _ = keys
    assert client_certs.check_binding(mode, load(layout.worker_cert("w1")), "w1") is None
    assert client_certs.check_binding(mode, load(layout.worker_cert("ünï_b")), "ünï_b") is None


@pytest.mark.parametrize("mode", client_certs.MODES)
def test_certificate_of_another_worker_is_a_mismatch(keys, mode):
    layout, _ = keys
    code, reason = client_certs.check_binding(mode, load(layout.worker_cert("w2")), "w1")
    assert code == client_certs.CERTIFICATE_MISMATCH
    assert "'w1'" in reason


def test_certificate_without_worker_names_is_a_mismatch(keys):
    # the master's certificate has a CN but no worker URI: the CN is never used
    layout, _ = keys
    code, reason = client_certs.check_binding("optional", load(layout.master_cert), "localhost")
    assert code == client_certs.CERTIFICATE_MISMATCH
    assert "names no worker" in reason


def test_no_certificate():
    assert client_certs.check_binding("off", None, "w1") is None
    assert client_certs.check_binding("optional", None, "w1") is None
    code, _ = client_certs.check_binding("required", None, "w1")
    assert code == client_certs.CERTIFICATE_REQUIRED


def test_describe(keys):
    layout, _ = keys
    text = client_certs.describe(load(layout.worker_cert("w2")))
    assert "CN=w2" in text and "['w2']" in text


# ------------------------------------------------------------------------- server options
def test_server_options_modes(keys):
    layout, _ = keys
    off = client_certs.server_tls_options(layout.master_cert, layout.master_key, None, "off")
    assert not off.verify
    opt = client_certs.server_tls_options(layout.master_cert, layout.master_key,
                                          layout.ca_cert, "optional")
    assert opt.verify and not opt.requireCertificate
    req = client_certs.server_tls_options(layout.master_cert, layout.master_key,
                                          layout.ca_cert, "required")
    assert req.verify and req.requireCertificate


def test_server_options_errors(keys, tmp_path):
    layout, other = keys
    with pytest.raises(ValueError, match="needs tls_client_ca"):
        client_certs.server_tls_options(layout.master_cert, layout.master_key, None, "required")
    with pytest.raises(ValueError, match="cannot read the TLS certificate"):
        client_certs.server_tls_options(str(tmp_path / "nope.pem"), None, None, "off")
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        client_certs.server_tls_options(layout.master_cert, other.master_key, None, "off")
    with pytest.raises(ValueError, match="no PEM certificate in the TLS client CA"):
        client_certs.server_tls_options(layout.master_cert, layout.master_key,
                                        layout.master_key, "optional")
    with pytest.raises(ValueError, match="must be one of"):
        client_certs.server_tls_options(layout.master_cert, layout.master_key, None, "yes")


# ------------------------------------------------------------------------- config
def test_config(keys):
    layout, _ = keys
    base = {"port": 9989, "tls_cert": layout.master_cert, "tls_key": layout.master_key}
    assert parse_options({"port": 9989}).client_certificates == "off"
    o = parse_options({**base, "tls_client_ca": layout.ca_cert,
                       "client_certificates": "required"})
    assert (o.tls_cert, o.tls_key, o.tls_client_ca, o.client_certificates) == (
        layout.master_cert, layout.master_key, layout.ca_cert, "required")
    assert parse_options(base).tls_cert == layout.master_cert


@pytest.mark.parametrize("extra, message", [
    ({"client_certificates": "always"}, "must be one of"),
    ({"client_certificates": "required"}, "needs tls_client_ca"),
    ({"tls_client_ca": "CA"}, "only used with client_certificates"),
    ({"port": "ssl:9989"}, "tcp:/tcp6: strport"),
    ({"tls_cert": None, "client_certificates": "optional"}, "need 'tls_cert'"),
    ({"tls_cert": ""}, "path of a PEM file"),
    ({"client_certificates": "required", "tls_client_ca": "CA",
      "transports": {"amp": {"port": 0}}}, "transports amp cannot ask for client"),
    ({"client_certificates": "required", "tls_client_ca": "CA",
      "transports": {"amp": {"port": 0, "tls": True}, "zmq": {"port": 0}}},
     "transports zmq cannot ask for client"),
    ({"transports": {"amp": {"port": 0, "tls": True}}, "tls_cert": None},
     r"'tls': True \(amp\) uses the master's TLS certificate"),
    ({"transports": {"amp": {"port": 0, "tls": "yes"}}}, "amp 'tls' must be True or False"),
    ({"transports": {"websocket": {"port": "ssl:0", "tls": True}}},
     "needs an int or tcp: port"),
])
def test_config_errors(keys, extra, message):
    layout, _ = keys
    options = {"port": 9989, "tls_cert": layout.master_cert, "tls_key": layout.master_key,
               **extra}
    if options.get("tls_client_ca") == "CA":
        options["tls_client_ca"] = layout.ca_cert
    options = {k: v for k, v in options.items() if v is not None}
    with pytest.raises(MsgProtocolConfigError, match=message):
        parse_options(options)


# ------------------------------------------------------------------------- real handshakes
class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.made = False
        self.lost = None

    def connectionMade(self) -> None:  # noqa: N802
        self.made = True

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.lost = reason


def handshake(layout, mode: str, client_layout=None, worker: str | None = None):
    """Run a TLS handshake in memory; return (server app protocol, its TLS protocol)."""
    creator = client_certs.ServerTLSCreator(client_certs.server_tls_options(
        layout.master_cert, layout.master_key, layout.ca_cert if mode != "off" else None,
        mode))
    server_factory = client_certs.tls_server_factory(creator,
                                                     protocol.Factory.forProtocol(Recorder))
    with open(layout.ca_cert, "rb") as f:
        trust = trustRootFromCertificates([Certificate.loadPEM(f.read())])
    client_cert = None
    if worker is not None:
        src = client_layout or layout
        with open(src.worker_cert(worker), "rb") as c, open(src.worker_key(worker), "rb") as k:
            client_cert = PrivateCertificate.loadPEM(c.read() + b"\n" + k.read())
    client_factory = TLSMemoryBIOFactory(
        optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=client_cert),
        True, protocol.Factory.forProtocol(Recorder))
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    server = server_factory.buildProtocol(address)
    app = server.wrappedProtocol.inner
    _client, _server, pump = iosim.connectedServerAndClient(
        lambda: server, lambda: client_factory.buildProtocol(address))
    pump.flush()
    return app, server


def test_required_with_own_certificate(keys):
    layout, _ = keys
    app, tls = handshake(layout, "required", worker="w1")
    assert app.lost is None
    cert = client_certs.peer_certificate(app)  # follows app.transport (the TLS protocol)
    assert certificates.worker_names_from_certificate(cert) == ["w1"]
    assert client_certs.check_binding("required", cert, "w1") is None
    assert client_certs.check_binding("required", cert, "w2")[0] == "certificate_mismatch"


def test_required_without_certificate_fails_the_handshake(keys, logged):
    layout, _ = keys
    app, _ = handshake(layout, "required")
    assert app.lost is not None
    assert any("msgproto: TLS handshake with" in line and "failed" in line for line in logged)


def test_certificate_of_another_ca_fails_the_handshake(keys, logged):
    layout, other = keys
    for mode in ("optional", "required"):
        app, _ = handshake(layout, mode, client_layout=other, worker="w1")
        assert app.lost is not None, mode


def test_optional_without_certificate(keys):
    layout, _ = keys
    app, _ = handshake(layout, "optional")
    assert app.lost is None
    assert client_certs.peer_certificate(app) is None


def test_off_asks_for_no_certificate(keys):
    layout, _ = keys
    app, _ = handshake(layout, "off", worker="w1")
    assert app.lost is None
    assert client_certs.peer_certificate(app) is None


def test_peer_certificate_of_plain_objects():
    class Plain:
        transport = None

    assert client_certs.peer_certificate(None) is None
    assert client_certs.peer_certificate(Plain()) is None


# ------------------------------------------------------------------------- MasterHandshake
def _dispatcher(mode: str) -> FakeDispatcher:
    """A dispatcher with client_certificates=``mode`` (parse_options would want TLS)."""
    options = dataclasses.replace(parse_options({"port": 9989}), client_certificates=mode)
    return FakeDispatcher(LoginThrottle(3, 10), options)


@pytest.mark.parametrize("mode, tls_mode, worker, hello_as, expected", [
    ("required", "required", "w1", "w1", None),
    ("required", "required", "w2", "w1", "certificate_mismatch"),
    # a listener that does not enforce it (TLS made elsewhere): the session refuses
    ("required", "optional", None, "w1", "certificate_required"),
    ("optional", "optional", None, "w1", None),
    ("optional", "optional", "w2", "w1", "certificate_mismatch"),
    ("off", "optional", "w2", "w1", "certificate_mismatch"),  # a verified one binds always
])
def test_master_handshake(keys, logged, mode, tls_mode, worker, hello_as, expected):
    layout, _ = keys
    app, _ = handshake(layout, tls_mode, worker=worker)
    driver = FakeDriver(FakeClock(), transport=app)
    MasterHandshake(_dispatcher(mode)).hello_received(
        driver, HelloReceived(hello_as, (1,), {}))
    if expected is None:
        assert driver.answered and driver.closed is None
    else:
        assert not driver.answered  # refused before the challenge
        assert driver.closed[0] == expected
        line = [ln for ln in logged if "refusing worker" in ln]
        assert line and "127.0.0.1:40000" in line[0] and expected in line[0], logged


def test_master_handshake_refuses_required_without_tls(logged):
    driver = FakeDriver(FakeClock())
    MasterHandshake(_dispatcher("required")).hello_received(
        driver, HelloReceived("w1", (1,), {}))
    assert driver.closed[0] == "certificate_required"
