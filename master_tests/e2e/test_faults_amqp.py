"""Fault tests over the amqp transport, with the fault proxy between the worker and the
RabbitMQ broker (the master talks to the broker directly); fault_suite.py."""

from __future__ import annotations

from master_tests.rabbitmq import amqp_broker  # noqa: F401 - for fault_env('amqp')

from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_suite import FaultSuite


class TestAmqp(FaultSuite):
    transport = "amqp"
