"""Partitions over tcp with TLS, and over tcp through an HTTP CONNECT proxy (the fault
proxy between the worker and the HTTP proxy); fault_suite.py."""

from __future__ import annotations

from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_suite import PartitionsSuite


class TestTls(PartitionsSuite):
    transport = "tls"


class TestHttpProxy(PartitionsSuite):
    transport = "http-proxy"
