"""A RabbitMQ restart in the middle of a build over the amqp transport.

Master and worker lose their broker connections, the sessions are suspended on both
sides, both reconnect when the broker is back (the worker with its quick resume backoff,
the master with its own), the worker resumes and both replay what the lost queues held.
The build ends SUCCESS with every line once and in order.
"""

from __future__ import annotations

import pytest

from master_tests import rabbitmq
from master_tests.rabbitmq import amqp_broker  # noqa: F401 - the fixture

from .fault_env import RESUMED
from .fault_env import fault_env  # noqa: F401 - the fixture

LINES = 200


@pytest.mark.usefixtures("amqp_broker")
def test_broker_restart_during_a_step(fault_env):  # noqa: F811
    broker = rabbitmq.current()
    if not broker.controllable:
        pytest.skip(f"the broker of {rabbitmq.URL_ENV} is not ours to restart")
    env = fault_env("amqp")
    brid, build = env.start_build("count", lines=str(LINES))
    env.wait_output(build["buildid"], "count", "line 1\n")
    broker.restart()
    env.wait_log(env.master, RESUMED, 60)
    headers = env.assert_counted(env.finish(brid), LINES)
    resumes = env.assert_resumed(headers)
    assert "broker connection lost" in env.master.log_text()
    assert "broker connection lost" in env.worker.log_text()
    print(f"amqp broker restart: SUCCESS, {LINES} lines once each; suspended {resumes} s")
