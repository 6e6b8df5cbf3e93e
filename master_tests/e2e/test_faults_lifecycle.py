"""Faults that end a session: the window expires, the worker or the master restarts.

Builder ``orphan`` (fault_env.py): build 1 runs a shell loop for 60 s that writes its PID
to ``pid-1`` and a timestamp every 0.2 s to ``alive-1``; a retried build (number 2) runs
for 2 s and writes ``pid-2`` / ``alive-2``.  "Nothing runs twice at once" is checked on
those timestamps: every stamp of build 2 is later than every stamp of build 1.
"""

from __future__ import annotations

import contextlib
import os
import signal

from . import harness
from .fault_env import LOST
from .fault_env import SCALED
from .fault_env import WORKER
from .fault_env import FaultEnv
from .fault_env import alive
from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_env import read_stamps

WINDOW = 5
HEARTBEAT_TIMEOUT = SCALED["heartbeat_timeout"]


def _started(env: FaultEnv, number: int) -> int:
    """Wait until build ``number`` of ``orphan`` runs its loop; return the loop's PID."""
    pid_file = os.path.join(env.marks_dir, f"pid-{number}")
    alive_file = os.path.join(env.marks_dir, f"alive-{number}")
    harness.wait_for(lambda: len(read_stamps(alive_file)) >= 2, 30,
                     f"build {number}'s command to run", 0.1, env.e2e_diagnostics)
    with open(pid_file, encoding="ascii") as f:
        return int(f.read())


def _one_after_the_other(env: FaultEnv, brid: int) -> None:
    """Build 1 of ``brid`` ended RETRY, build 2 SUCCESS, and build 2's command ran only
    after build 1's had stopped."""
    builds = env.master.builds_for_request(brid)
    results = [harness.RESULT_NAMES[b["results"]] for b in builds]
    assert results == ["RETRY", "SUCCESS"], "\n".join(
        env.master.build_summary(b["buildid"], False) for b in builds)
    first = read_stamps(os.path.join(env.marks_dir, "alive-1"))
    second = read_stamps(os.path.join(env.marks_dir, "alive-2"))
    assert first and second
    assert max(first) < min(second), (f"build 1's command ran until {max(first):.2f}, "
                                      f"build 2's started at {min(second):.2f}")


def _kill_leftover(pid: int) -> None:
    """Stop a command that outlived its worker (by its PID: it has a process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def test_window_expiry(fault_env):  # noqa: F811
    """A partition longer than the window: the worker kills its orphaned command when its
    window ends, the master gives up a heartbeat timeout later (Buildbot's disconnect
    path: the build ends RETRY), and the retry runs once the worker is back."""
    env = fault_env("tcp", msg_options={**SCALED, "resume_window": WINDOW})
    brid, _build = env.start_build("orphan")
    pid = _started(env, 1)

    env.proxy.blackhole()
    try:
        env.wait_log(env.worker, "resume_window_expired", HEARTBEAT_TIMEOUT + WINDOW + 10)
        harness.wait_for(lambda: not alive(pid), 10, "the orphaned command to be killed", 0.1)
        # the master waits a heartbeat timeout longer: the orphan is gone before Buildbot
        # hears of the loss and can hand the build to anyone
        assert "resume_window_expired" not in env.master.log_text()
        env.wait_log(env.master, "resume_window_expired", HEARTBEAT_TIMEOUT + 10)
        env.master.wait_worker_disconnected(WORKER, 10)
    finally:
        env.proxy.heal()
    env.finish(brid, 60, retried=True)
    _one_after_the_other(env, brid)
    worker_log = env.worker.log_text()
    assert "lost msgproto session with the buildmaster (resume_window_expired" in worker_log
    print(f"window expiry: build 1 RETRY, orphan {pid} killed, build 2 SUCCESS after it")


def test_killed_worker_restarted(fault_env):  # noqa: F811
    """SIGKILL of the worker process and a restart: the new login replaces the suspended
    session at once, so the build ends RETRY without Buildbot's duplicate-worker
    arbitration (a 10 s ping of the old connection), and the retried build succeeds.

    The killed worker's command is not stopped by anyone: buildbot-worker runs commands in
    a process group of their own, so they outlive a SIGKILLed worker (with PB as well).
    """
    env = fault_env("tcp")
    brid, build = env.start_build("orphan")
    pid = _started(env, 1)
    try:
        env.worker.kill()
        env.wait_log(env.master, LOST, 10)  # the worker's FIN came through: suspended
        assert not env.master.get_build(build["buildid"])["complete"]
        env.worker.start()
        build = env.finish(brid, 60, retried=True)
        assert build["results"] == harness.SUCCESS
        builds = env.master.builds_for_request(brid)
        assert [b["results"] for b in builds] == [harness.RETRY, harness.SUCCESS]
        orphan_survived = alive(pid)
    finally:
        _kill_leftover(pid)
    log = env.master.log_text()
    assert "logged in anew" in log and "session_replaced" in log, env.e2e_diagnostics()
    assert "starting arbitration procedure" not in log
    assert "ping timed out" not in log
    print(f"killed worker: build 1 RETRY at once, build 2 SUCCESS; the killed worker's "
          f"command {'outlived it' if orphan_survived else 'died with it'}")


def test_killed_master_restarted(fault_env):  # noqa: F811
    """SIGKILL of the master and a restart: the worker's resume finds no session
    (``session_expired``), so it stops its orphaned command and logs in anew.  The
    restarted master marks the build it lost RETRY (Buildbot's own housekeeping of its
    previous run), and the retry runs after the orphan was stopped."""
    env = fault_env("tcp")
    brid, _build = env.start_build("orphan")
    pid = _started(env, 1)
    env.master.kill()
    env.master.start()
    env.wait_log(env.worker, "session_expired", 30)
    env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
    env.finish(brid, 60, retried=True)
    _one_after_the_other(env, brid)
    assert not alive(pid)
    print("killed master: session_expired, fresh login, build 1 RETRY, build 2 SUCCESS")


def test_master_stopped_and_restarted(fault_env):  # noqa: F811
    """A graceful master stop (SIGTERM) ends every session at once (``shutdown``, no
    resume is tried) and Buildbot cancels the running build, as with PB; the worker stops
    the command and logs in anew when the master is back."""
    env = fault_env("tcp")
    brid, _build = env.start_build("orphan")
    pid = _started(env, 1)
    env.master.stop()
    harness.wait_for(lambda: not alive(pid), 15, "the worker to stop the command")
    assert "(shutdown: the master is shutting down)" in env.worker.log_text()
    env.master.start()
    env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
    build = env.finish(brid, 30)
    assert build["results"] == harness.CANCELLED, env.master.build_summary(build["buildid"])
    print("stopped master: build CANCELLED (master shutdown), worker logged in anew")
