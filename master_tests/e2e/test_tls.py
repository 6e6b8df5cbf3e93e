"""TLS on the master port, with the worker verifying the master's certificate.

Certificates are made here with ``cryptography``: a CA, a master certificate it issued
(SAN 127.0.0.1 and localhost), and a second, unrelated CA.  One real master listens with
``ssl:`` strports on its negotiated msg/PB port and on an ``amp`` transport port; then

- our worker with ``--tls-ca-file`` builds over msg (and over amp);
- a stock PB worker with ``--connection-string tls:...:trustRoots=DIR`` builds (PB
  dialect negotiation inside TLS);
- our worker trusting the wrong CA never attaches, logs the rejection and keeps retrying
  with growing delays;
- a pinned fingerprint: the right one builds, a wrong one is rejected;
- a worker presenting a client certificate builds (the master does not ask for one).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import harness
from . import tls_checks
from .multi_worker_env import MultiWorkerEnv
from .multi_worker_env import assert_backing_off

REJECT_WAIT = 15  # seconds a rejected worker must stay unattached
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: str, *items) -> str:
    with open(path, "wb") as f:
        for item in items:
            if isinstance(item, x509.Certificate):
                f.write(item.public_bytes(serialization.Encoding.PEM))
            else:
                f.write(item.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


class Certs:
    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        ca_key, other_key, master_key, client_key = (ec.generate_private_key(ec.SECP256R1())
                                                     for _ in range(4))
        ca = _cert("msgproto test CA", ca_key, "msgproto test CA", ca_key, ca=True)
        other = _cert("unrelated CA", other_key, "unrelated CA", other_key, ca=True)
        master = _cert("buildmaster", master_key, "msgproto test CA", ca_key, ca=False,
                       san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.DNSName("localhost")])
        client = _cert("mtls", client_key, "msgproto test CA", ca_key, ca=False)
        self.client_cert = _write(os.path.join(root, "client-cert.pem"), client)
        self.client_key = _write(os.path.join(root, "client-key.pem"), client_key)
        self.ca_file = _write(os.path.join(root, "ca.pem"), ca)
        self.other_ca_file = _write(os.path.join(root, "other-ca.pem"), other)
        self.master_cert = _write(os.path.join(root, "master-cert.pem"), master)
        self.master_key = _write(os.path.join(root, "master-key.pem"), master_key)
        self.trust_dir = os.path.join(root, "trust")
        os.makedirs(self.trust_dir)
        _write(os.path.join(self.trust_dir, "ca.pem"), ca)
        self.fingerprint = master.fingerprint(hashes.SHA256()).hex()

    def strport(self, port: int) -> str:
        return (f"ssl:{port}:interface=127.0.0.1:privateKey={self.master_key}"
                f":certKey={self.master_cert}")


OURS = harness.PROTOCOLS["msg"]
STOCK = harness.ProtocolSpec(name="stock-pb", protocols_py="", worker_py="")


class TLSEnv(MultiWorkerEnv):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.certs = Certs(os.path.join(root, "certs"))
        self.amp_port = harness.free_port()
        fp = self.certs.fingerprint
        wrong_fp = ":".join(re.findall("..", tls_checks.wrong_fingerprint(fp)))  # colons
        right_fp = ":".join(re.findall("..", fp.upper()))
        ca, other = self.certs.ca_file, self.certs.other_ca_file
        #: name -> (create spec, extra create args, master host:port)
        self.specs = {
            "ca-ok": (OURS, ("--tls-ca-file", ca), self.port),
            "amp-ok": (OURS, ("--transport", "amp", "--tls-ca-file", ca), self.amp_port),
            "stock": (STOCK, ("--connection-string",
                              f"tls:host=127.0.0.1:port={self.port}"
                              f":trustRoots={self.certs.trust_dir}"), self.port),
            "pin-ok": (OURS, ("--tls-fingerprint", right_fp), self.port),
            "mtls": (OURS, ("--tls-ca-file", ca, "--tls-client-cert", self.certs.client_cert,
                            "--tls-client-key", self.certs.client_key), self.port),
            "wrong-ca": (OURS, ("--tls-ca-file", other), self.port),
            "pin-bad": (OURS, ("--tls-fingerprint", wrong_fp), self.port),
        }

    def start(self) -> None:
        protocols_py = repr({"msg": {"port": self.certs.strport(self.port), "transports": {
            "amp": {"port": self.certs.strport(self.amp_port)}}}})
        self.start_all(protocols_py, self.specs)


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory):
    yield from harness.started(TLSEnv(str(tmp_path_factory.mktemp("e2e-tls"))))


def test_tac_has_tls_settings(tls_env):
    tac = tls_env.workers["ca-ok"].tac_text()
    assert f"tls_ca_file = {tls_env.certs.ca_file!r}" in tac
    assert "use_tls = True" in tac
    tac = tls_env.workers["pin-ok"].tac_text()
    assert f"tls_fingerprint = {tls_env.certs.fingerprint!r}" in tac


def test_our_worker_with_ca_file_builds_over_msg(tls_env):
    tls_env.check_build("ca-ok")
    assert "worker 'ca-ok' attaching over msgproto" in tls_env.master.log_text()
    assert "TLS: master certificate rejected" not in tls_env.workers["ca-ok"].log_text()


def test_our_worker_with_ca_file_builds_over_amp(tls_env):
    tls_env.check_build("amp-ok")
    assert "worker 'amp-ok' attaching over msgproto" in tls_env.master.log_text()


def test_stock_pb_worker_over_tls_builds(tls_env):
    tls_env.check_build("stock")
    log = tls_env.master.log_text()
    assert "worker 'stock' attaching from" in log  # Buildbot's PB attach line
    assert "worker 'stock' attaching over msgproto" not in log


def test_pinned_fingerprint_builds(tls_env):
    tls_env.check_build("pin-ok")
    assert "worker 'pin-ok' attaching over msgproto" in tls_env.master.log_text()


def test_client_certificate_presented(tls_env):
    # only that the worker loads and presents it; the master does not ask for one here
    tls_env.check_build("mtls")


@pytest.mark.parametrize("name, why", [
    ("wrong-ca", "is not trusted by the CAs of"),
    ("pin-bad", "is not the pinned"),
])
def test_rejected_master_certificate(tls_env, name, why):
    tls_env.wait_refusals(REJECT_WAIT)
    tls_env.assert_never_attached(name)
    worker = tls_env.workers[name]
    rejections = [ln for ln in worker.log_text().splitlines()
                  if "TLS: master certificate rejected" in ln]
    assert len(rejections) >= 2, worker.diagnostics()  # it keeps retrying...
    assert why in rejections[0], rejections[0]
    # ...with growing delays (ClientService counts each rejection as a failed attempt)
    assert_backing_off(worker)
