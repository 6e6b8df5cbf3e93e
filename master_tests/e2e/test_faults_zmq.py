"""Fault tests over the zmq transport (fault_suite.py)."""

from __future__ import annotations

from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_suite import FaultSuite


class TestZmq(FaultSuite):
    transport = "zmq"
