"""The transport conformance suite for framed TCP through an SSH tunnel (a real OpenSSH
sshd from master_tests/sshd.py, logged in with a key, host key checked)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.ssh import SSHSettings
from buildbot_worker_msgproto.transports.ssh import SSHTunnelAddress
from master_tests import sshd
from master_tests.sshd import ssh_server  # noqa: F401 - the fixture
from worker_tests.conformance import ConformanceMixin


@pytest.mark.usefixtures("ssh_server")
class SshTcpConformance(ConformanceMixin, unittest.TestCase):
    backend = "tcp"

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1"}

    def client_target(self, listening: Any) -> ClientTarget:
        server = sshd.current()
        settings = SSHSettings.create(server.tunnel, server.client_key, server.known_hosts)
        return ClientTarget(host="127.0.0.1", port=listening.port_number, ssh=settings)

    @defer.inlineCallbacks
    def test_traffic_goes_through_sshd(self) -> Any:
        client, server = yield self.connect()
        self.assertEqual(sshd.current().tunnels_to(self.listening.port_number), 1)
        address = client.transport.transport.getPeer()
        self.assertIsInstance(address, SSHTunnelAddress)
        self.assertIn(f"via ssh {sshd.current().tunnel}", str(address))
