"""64 MiB transfers through faults, on every transport: files intact, no restart.

The proxy adds 50 ms each way (so that a 64 MiB transfer takes a few seconds and a
fault lands in the middle of it).  A ``FileUpload`` is cut (RST, then refused for 3 s)
once 24 MiB went through; a ``FileDownload`` is blackholed for 5 s (heartbeats find it)
once 24 MiB went through.  Both builds must end SUCCESS with the file sha256-identical,
and the bytes the proxy carried show that the transfer continued where it stopped: what
was sent again is less than what had gone through before the fault (a transfer that
started over from byte 0 would send all of that again).
"""

from __future__ import annotations

import os

import pytest

from master_tests.rabbitmq import amqp_broker  # noqa: F401 - for fault_env('amqp')

from . import harness
from .fault_env import MIB
from .fault_env import TRANSFER_SIZE
from .fault_env import FaultEnv
from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_env import wait_seconds

FAULT_AT = 24 * MIB
DELAY = 0.05


def _transfer(env: FaultEnv, builder: str, direction: str, fault: str) -> tuple[int, int]:
    """Run ``builder`` with ``fault`` once FAULT_AT bytes went ``direction`` ('up' or
    'down'); return (bytes through before the fault, bytes through in all)."""
    def moved(stats) -> int:
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
        wait_seconds(5)
        env.proxy.heal()
    env.assert_success(env.finish(brid, 120))
    return moved(at), moved(env.proxy.stats())


def _assert_continued(before: int, total: int) -> None:
    assert before < TRANSFER_SIZE, f"the fault came after the transfer ({before} bytes)"
    again = total - TRANSFER_SIZE
    assert again < before, (f"{again} bytes sent again, {before} before the fault: the "
                            "transfer started over")


@pytest.mark.parametrize("transport", ["tcp", "amp", "websocket", "zmq", "amqp"])
def test_transfers_through_faults(fault_env, transport):  # noqa: F811
    env = fault_env(transport, proxy_delay=DELAY)
    up_sha = env.write_random(env.upload_src)
    down_sha = env.write_random(env.download_src)

    before, total = _transfer(env, "upload", "up", "cut")
    assert harness.sha256_file(env.upload_dest) == up_sha
    _assert_continued(before, total)
    env.assert_resumed()
    up = (before, total)

    before, total = _transfer(env, "download", "down", "blackhole")
    assert os.path.getsize(env.download_dest) == TRANSFER_SIZE
    assert harness.sha256_file(env.download_dest) == down_sha
    _assert_continued(before, total)
    resumes = env.assert_resumed(times=2)
    print(f"{transport}: upload cut at {up[0] / MIB:.1f} MiB, {up[1] - TRANSFER_SIZE} bytes "
          f"more than the file; download blackholed at {before / MIB:.1f} MiB, "
          f"{total - TRANSFER_SIZE} bytes more; suspended {resumes} s")
