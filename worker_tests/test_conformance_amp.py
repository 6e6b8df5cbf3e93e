"""The transport conformance suite against Twisted AMP."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from buildbot_worker_msgproto.transports.base import ClientTarget
from worker_tests.conformance import ConformanceMixin


class AmpConformance(ConformanceMixin, unittest.TestCase):
    backend = "amp"

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1"}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number)
