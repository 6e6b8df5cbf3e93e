"""Liveness and lifecycle over msg with a real master and worker.

- a worker frozen (SIGSTOP) for less than the resume window resumes its session: the
  master never detaches it;
- a worker frozen for longer is detected by the master's heartbeat timeout and detached
  once the resume window is over, and reconnects by itself once it runs again;
- a frozen master is detected by the worker, which reconnects once the master runs;
- a master restart: the worker reconnects and builds;
- graceful shutdown requested by the worker (SIGHUP with --allow-shutdown signal).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from . import harness
from .single_worker_env import PASSWD
from .single_worker_env import WORKER
from .single_worker_env import SingleWorkerEnv

HEARTBEAT_INTERVAL = 1
HEARTBEAT_TIMEOUT = 3

RESUME_WINDOW = 4

HEARTBEATS = {"heartbeat_interval": HEARTBEAT_INTERVAL,
              "heartbeat_timeout": HEARTBEAT_TIMEOUT, "resume_window": RESUME_WINDOW}


class Env(SingleWorkerEnv):
    def build_ok(self) -> None:
        build = self.master.run_build("b", timeout=60)
        assert build["results"] == harness.SUCCESS, self.master.build_summary(build["buildid"])


@pytest.fixture
def make_env(tmp_path):
    envs = []

    def make(create_args: tuple[str, ...] = (), msg_options: dict | None = None) -> Env:
        env = Env(str(tmp_path / f"env{len(envs)}"),
                  HEARTBEATS if msg_options is None else msg_options, create_args=create_args)
        envs.append(env)
        return env.start()

    yield make
    for env in envs:
        env.stop()


def _wait_log(proc: harness._Process, text: str, timeout: float) -> None:
    harness.wait_for(lambda: text in proc.log_text(), timeout, f"{text!r} in the log", 0.2,
                     proc.diagnostics)


def test_briefly_frozen_worker_resumes_its_session(make_env):
    env = make_env(msg_options={**HEARTBEATS, "resume_window": 30})
    with env.worker.frozen():
        _wait_log(env.master, "connection lost (heartbeat_timeout", HEARTBEAT_TIMEOUT + 15)
    _wait_log(env.master, "resumed its session", 30)
    assert env.master.worker_data(WORKER)["connected_to"], "the worker was detached"
    assert "Worker.detached" not in env.master.log_text()
    env.build_ok()


def test_frozen_worker_is_detected_and_reconnects(make_env):
    env = make_env()
    with env.worker.frozen():
        # lost after the heartbeat timeout, detached after the window (plus a heartbeat
        # timeout, so that the worker's own window ends first)
        env.master.wait_worker_disconnected(WORKER, 2 * HEARTBEAT_TIMEOUT + RESUME_WINDOW + 15)
        _wait_log(env.master, "heartbeat_timeout", 5)
        _wait_log(env.master, "resume_window_expired", 5)
    env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
    env.build_ok()


def test_frozen_master_is_detected_by_the_worker(make_env):
    env = make_env()
    with env.master.frozen():
        _wait_log(env.worker, "heartbeat_timeout", HEARTBEAT_TIMEOUT + 15)
    env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
    env.build_ok()


def test_master_restart(make_env):
    env = make_env()
    env.build_ok()
    env.master.restart()
    env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
    env.build_ok()


def test_graceful_shutdown_requested_by_worker(make_env):
    env = make_env(("--allow-shutdown", "signal"))
    # Buildbot's race, not the protocol's: a shutdown request while the worker's builders
    # are still attaching finds them "busy" (WorkerForBuilder.isBusy: not AVAILABLE) and
    # is never looked at again (only buildFinished calls maybeShutdown); PB has it too.
    # So signal once the builder has attached (its "attached" message, the second one).
    harness.wait_for(lambda: env.worker.log_text().count("message from master: attached") >= 2,
                     30, "the builder to attach", 0.1, env.worker.diagnostics)
    env.worker.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and env.worker.popen.poll() is None:
        time.sleep(0.2)
    assert env.worker.popen.poll() is not None, env.worker.diagnostics()
    log = env.worker.log_text()
    assert "Telling the master we want to shutdown" in log
    assert "worker shutting down on command from master" in log
    env.master.wait_worker_disconnected(WORKER, 15)


def test_duplicate_worker_replaces_a_dead_connection(make_env):
    """Buildbot's arbitration: the old connection is pinged; a dead one is replaced.

    Heartbeats are left at their (long) defaults so that the ping, not the heartbeat,
    is what finds the frozen first worker dead.
    """
    env = make_env(msg_options={})
    second = harness.Worker.for_protocol(harness.PROTOCOLS["msg"],
                                         os.path.join(env.root, "second"), env.port, WORKER,
                                         PASSWD)
    second.create()
    try:
        with env.worker.frozen():
            second.start()
            _wait_log(env.master, "ping timed out", 40)
            _wait_log(second, "Connected to buildmaster over msgproto", 40)
            env.master.wait_worker_connected(WORKER, 30, worker=second)
            build = env.master.run_build("b", timeout=60)
            assert build["results"] == harness.SUCCESS
            assert "hello from" in env.master.build_log_text(build["buildid"], "hello")
    finally:
        second.stop()


def test_wrong_password_stops_after_max_retries(make_env):
    """Like PB: failed logins count against --maxretries and then the worker stops."""
    env = make_env()
    wrong = harness.Worker.for_protocol(harness.PROTOCOLS["msg"], os.path.join(env.root, "wrong"),
                                        env.port, WORKER, "not-the-password",
                                        extra_create_args=("--maxretries", "2"))
    wrong.create()
    wrong.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and wrong.popen.poll() is None:
            time.sleep(0.2)
        assert wrong.popen.poll() is not None, wrong.diagnostics()
        assert "check the worker name and password" in wrong.log_text()
        assert "authentication failed for worker 'w1'" in env.master.log_text()
        assert env.master.worker_data(WORKER)["connected_to"], "the real worker was dropped"
    finally:
        wrong.stop()
