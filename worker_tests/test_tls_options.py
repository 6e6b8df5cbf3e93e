"""The worker's TLS options: fingerprint normalisation, settings, certificate checks, CLI."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.python import usage

from buildbot_worker_msgproto.reach.endpoints import client_endpoint
from buildbot_worker_msgproto.reach.tls import MasterConnectionCreator
from buildbot_worker_msgproto.reach.tls import TLSSettings
from buildbot_worker_msgproto.reach.tls import VerifiedTLSEndpoint
from buildbot_worker_msgproto.reach.tls import normalize_fingerprint
from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions
from buildbot_worker_msgproto.transports.base import ClientTarget

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("text", [
    HEX, HEX.upper(), ":".join(HEX[i:i + 2] for i in range(0, 64, 2)),
    ":".join(HEX[i:i + 2] for i in range(0, 64, 2)).upper(), f"  {HEX}\n",
    f"SHA256:{HEX}", f"sha256={HEX.upper()}", f"SHA-256: {HEX}",
    " ".join(HEX[i:i + 2] for i in range(0, 64, 2)),
])
def test_fingerprint_variants(text):
    assert normalize_fingerprint(text) == HEX


@pytest.mark.parametrize("text", ["", HEX[:-2], HEX + "00", HEX[:-1] + "g", "sha1:" + HEX,
                                  "md5"])
def test_bad_fingerprints(text):
    with pytest.raises(ValueError, match="SHA-256 fingerprint"):
        normalize_fingerprint(text)


def test_settings():
    assert TLSSettings.create() is None
    assert TLSSettings.create(fingerprint=HEX.upper()).fingerprint == HEX
    with pytest.raises(ValueError, match="needs tls_client_cert"):
        TLSSettings.create(client_key="k.pem")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer_key, issuer, ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("CA", ca_key, ca_key, "CA", True)
    master = _cert("m", key, ca_key, "CA", False,
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    client = root / "client.pem"
    client.write_bytes(master.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"ca_file": str(ca_file), "master": master, "client": str(client)}


def test_ca_and_host_name(pki):
    creator = MasterConnectionCreator("127.0.0.1", TLSSettings(ca_file=pki["ca_file"]))
    assert creator.problem(pki["master"], 0, 0, True) is None
    assert "not trusted by the CAs of" in creator.problem(pki["master"], 20, 0, False)
    assert MasterConnectionCreator("localhost", creator.settings).problem(
        pki["master"], 0, 0, True) is None
    wrong = MasterConnectionCreator("master.example.org", creator.settings)
    assert "not valid for the master host 'master.example.org'" in wrong.problem(
        pki["master"], 0, 0, True)


def test_pinning(pki):
    right = pki["master"].fingerprint(hashes.SHA256()).hex()
    alone = MasterConnectionCreator("any.example.org", TLSSettings(fingerprint=right))
    # pinning alone replaces CA and host name checks (e.g. a self-signed master certificate)
    assert alone.problem(pki["master"], 18, 0, False) is None
    bad = MasterConnectionCreator("127.0.0.1", TLSSettings(fingerprint="00" * 32))
    assert "is not the pinned 00:00" in bad.problem(pki["master"], 0, 0, True)
    both = MasterConnectionCreator("127.0.0.1", TLSSettings(ca_file=pki["ca_file"],
                                                            fingerprint=right))
    assert both.problem(pki["master"], 0, 0, True) is None
    assert both.problem(pki["master"], 20, 0, False) is not None


def test_client_certificate_and_missing_files(pki, tmp_path):
    MasterConnectionCreator("127.0.0.1", TLSSettings(client_cert=pki["client"]))
    with pytest.raises(ValueError, match="cannot read the TLS CA file"):
        MasterConnectionCreator("h", TLSSettings(ca_file=str(tmp_path / "none.pem")))
    with pytest.raises(ValueError, match="no PEM certificate"):
        (tmp_path / "empty.pem").write_text("nothing")
        MasterConnectionCreator("h", TLSSettings(ca_file=str(tmp_path / "empty.pem")))


def test_client_endpoint(pki):
    from twisted.internet import reactor

    tls = TLSSettings(ca_file=pki["ca_file"])
    assert isinstance(client_endpoint(reactor, ClientTarget("127.0.0.1", 1, tls=tls)),
                      VerifiedTLSEndpoint)
    assert isinstance(client_endpoint(reactor, ClientTarget("127.0.0.1", 1, use_tls=True)),
                      VerifiedTLSEndpoint)
    proxied = ClientTarget("127.0.0.1", 1, tls=tls, proxy_connection_string="tcp:p:3128")
    assert isinstance(client_endpoint(reactor, proxied), VerifiedTLSEndpoint)
    with pytest.raises(ValueError, match="not a connection string"):
        client_endpoint(reactor, ClientTarget(connection_string="tcp:host=h:port=1", tls=tls))


def _parse(*args):
    options = CreateWorkerOptions()
    options.parseOptions([*args, "basedir", "127.0.0.1:9989", "w", "pw"])
    return options


def test_create_worker_options(pki):
    options = _parse("--tls-fingerprint", ":".join(["AB"] * 32), "--tls-ca-file", pki["ca_file"])
    assert options["tls-fingerprint"] == "ab" * 32
    assert options["use-tls"]
    assert not _parse()["use-tls"]
    with pytest.raises(usage.UsageError, match="no such file"):
        _parse("--tls-ca-file", "/nonexistent/ca.pem")
    with pytest.raises(usage.UsageError, match="--tls-fingerprint"):
        _parse("--tls-fingerprint", "abc")
    with pytest.raises(usage.UsageError, match="needs --tls-client-cert"):
        _parse("--tls-client-key", pki["client"])
    with pytest.raises(usage.UsageError, match="not --connection-string"):
        _parse("--connection-string", "tcp:host=h:port=1", "--tls-ca-file", pki["ca_file"])


def _parse_without_password(*args):
    options = CreateWorkerOptions()
    options.parseOptions([*args, "basedir", "127.0.0.1:9989", "w"])
    return options


def test_create_worker_without_password_needs_a_client_certificate(pki):
    options = _parse_without_password("--tls-client-cert", pki["client"])
    assert options["passwd"] is None and options["use-tls"]
    with pytest.raises(usage.UsageError, match="only be left out with --tls-client-cert"):
        _parse_without_password()
    with pytest.raises(usage.UsageError, match="needs protocol 'msg'"):
        _parse_without_password("--tls-client-cert", pki["client"], "--protocol", "pb")
    with pytest.raises(usage.UsageError, match="not 'zmq'"):
        _parse_without_password("--tls-client-cert", pki["client"], "--transport", "zmq")


def test_create_worker_tac_for_certificate_login(pki):
    from buildbot_worker_msgproto.scripts.create_worker import make_tac

    tac = make_tac(_parse_without_password("--tls-client-cert", pki["client"]))
    assert "\npasswd = None\n" in tac
    assert f"\ntls_client_cert = {pki['client']!r}\n" in tac


def test_worker_without_password(pki, tmp_path):
    from buildbot_worker_msgproto.worker import Worker

    def make(**kwargs):
        return Worker("127.0.0.1", 1, "w", kwargs.pop("passwd", None), str(tmp_path), 0,
                      **kwargs)

    with pytest.raises(ValueError, match="needs a password, or a TLS client certificate"):
        make()
    with pytest.raises(ValueError, match="needs a password, or a TLS client certificate"):
        make(passwd="", tls_ca_file=pki["ca_file"])
    with pytest.raises(ValueError, match="not 'amqp'"):
        make(tls_client_cert=pki["client"], transport="amqp")
    worker = make(tls_client_cert=pki["client"], tls_ca_file=pki["ca_file"])
    assert worker.sessions.password is None
    assert worker.sessions.new_driver().session.certificate_login
