"""Password guessing against a real master is throttled per (host, worker name).

Many wrong-password handshakes from 127.0.0.1 get the name refused for a while (with a
log line naming the host); the real worker, already attached from the same host, keeps
running its build; another worker name from the same host is not throttled; and once the
back-off is over a correct login works again.
"""

from __future__ import annotations

import os
import time

import pytest

from buildbot_worker_msgproto.protocol import events as ev
from master_tests.rawclient import RawClient

from . import harness

WORKER = "w1"
PASSWD = "right-password"
OTHER = "w2"  # registered, never connected: shares the host with the attacker
FAILURES = 3
THROTTLE_SECONDS = 3
LINES = 12

BUILDERS_PY = f"""
c['builders'].append(util.BuilderConfig(
    name='slow', workernames=[{WORKER!r}],
    factory=util.BuildFactory([steps.ShellCommand(
        name='count', command=['sh', '-c',
        'i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); sleep 0.25; done'])])))
c['builders'].append(util.BuilderConfig(
    name='quick', workernames=[{WORKER!r}],
    factory=util.BuildFactory([steps.ShellCommand(name='hello', command=['echo', 'ok'])])))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("login-throttle"))
    port, www_port = harness.free_port(), harness.free_port()
    spec = harness.PROTOCOLS["msg"]
    protocols_py = ("{'msg': {'port': 'tcp:{PORT}:interface=127.0.0.1', "
                    f"'login_failures_before_throttle': {FAILURES}, "
                    f"'login_throttle_seconds': {THROTTLE_SECONDS}}}}}")
    cfg = harness.make_master_cfg(
        protocols_py, [spec.master_worker_py(WORKER, PASSWD),
                       spec.master_worker_py(OTHER, "other-password")],
        port, www_port, BUILDERS_PY)
    master = harness.Master(os.path.join(root, "master"), cfg, www_port=www_port,
                            master_port=port)
    worker = harness.Worker.for_protocol(spec, os.path.join(root, "worker"), port, WORKER,
                                         PASSWD)
    try:
        master.create()
        worker.create()
        master.start()
        worker.start()
        master.wait_worker_connected(WORKER, 30, worker=worker)
        yield master, worker, port
    finally:
        worker.stop()
        master.stop()


def _login(port: int, worker: str, password: str) -> tuple[object, list]:
    with RawClient(port) as c:
        c.choose_msg()
        session, events = c.handshake(worker, password)
        if session.is_open:
            events.append(c.read_until_closed())
        return session, events


def _closed_code(events: list) -> str | None:
    closes = [e for e in events if isinstance(e, ev.Closed)]
    return closes[-1].code if closes else None


def test_password_guessing_is_throttled(env):
    master, worker, port = env
    build_request = master.force_build("slow")
    master.wait_build_started(build_request, 30)

    for _ in range(FAILURES):
        _, events = _login(port, WORKER, "guess")
        assert _closed_code(events) == "authentication_failed", events
    throttled_at = time.monotonic()
    log = master.log_text()
    assert f"throttling logins of worker '{WORKER}' from 127.0.0.1 for {THROTTLE_SECONDS} s" \
        in log, harness.tail(log, 30)

    # During the back-off even the right password is refused, before any challenge ...
    for password in ("guess", PASSWD, "guess"):
        session, events = _login(port, WORKER, password)
        assert session.version is None, "the master sent a challenge"
        assert _closed_code(events) == "login_throttled", events
    assert time.monotonic() - throttled_at < THROTTLE_SECONDS, "test too slow for the back-off"
    refusals = master.log_text().count(f"refusing logins of worker '{WORKER}' from 127.0.0.1")
    assert refusals == 1  # once per back-off, however many attempts

    # ... but another worker name from the same host is challenged as usual.
    _, events = _login(port, OTHER, "guess")
    assert _closed_code(events) == "authentication_failed", events

    # The real worker, attached from the same host, was never disturbed.
    build = master.wait_build(build_request, 60)
    assert build["results"] == harness.SUCCESS, master.build_summary(build["buildid"])
    text = master.step_log_text(master.step(build["buildid"], "count")["stepid"])
    assert [ln for ln in text.splitlines() if ln.startswith("line-")] == \
        [f"line-{i}" for i in range(LINES)]
    assert master.worker_data(WORKER)["connected_to"]

    # After the back-off, the right password logs in again (then meets the live worker).
    time.sleep(max(0.0, throttled_at + THROTTLE_SECONDS + 0.5 - time.monotonic()))
    session, events = _login(port, WORKER, PASSWD)
    assert any(isinstance(e, ev.Authenticated) for e in events), events
    assert events[-1] and events[-1][-1]["code"] == "duplicate_worker", events


def test_real_worker_reconnects_and_builds(env):
    master, worker, _ = env
    worker.restart()
    master.wait_worker_connected(WORKER, 30, worker=worker)
    assert master.run_build("quick", timeout=60)["results"] == harness.SUCCESS
    log = master.log_text()
    assert "Traceback" not in log, harness.tail(log, 80)
