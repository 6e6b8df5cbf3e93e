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
import time
from typing import Any

import pytest

from . import harness
from . import tls_checks
from .test_tls import Certs
from .tls_checks import assert_certificate_rejected
from .transport_suite import PASSWD
from .transport_suite import WORKER
from .transport_suite import TransportEnv
from .transport_suite import TransportSuite

REJECT_WAIT = 15  # seconds a rejected worker must stay unattached
PATH = "/msg"


class WssEnv(TransportEnv):
    """The suite's master and worker, plus workers that must be rejected."""

    def __init__(self, suite: TestWss, root: str) -> None:
        super().__init__(suite, root)
        certs = self.certs = suite.certs
        wrong_fp = tls_checks.wrong_fingerprint(certs.fingerprint)
        #: name -> extra create-worker options; registered on the master with the same
        #: password, so only the TLS check keeps them out
        self.rejected_specs = {
            "wss-wrong-ca": ("--tls-ca-file", certs.other_ca_file),
            "wss-pin-bad": ("--tls-fingerprint", wrong_fp),
        }
        line = f"worker.MsgWorker({WORKER!r}, {PASSWD!r}),"
        assert self.master.cfg_text.count(line) == 1
        extra = "".join(f"\n    worker.MsgWorker({name!r}, {PASSWD!r}),"
                        for name in self.rejected_specs)
        self.master.cfg_text = self.master.cfg_text.replace(line, line + extra)
        self.rejected: dict[str, harness.Worker] = {}
        for name, args in self.rejected_specs.items():
            basedir = os.path.join(root, name)
            create = [harness.venv_exe("buildbot-worker-msgproto"), "create-worker",
                      "--transport", "websocket", "--transport-option", f"path={PATH}",
                      *args, basedir, suite.worker_master_arg(self), name, PASSWD]
            self.rejected[name] = harness.Worker(basedir, create, name=name)
        self.rejected_started = 0.0

    def start(self) -> None:
        super().start()
        for w in self.rejected.values():
            w.create()
            w.start()
        self.rejected_started = time.monotonic()

    def stop(self) -> None:
        for w in self.rejected.values():
            w.stop()
        super().stop()


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
        self.certs = Certs(os.path.join(root, "certs"))
        env = WssEnv(self, root)
        try:
            env.start()
            yield env
        finally:
            env.stop()

    # ------------------------------------------------------------------ TLS specifics
    def test_master_listens_on_wss(self, env: WssEnv) -> None:
        log = env.master.log_text()
        assert re.search(rf"msgproto: websocket transport listening on "
                         rf"wss://127\.0\.0\.1:{env.transport_port}{PATH}\b", log), log[-3000:]
        tac = harness.read_text(os.path.join(env.worker.basedir, "buildbot.tac"))
        assert f"tls_ca_file = {env.certs.ca_file!r}" in tac
        assert "use_tls = True" in tac

    def test_verified_worker_attached_over_tls(self, env: WssEnv) -> None:
        env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        assert f"worker {WORKER!r} attaching over msgproto" in env.master.log_text()
        log = env.worker.log_text()
        assert "TLS: master certificate rejected" not in log
        assert "TLS: handshake with the master" not in log

    @pytest.mark.parametrize("name, why", [
        ("wss-wrong-ca", "is not trusted by the CAs of"),
        ("wss-pin-bad", "is not the pinned"),
    ])
    def test_rejected_master_certificate(self, env: WssEnv, name: str, why: str) -> None:
        assert_certificate_rejected(env.master, env.rejected[name], name, why,
                                    f"(master 127.0.0.1:{env.transport_port})",
                                    env.rejected_started, REJECT_WAIT)
