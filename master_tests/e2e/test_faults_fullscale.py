"""One full-scale case per kind of fault, at the default settings, over tcp.

The other fault tests scale heartbeats and the window down; these two run against the
defaults (``heartbeat_interval`` 10 s, ``heartbeat_timeout`` 30 s, ``resume_window``
300 s) with a 60 s partition in the middle of a step that prints numbered lines for
about 80 s:

- a 60 s blackhole: found by heartbeats after 30 s; the worker's reconnects hang in the
  partition (the proxy accepts them, as a dead path's SYN would time out) and the
  session resumes as soon as it heals;
- a 60 s cut: both sides see the reset at once; the worker's reconnects are refused and
  retried (jittered backoff of at most 4 s) until the proxy listens again.

Each takes about 80 s; they are marked ``fullscale`` (``-m "not fullscale"`` leaves them
out) and run in parallel under pytest-xdist.
"""

from __future__ import annotations

import pytest

from .fault_env import LOST
from .fault_env import RESUMED
from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_env import wait_seconds

LINES = 700  # at about 0.11 s each: the step goes on for 10-15 s after the resume
PARTITION = 60


@pytest.mark.fullscale
@pytest.mark.parametrize("fault", ["blackhole", "cut"])
def test_sixty_second_partition_at_default_settings(fault_env, fault):  # noqa: F811
    env = fault_env("tcp", msg_options={})
    brid, build = env.start_build("count", lines=str(LINES))
    env.wait_output(build["buildid"], "count", "line 1\n")
    if fault == "blackhole":
        env.proxy.blackhole()
        wait_seconds(PARTITION)
        env.proxy.heal()
    else:
        env.proxy.cut(refuse=True)
        wait_seconds(PARTITION)
        env.proxy.restore()
    env.wait_log(env.master, RESUMED, 30)
    log = env.master.log_text()
    assert LOST in log
    assert ("heartbeat_timeout" in log) == (fault == "blackhole")
    headers = env.assert_counted(env.finish(brid, 120), LINES)
    resumes = env.assert_resumed(headers)
    print(f"tcp, {fault} {PARTITION} s, defaults: SUCCESS, {LINES} lines once each; "
          f"suspended {resumes} s")
