"""Certificate login: a worker without a password logs in with its TLS client certificate.

One real master (``client_certificates='optional'``, TLS built from ``tls_cert`` on the
negotiated port and, with ``'tls': True``, on the amp and websocket transports too) and
real workers made by ``create-worker --tls-client-cert ... BASEDIR MASTER NAME`` (no
password argument):

- certificate-only workers (``MsgWorker(name, None)``) build over tcp, amp and wss;
- the certificate of another worker, a worker with a password on the master, a password
  login for a certificate-only worker and a stock PB login for one are all refused, logged,
  and never attach;
- mutual TLS binding on an extra transport: amp with a password and the certificate of
  another worker is refused too.
"""

from __future__ import annotations

import os

import pytest

from buildbot_worker_msgproto.scripts import gen_keys

from . import harness
from .multi_worker_env import MultiWorkerEnv

REFUSAL_TIMEOUT = 30
OURS = harness.PROTOCOLS["msg"]
STOCK = harness.ProtocolSpec(name="stock-pb", protocols_py="", worker_py="")
NAMES = ("cert_tcp", "cert_amp", "cert_ws", "cert_wrong", "has_pw", "no_pw_scram",
         "pw_amp_other", "stock_no_pw")


class CertificateLoginEnv(MultiWorkerEnv):
    def __init__(self, root: str, layout: gen_keys.Layout) -> None:
        super().__init__(root)
        self.layout = layout
        self.amp_port = harness.free_port()
        self.ws_port = harness.free_port()

    def ours(self, cert_of: str, transport: str = "tcp") -> tuple[harness.ProtocolSpec,
                                                                  tuple[str, ...], int]:
        port = {"tcp": self.port, "amp": self.amp_port, "websocket": self.ws_port}[transport]
        return OURS, ("--transport", transport, "--tls-ca-file", self.layout.ca_cert,
                      "--tls-client-cert", self.layout.worker_cert(cert_of),
                      "--tls-client-key", self.layout.worker_key(cert_of)), port

    def start(self) -> None:
        # (master's password, worker's password); None: none
        self.passwords = {
            "cert_tcp": (None, None), "cert_amp": (None, None), "cert_ws": (None, None),
            "cert_wrong": (None, None), "has_pw": ("pw", None), "no_pw_scram": (None, "pw"),
            "pw_amp_other": ("pw", "pw"), "stock_no_pw": (None, "pw"),
        }
        specs = {
            "cert_tcp": self.ours("cert_tcp"),
            "cert_amp": self.ours("cert_amp", "amp"),
            "cert_ws": self.ours("cert_ws", "websocket"),
            "cert_wrong": self.ours("cert_tcp"),
            "has_pw": self.ours("has_pw"),
            "no_pw_scram": self.ours("no_pw_scram"),
            "pw_amp_other": self.ours("cert_tcp", "amp"),
            "stock_no_pw": (STOCK, ("--connection-string",
                                    f"tls:host=127.0.0.1:port={self.port}"
                                    f":trustRoots={os.path.dirname(self.layout.ca_cert)}"
                                    f":certificate={self.layout.worker_cert('stock_no_pw')}"
                                    f":privateKey={self.layout.worker_key('stock_no_pw')}"),
                            self.port),
        }
        protocols_py = repr({"msg": {
            "port": f"tcp:{self.port}:interface=127.0.0.1",
            "tls_cert": self.layout.master_cert, "tls_key": self.layout.master_key,
            "tls_client_ca": self.layout.ca_cert, "client_certificates": "optional",
            "transports": {
                "amp": {"port": f"tcp:{self.amp_port}:interface=127.0.0.1", "tls": True},
                "websocket": {"port": f"tcp:{self.ws_port}:interface=127.0.0.1", "tls": True},
            }}})
        self.start_all(protocols_py, specs)

    def wait_master_log(self, text: str) -> str:
        """The first master log line containing ``text`` (waits, bounded)."""
        def found() -> str | None:
            return next((ln for ln in self.master.log_text().splitlines() if text in ln), None)
        return harness.wait_for(found, REFUSAL_TIMEOUT, f"master log line {text!r}",
                                diagnostics=self.e2e_diagnostics)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    keys = str(tmp_path_factory.mktemp("e2e-certlogin-keys"))
    layout = gen_keys.generate(keys, workers=list(NAMES)).layout
    root = str(tmp_path_factory.mktemp("e2e-certlogin"))
    yield from harness.started(CertificateLoginEnv(root, layout))


@pytest.mark.parametrize("name, transport", [("cert_tcp", "tcp"), ("cert_amp", "amp"),
                                             ("cert_ws", "websocket")])
def test_certificate_only_worker_builds(env, name, transport):
    tac = env.workers[name].tac_text()
    assert "passwd = None" in tac and f"transport = {transport!r}" in tac
    env.check_build(name)
    line = env.wait_master_log(f"worker {name!r} from 127.0.0.1:")
    assert "logs in with its TLS client certificate" in line
    assert f"urn:buildbot-msgproto:worker:{name}" in line or f"['{name}']" in line, line


def test_certificate_of_another_worker_is_refused(env):
    line = env.wait_master_log("refusing worker 'cert_wrong' from 127.0.0.1:")
    assert "certificate_mismatch" in line and "worker names ['cert_tcp']" in line, line
    env.assert_never_attached("cert_wrong", keeps_running=False)
    harness.wait_for(lambda: "certificate_mismatch" in env.workers["cert_wrong"].log_text(),
                     REFUSAL_TIMEOUT, "the worker logging the refusal")


def test_worker_with_a_password_on_the_master_must_use_it(env):
    line = env.wait_master_log("refusing worker 'has_pw' from 127.0.0.1:")
    assert "unsupported_auth" in line and "has a password on this master" in line, line
    env.assert_never_attached("has_pw", keeps_running=False)
    log = env.workers["has_pw"].log_text()
    assert "login to the master failed (unsupported_auth)" in log, log[-3000:]
    assert "check the worker name and TLS client certificate" in log


def test_password_login_of_a_certificate_only_worker_fails(env):
    env.wait_master_log("worker 'no_pw_scram' has no password on this master")
    env.assert_never_attached("no_pw_scram", keeps_running=False)
    harness.wait_for(lambda: "authentication_failed" in env.workers["no_pw_scram"].log_text(),
                     REFUSAL_TIMEOUT, "the worker logging the failed login")


def test_stock_pb_login_of_a_certificate_only_worker_fails(env):
    env.wait_master_log("refusing the PB login of worker 'stock_no_pw'")
    env.assert_never_attached("stock_no_pw", keeps_running=False)


def test_amp_binds_client_certificates_to_worker_names(env):
    """mTLS on an extra transport: right password, certificate of another worker."""
    line = env.wait_master_log("refusing worker 'pw_amp_other' from 127.0.0.1:")
    assert "certificate_mismatch" in line, line
    env.assert_never_attached("pw_amp_other", keeps_running=False)


def test_extra_transports_listen_with_tls_and_client_certificates(env):
    log = env.master.log_text()
    assert "amp transport listening on" in log
    assert "(TLS, client certificates optional)" in env.wait_master_log(
        "amp transport listening on")
    assert env.wait_master_log("websocket transport listening on wss://")
