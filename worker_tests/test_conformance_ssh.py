"""The transport conformance suite through an SSH tunnel (a real OpenSSH sshd from
master_tests/sshd.py, logged in with a key, host key checked): framed TCP, framed TCP
with TLS inside the tunnel, AMP, WebSocket (autobahn) and AMQP (pika, to RabbitMQ)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_worker_msgproto.reach.ssh import SSHSettings
from buildbot_worker_msgproto.reach.ssh import SSHTunnelAddress
from buildbot_worker_msgproto.reach.tls import TLSSettings
from buildbot_worker_msgproto.scripts import gen_keys
from buildbot_worker_msgproto.transports.base import ClientTarget
from master_tests import sshd
from master_tests.rabbitmq import amqp_broker  # noqa: F401 - the fixture
from master_tests.sshd import ssh_server  # noqa: F401 - the fixture
from worker_tests.conformance import ConformanceMixin
from worker_tests.conformance import LoopbackStreamConformance
from worker_tests.test_conformance_amqp import BrokerConformance


def _ssh() -> SSHSettings:
    server = sshd.current()
    return SSHSettings.create(server.tunnel, server.client_key, server.known_hosts)


@pytest.mark.usefixtures("ssh_server")
class SshTcpConformance(LoopbackStreamConformance, unittest.TestCase):
    backend = "tcp"

    def ssh_settings(self) -> SSHSettings:
        return _ssh()

    @defer.inlineCallbacks
    def test_traffic_goes_through_sshd(self) -> Any:
        client, server = yield self.connect()
        self.assertEqual(sshd.current().tunnels_to(self.listening.port_number), 1)
        address = client.transport.transport.getPeer()
        self.assertIsInstance(address, SSHTunnelAddress)
        self.assertIn(f"via ssh {sshd.current().tunnel}", str(address))


@pytest.mark.usefixtures("ssh_server")
class SshAmpConformance(LoopbackStreamConformance, unittest.TestCase):
    backend = "amp"

    def ssh_settings(self) -> SSHSettings:
        return _ssh()


@pytest.mark.usefixtures("ssh_server")
class SshWebSocketConformance(ConformanceMixin, unittest.TestCase):
    backend = "websocket"

    def server_options(self) -> dict[str, Any]:
        return {"port": "tcp:0:interface=127.0.0.1", "path": "/msg"}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            options={"path": "/msg"}, ssh=_ssh())


@pytest.mark.usefixtures("ssh_server")
class SshTlsConformance(ConformanceMixin, unittest.TestCase):
    """Framed TCP with TLS (the master's certificate verified) inside the SSH tunnel."""

    backend = "tcp"

    @classmethod
    def setUpClass(cls) -> None:
        cls.keys_dir = tempfile.mkdtemp(prefix="msgproto-ssh-tls-")
        cls.layout = gen_keys.generate(os.path.join(cls.keys_dir, "keys"),
                                       master_hosts=["127.0.0.1"]).layout

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.keys_dir, ignore_errors=True)

    def tearDown(self) -> Any:
        # ClientService.stopService() calls loseConnection() on the TLS transport, which
        # waits for the registered WritabilityReporter to go away (the worker closes its
        # session first, which unregisters it): close as the worker does.
        for receiver in self.client_receivers:
            if receiver.transport is not None and not receiver.closed.called:
                receiver.transport.close()
        return super().tearDown()

    def server_options(self) -> dict[str, Any]:
        return {"port": f"ssl:0:interface=127.0.0.1:privateKey={self.layout.master_key}"
                        f":certKey={self.layout.master_cert}"}

    def client_target(self, listening: Any) -> ClientTarget:
        return ClientTarget(host="127.0.0.1", port=listening.port_number,
                            tls=TLSSettings(ca_file=self.layout.ca_cert), ssh=_ssh())

    @defer.inlineCallbacks
    def test_encrypted_and_through_sshd(self) -> Any:
        client, _ = yield self.connect()
        self.assertTrue(client.transport.guarantees.encrypted)
        self.assertEqual(sshd.current().tunnels_to(self.listening.port_number), 1)
        # the worker sees the tunnel and the TLS inside it; the master only the TLS
        self.assertRegex(client.transport.encryption(),
                         rf"^SSH tunnel \({re.escape(sshd.current().tunnel)}\) \+ "
                         r"TLS \(TLSv1\.[23], \S+\)$")
        self.assertRegex(self.server_receivers[0].transport.encryption(),
                         r"^TLS \(TLSv1\.[23], \S+\)$")


@pytest.mark.usefixtures("ssh_server", "amqp_broker")
class SshAmqpConformance(BrokerConformance, unittest.TestCase):
    """The worker reaches the RabbitMQ broker through the tunnel (pika over a channel)."""

    def ssh_settings(self) -> SSHSettings:
        return _ssh()
