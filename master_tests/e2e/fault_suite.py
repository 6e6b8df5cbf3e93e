"""The fault scenarios, run once per transport: subclass a suite in a test file.

Under ``pytest -n 3 --dist loadfile`` (scripts/run-tests) each test file runs in one
process, so the scenarios are spread over one small file per transport (or pair of
transports), each about a minute long, and the two full-scale cases (about 80 s) have a
file each, named ``test_faults_60s_*`` so that they are scheduled first.

``PartitionsSuite``
    one build of step ``count`` (``line 1`` .. ``line 220``, one every 0.1 s) while the
    fault proxy between worker and master (for amqp: between worker and broker) makes,
    one after the other:

    1. a 1 s blackhole, well under ``heartbeat_timeout`` (3 s): TCP rides it out, the
       session is never suspended;
    2. a 5 s blackhole (packets dropped, no RST: a half-open link): both sides'
       heartbeats find it, the session is suspended, and it resumes after the heal;
    3. a 5 s cut: every connection reset, then new connections refused; the worker
       retries with its quick resume backoff and resumes once the proxy listens again.

    The build must end SUCCESS as the only build of its request, with every line in its
    stdout exactly once and in order (the lines buildbot-worker still buffered, up to
    5 s of output, when the link died included); the step's log must show the loss and
    the resume, and the worker must never be detached.
``TransfersSuite``
    64 MiB through faults.  The proxy adds 50 ms each way (so that a 64 MiB transfer
    takes a few seconds and a fault lands in the middle of it).  A ``FileUpload`` is cut
    (RST, then refused for 3 s) once 24 MiB went through; a ``FileDownload`` is
    blackholed for 5 s (heartbeats find it) once 24 MiB went through.  Both builds must
    end SUCCESS with the file sha256-identical, and the bytes the proxy carried show
    that the transfer continued where it stopped: what was sent again is less than what
    had gone through before the fault (a transfer that started over from byte 0 would
    send all of that again).
:func:`sixty_second_partition`
    one full-scale case per kind of fault, at the default settings (heartbeats
    10 s / 30 s, window 300 s), over tcp: a 60 s blackhole or cut in the middle of a
    step printing numbered lines for about 80 s.
"""

from __future__ import annotations

import os
from typing import Any

from . import harness
from .fault_env import LOST
from .fault_env import MIB
from .fault_env import RESUMED
from .fault_env import TRANSFER_SIZE
from .fault_env import FaultEnv
from .fault_env import wait_seconds

COUNT_LINES = 220
BLIP = 1.0
PARTITION = 5
#: Transfers: the fault comes once this much went through the proxy.
FAULT_AT = 24 * MIB
TRANSFER_DELAY = 0.05
#: Full scale: lines at about 0.11 s each, so that the step goes on for 10-15 s after
#: the resume.
FULL_SCALE_LINES = 700
FULL_SCALE_PARTITION = 60


class PartitionsSuite:
    """Blackholes and a cut during a step (see the module docstring)."""

    transport = ""

    def test_partitions_during_a_step(self, fault_env: Any) -> None:
        env = fault_env(self.transport)
        brid, build = env.start_build("count", lines=str(COUNT_LINES))
        env.wait_output(build["buildid"], "count", "line 1\n")

        env.proxy.blackhole()
        wait_seconds(BLIP)
        env.proxy.heal()
        wait_seconds(1)
        assert LOST not in env.master.log_text(), env.e2e_diagnostics()

        env.proxy.blackhole()
        wait_seconds(PARTITION)
        env.proxy.heal()
        env.wait_log(env.master, RESUMED, 20)
        assert "heartbeat_timeout" in env.master.log_text()
        assert "heartbeat_timeout" in env.worker.log_text()

        env.proxy.cut(refuse=True)
        wait_seconds(PARTITION)
        env.proxy.restore()
        env.wait_log(env.master, RESUMED, 20, count=2)

        headers = env.assert_counted(env.finish(brid), COUNT_LINES)
        resumes = env.assert_resumed(headers, times=2)
        print(f"{self.transport}: SUCCESS, {COUNT_LINES} lines once each; "
              f"suspended {resumes} s")


class TransfersSuite:
    """64 MiB uploads and downloads through a cut and a blackhole (module docstring)."""

    transport = ""

    def test_transfers_through_faults(self, fault_env: Any) -> None:
        env = fault_env(self.transport, proxy_delay=TRANSFER_DELAY)
        up_sha = env.write_random(env.upload_src)
        down_sha = env.write_random(env.download_src)

        up = _transfer(env, "upload", "up", "cut")
        assert harness.sha256_file(env.upload_dest) == up_sha
        _assert_continued(*up)
        env.assert_resumed()

        down = _transfer(env, "download", "down", "blackhole")
        assert os.path.getsize(env.download_dest) == TRANSFER_SIZE
        assert harness.sha256_file(env.download_dest) == down_sha
        _assert_continued(*down)
        resumes = env.assert_resumed(times=2)
        print(f"{self.transport}: upload cut at {up[0] / MIB:.1f} MiB, "
              f"{up[1] - TRANSFER_SIZE} bytes more than the file; download blackholed at "
              f"{down[0] / MIB:.1f} MiB, {down[1] - TRANSFER_SIZE} bytes more; "
              f"suspended {resumes} s")


class FaultSuite(PartitionsSuite, TransfersSuite):
    """Every scenario of this module for one transport."""


def _transfer(env: FaultEnv, builder: str, direction: str, fault: str) -> tuple[int, int]:
    """Run ``builder`` with ``fault`` once FAULT_AT bytes went ``direction`` ('up' or
    'down'); return (bytes through before the fault, bytes through in all)."""
    def moved(stats: Any) -> int:
        return getattr(stats, f"bytes_{direction}") - getattr(base, f"bytes_{direction}")

    base = env.proxy.stats()
    brid, _build = env.start_build(builder)
    at = env.wait_stats(lambda s: moved(s) >= FAULT_AT, f"{FAULT_AT} bytes {direction}", 60)
    if fault == "cut":
        env.proxy.cut(refuse=True)
        wait_seconds(3)
        env.proxy.restore()
    else:
        env.proxy.blackhole()
        wait_seconds(PARTITION)
        env.proxy.heal()
    env.assert_success(env.finish(brid, 120))
    return moved(at), moved(env.proxy.stats())


def _assert_continued(before: int, total: int) -> None:
    assert before < TRANSFER_SIZE, f"the fault came after the transfer ({before} bytes)"
    again = total - TRANSFER_SIZE
    assert again < before, (f"{again} bytes sent again, {before} before the fault: the "
                            "transfer started over")


def sixty_second_partition(fault_env: Any, fault: str) -> None:
    """The full-scale case of ``fault`` ('blackhole' or 'cut'), see the module docstring.

    A blackhole is found by heartbeats after 30 s; the worker's reconnects hang in the
    partition (the proxy accepts them, as a dead path's SYN would time out) and the
    session resumes as soon as it heals.  A cut is seen at once by both sides; the
    worker's reconnects are refused and retried (jittered, at most 4 s apart) until the
    proxy listens again.
    """
    env = fault_env("tcp", msg_options={})
    brid, build = env.start_build("count", lines=str(FULL_SCALE_LINES))
    env.wait_output(build["buildid"], "count", "line 1\n")
    if fault == "blackhole":
        env.proxy.blackhole()
        wait_seconds(FULL_SCALE_PARTITION)
        env.proxy.heal()
    else:
        env.proxy.cut(refuse=True)
        wait_seconds(FULL_SCALE_PARTITION)
        env.proxy.restore()
    env.wait_log(env.master, RESUMED, 30)
    log = env.master.log_text()
    assert LOST in log
    assert ("heartbeat_timeout" in log) == (fault == "blackhole")
    headers = env.assert_counted(env.finish(brid, 120), FULL_SCALE_LINES)
    resumes = env.assert_resumed(headers)
    print(f"tcp, {fault} {FULL_SCALE_PARTITION} s, defaults: SUCCESS, {FULL_SCALE_LINES} "
          f"lines once each; suspended {resumes} s")
