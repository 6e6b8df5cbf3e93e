"""The transport conformance suite against plain framed TCP."""

from __future__ import annotations

from twisted.trial import unittest

from worker_tests.conformance import LoopbackStreamConformance


class TcpConformance(LoopbackStreamConformance, unittest.TestCase):
    backend = "tcp"
