"""Partitions during a build, on every transport: the build goes on.

One build of step ``count`` (``line 1`` .. ``line 220``, one every 0.1 s) per transport
while the fault proxy between worker and master (for amqp: between worker and broker)
makes, one after the other (``http-proxy``: tcp through an HTTP CONNECT proxy, with
the fault proxy between worker and HTTP proxy):

1. a 1 s blackhole, well under ``heartbeat_timeout`` (3 s): TCP rides it out, the session
   is never suspended;
2. a 5 s blackhole (packets dropped, no RST: a half-open link): both sides' heartbeats
   find it, the session is suspended, and it resumes after the heal;
3. a 5 s cut: every connection reset, then new connections refused; the worker retries
   with its quick resume backoff and resumes once the proxy listens again.

The build must end SUCCESS with every line in its stdout exactly once and in order (the
lines buildbot-worker still buffered, up to 5 s of output, when the link died included),
the step's log must show the loss and the resume, and the worker must never be detached.
"""

from __future__ import annotations

import pytest

from master_tests.rabbitmq import amqp_broker  # noqa: F401 - for fault_env('amqp')

from .fault_env import LOST
from .fault_env import RESUMED
from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_env import wait_seconds

LINES = 220
PARTITION = 5
BLIP = 1.0


@pytest.mark.parametrize("transport", ["tcp", "tls", "http-proxy", "amp", "websocket", "zmq",
                                       "amqp"])
def test_partitions_during_a_step(fault_env, transport):  # noqa: F811
    env = fault_env(transport)
    brid, build = env.start_build("count", lines=str(LINES))
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

    headers = env.assert_counted(env.finish(brid), LINES)
    resumes = env.assert_resumed(headers, times=2)
    print(f"{transport}: SUCCESS, {LINES} lines once each; suspended {resumes} s")
