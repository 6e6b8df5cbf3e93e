"""Assertions shared by the TLS end-to-end tests (wss, AMQPS)."""

from __future__ import annotations

import time

from . import harness


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
