"""What the TLS end-to-end tests of the transport suite share (wss, AMQPS): workers that
must be rejected, and the assertions about them."""

from __future__ import annotations

import time
from typing import Any

from . import harness
from .transport_suite import TransportEnv


class RejectingEnv(TransportEnv):
    """The suite's master and worker, plus workers the TLS check of the master (or of the
    broker) must keep out: ``rejected_options`` maps each one's name to its create-worker
    options.  They are configured on the master with the right password, so only the
    TLS check keeps them out."""

    def __init__(self, suite: Any, root: str,
                 rejected_options: dict[str, tuple[str, ...]]) -> None:
        super().__init__(suite, root, other_workers=rejected_options)
        #: the test's certificates (a test_tls.Certs)
        self.certs = suite.certs
        self.rejected = {name: self.make_worker(name, options)
                         for name, options in rejected_options.items()}
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


def assert_certificate_rejected(master: harness.Master, worker: harness.Worker, name: str,
                                why: str, address: str, started: float, wait: float) -> None:
    """``worker`` (worker ``name``) ran for at least ``wait`` s since ``started``, never
    attached, and logged certificate rejections naming ``why`` and ``address``."""
    remaining = wait - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    assert worker.is_running, worker.diagnostics()
    assert not master.worker_data(name)["connected_to"]
    assert f"worker {name!r} attaching" not in master.log_text()
    log = worker.log_text()
    rejections = [ln for ln in log.splitlines() if "TLS: master certificate rejected" in ln]
    assert len(rejections) >= 2, worker.diagnostics()  # it keeps retrying
    assert why in rejections[0], rejections[0]
    assert address in rejections[0], rejections[0]
    assert "Connected to buildmaster" not in log


def wrong_fingerprint(fingerprint: str) -> str:
    """A pin that is surely not ``fingerprint`` (its first byte changed), upper case; a
    fixed first byte would match the real certificate once in 256 runs."""
    first = "ff" if fingerprint[:2].lower() == "00" else "00"
    return (first + fingerprint[2:]).upper()
