"""The WebSocket transport over TLS (``wss://``), with the worker verifying the master.

The master's websocket transport listens on an ``ssl:`` strport with a certificate issued
by a test CA (made with ``cryptography``, see test_tls.Certs); then

- our worker with ``--transport websocket --tls-ca-file CA`` runs the whole transport
  suite (shell step, file download and upload checked byte for byte, interrupt,
  reconnect) over ``wss://``;
- a worker trusting an unrelated CA, and one pinning a wrong fingerprint, never attach,
  log the rejection and keep retrying.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from . import harness
from . import tls_checks
from .test_tls import Certs
from .tls_checks import RejectingEnv
from .tls_checks import assert_certificate_rejected
from .transport_suite import WORKER
from .transport_suite import TransportEnv
from .transport_suite import TransportSuite

REJECT_WAIT = 15  # seconds a rejected worker must stay unattached
PATH = "/msg"


class TestWss(TransportSuite):
    transport = "websocket"
    certs: Certs

    def master_transports_py(self) -> str:
        port = (f"ssl:{{TPORT}}:interface=127.0.0.1:privateKey={self.certs.master_key}"
                f":certKey={self.certs.master_cert}")
        return repr({"websocket": {"port": port, "path": PATH}})

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        return ("--transport-option", f"path={PATH}", "--tls-ca-file", self.certs.ca_file)

    @pytest.fixture(scope="class")
    def env(self, tmp_path_factory: Any) -> Any:
        root = str(tmp_path_factory.mktemp("transport-wss"))
        certs = self.certs = Certs(os.path.join(root, "certs"))
        wrong_fp = tls_checks.wrong_fingerprint(certs.fingerprint)
        path = ("--transport-option", f"path={PATH}")
        yield from harness.started(RejectingEnv(self, root, {
            "wss-wrong-ca": (*path, "--tls-ca-file", certs.other_ca_file),
            "wss-pin-bad": (*path, "--tls-fingerprint", wrong_fp),
        }))

    # ------------------------------------------------------------------ TLS specifics
    def test_master_listens_on_wss(self, env: RejectingEnv) -> None:
        log = env.master.log_text()
        assert re.search(rf"msgproto: websocket transport listening on "
                         rf"wss://127\.0\.0\.1:{env.transport_port}{PATH}\b", log), log[-3000:]
        tac = env.worker.tac_text()
        assert f"tls_ca_file = {env.certs.ca_file!r}" in tac
        assert "use_tls = True" in tac

    def test_verified_worker_attached_over_tls(self, env: RejectingEnv) -> None:
        env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        assert f"worker {WORKER!r} attaching over msgproto" in env.master.log_text()
        log = env.worker.log_text()
        assert "TLS: master certificate rejected" not in log
        assert "TLS: handshake with the master" not in log

    @pytest.mark.parametrize("name, why", [
        ("wss-wrong-ca", "is not trusted by the CAs of"),
        ("wss-pin-bad", "is not the pinned"),
    ])
    def test_rejected_master_certificate(self, env: RejectingEnv, name: str, why: str) -> None:
        assert_certificate_rejected(env.master, env.rejected[name], name, why,
                                    f"(master 127.0.0.1:{env.transport_port})",
                                    env.rejected_started, REJECT_WAIT)
