"""Mutual TLS: the master asks for worker certificates and binds them to worker names.

Certificates come from ``gen-keys`` (``gen_keys.generate``) in a temp dir.  One master with
``client_certificates='required'`` (TLS built by the master from ``tls_cert``/``tls_key``/
``tls_client_ca`` over a plain ``tcp:`` port on 127.0.0.1); then

- our worker presenting the certificate of ITS name builds over msg, and so does a stock PB
  worker (``tls:`` connection string with ``certificate=``/``privateKey=``);
- a worker presenting the certificate of ANOTHER worker (right password) is refused before
  the challenge with ``certificate_mismatch``, logged with the peer address, never attaches;
  the same for a stock PB worker (refused at its PB login);
- a worker without a client certificate fails the TLS handshake (logged), never attaches.

A second master with ``client_certificates='optional'`` lets a worker without a certificate
in, and still binds a presented one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from buildbot_worker_msgproto.scripts import gen_keys

from . import harness
from .multi_worker_env import MultiWorkerEnv

REJECT_WAIT = 12  # seconds a refused worker must stay unattached
OURS = harness.PROTOCOLS["msg"]
STOCK = harness.ProtocolSpec(name="stock-pb", protocols_py="", worker_py="")


class MTLSEnv(MultiWorkerEnv):
    def __init__(self, root: str, mode: str, layout: gen_keys.Layout) -> None:
        super().__init__(root)
        self.mode = mode
        self.layout = layout
        self.specs: dict[str, tuple[harness.ProtocolSpec, tuple[str, ...]]] = {}

    def ours(self, cert_of: str | None) -> tuple[harness.ProtocolSpec, tuple[str, ...]]:
        args: tuple[str, ...] = ("--tls-ca-file", self.layout.ca_cert)
        if cert_of:
            args += ("--tls-client-cert", self.layout.worker_cert(cert_of),
                     "--tls-client-key", self.layout.worker_key(cert_of))
        return OURS, args

    def stock(self, cert_of: str) -> tuple[harness.ProtocolSpec, tuple[str, ...]]:
        return STOCK, ("--connection-string",
                       f"tls:host=127.0.0.1:port={self.port}"
                       f":trustRoots={os.path.dirname(self.layout.ca_cert)}"
                       f":certificate={self.layout.worker_cert(cert_of)}"
                       f":privateKey={self.layout.worker_key(cert_of)}")

    def start(self) -> None:
        protocols_py = repr({"msg": {
            "port": f"tcp:{self.port}:interface=127.0.0.1",
            "tls_cert": self.layout.master_cert, "tls_key": self.layout.master_key,
            "tls_client_ca": self.layout.ca_cert, "client_certificates": self.mode}})
        self.start_all(protocols_py, {name: (spec, args, self.port)
                                      for name, (spec, args) in self.specs.items()})



@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e-mtls-keys"))
    return gen_keys.generate(root, workers=["good", "impostor", "nocert", "stock_good",
                                             "stock_impostor", "plain", "opt_good",
                                             "opt_impostor"]).layout


def _env(tmp_path_factory, layout, mode: str, specs) -> Iterator[MTLSEnv]:
    """A fixture's body: the started MTLSEnv of ``mode`` with the workers ``specs(env)``."""
    env = MTLSEnv(str(tmp_path_factory.mktemp(f"e2e-mtls-{mode}")), mode, layout)
    env.specs = specs(env)
    yield from harness.started(env)


@pytest.fixture(scope="module")
def required_env(tmp_path_factory, layout):
    yield from _env(tmp_path_factory, layout, "required", lambda e: {
        "good": e.ours("good"),
        "impostor": e.ours("good"),  # name 'impostor', certificate of 'good'
        "nocert": e.ours(None),
        "stock_good": e.stock("stock_good"),
        "stock_impostor": e.stock("good"),
    })


@pytest.fixture(scope="module")
def optional_env(tmp_path_factory, layout):
    yield from _env(tmp_path_factory, layout, "optional", lambda e: {
        "plain": e.ours(None),
        "opt_good": e.ours("opt_good"),
        "opt_impostor": e.ours("good"),
    })


def test_required_own_certificate_builds(required_env):
    required_env.check_build("good")
    log = required_env.master.log_text()
    assert "worker 'good' attaching over msgproto" in log
    assert "client certificates required" in log  # the listening line


def test_required_stock_pb_worker_with_own_certificate_builds(required_env):
    required_env.check_build("stock_good")
    assert "worker 'stock_good' attaching from" in required_env.master.log_text()


def test_required_certificate_of_another_worker_is_refused(required_env):
    required_env.wait_refusals(REJECT_WAIT)
    required_env.assert_never_attached("impostor")
    log = required_env.master.log_text()
    lines = [ln for ln in log.splitlines()
             if "refusing worker 'impostor' from 127.0.0.1:" in ln]
    assert lines, required_env.e2e_diagnostics()
    assert "certificate_mismatch" in lines[0] and "worker names ['good']" in lines[0], lines[0]
    worker_log = required_env.workers["impostor"].log_text()
    assert "peer closed it: certificate_mismatch" in worker_log, worker_log[-3000:]
    # refused before the challenge: never counted as a failed password
    assert "throttling logins of worker 'impostor'" not in log


def test_required_stock_pb_worker_with_another_certificate_is_refused(required_env):
    required_env.wait_refusals(REJECT_WAIT)
    # a stock worker stops after a refused PB login, as after a wrong password
    required_env.assert_never_attached("stock_impostor", keeps_running=False)
    log = required_env.master.log_text()
    assert "refusing worker 'stock_impostor' from 127.0.0.1:" in log, \
        required_env.e2e_diagnostics()
    assert ("the TLS client certificate is not valid for worker 'stock_impostor'"
            in required_env.workers["stock_impostor"].log_text())


def test_required_without_certificate_is_refused(required_env):
    required_env.wait_refusals(REJECT_WAIT)
    required_env.assert_never_attached("nocert")
    log = required_env.master.log_text()
    assert "msgproto: TLS handshake with 127.0.0.1:" in log, required_env.e2e_diagnostics()
    assert "refusing worker 'nocert'" not in log  # it never got as far as a session


def test_optional_without_certificate_builds(optional_env):
    optional_env.check_build("plain")
    assert "client certificates optional" in optional_env.master.log_text()


def test_optional_own_certificate_builds(optional_env):
    optional_env.check_build("opt_good")


def test_optional_certificate_of_another_worker_is_refused(optional_env):
    optional_env.wait_refusals(REJECT_WAIT)
    optional_env.assert_never_attached("opt_impostor")
    assert "refusing worker 'opt_impostor' from 127.0.0.1:" in optional_env.master.log_text()
