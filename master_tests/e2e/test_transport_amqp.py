"""Real builds over the AMQP transport, through a real RabbitMQ broker.

The broker comes from master_tests/rabbitmq.py (a private one per pytest session, or
MSGPROTO_AMQP_URL); the tests skip if rabbitmq-server is not installed.  The worker is
the broker user 'tw', which may only use its own queue.
"""

from __future__ import annotations

import pytest

from master_tests import rabbitmq
from master_tests.rabbitmq import amqp_broker  # noqa: F401 - the fixture

from . import harness
from .transport_suite import WORKER
from .transport_suite import TransportEnv
from .transport_suite import TransportSuite

ATTACHED = "attaching over msgproto"
RESUMED = "resumed its session"


@pytest.mark.usefixtures("amqp_broker")
class TestAmqp(TransportSuite):
    transport = "amqp"

    def master_transports_py(self) -> str:
        return repr({"amqp": rabbitmq.current().master_options()})

    def worker_master_arg(self, env: TransportEnv) -> str:
        broker = rabbitmq.current()
        return f"{broker.host}:{broker.port}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        options: list[str] = []
        for key, value in rabbitmq.current().worker_options(WORKER).items():
            options += ["--transport-option", f"{key}={value}"]
        return tuple(options)

    def test_broker_restart_while_idle(self, env: TransportEnv) -> None:
        """The broker restarts between builds: master and worker reconnect by themselves,
        the worker resumes its session (or, past the window, re-attaches) and builds."""
        broker = rabbitmq.current()
        if not broker.controllable:
            pytest.skip(f"the broker of {rabbitmq.URL_ENV} is not ours to restart")
        env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        attached = env.master.log_text().count(ATTACHED)
        broker.restart()

        def reattached() -> bool:
            log_text = env.master.log_text()
            return ((log_text.count(ATTACHED) > attached or RESUMED in log_text)
                    and bool(env.master.worker_data(WORKER)["connected_to"]))

        harness.wait_for(reattached, 90, "the worker to re-attach after the broker restart",
                         diagnostics=lambda: env.worker.diagnostics() + "\n"
                         + env.master.diagnostics() + "\n" + broker.log_tail())
        assert "broker connection lost" in env.master.log_text()
        assert "broker connection lost" in env.worker.log_text()
        build = env.master.run_build("shell", timeout=60)
        assert build["results"] == harness.SUCCESS, env.master.build_summary(build["buildid"])
