"""Real builds through an SSH tunnel: a real master, real workers, a real OpenSSH sshd
(master_tests/sshd.py) that the workers log in to with a key, its host key checked.

One master listens with TLS on its negotiated msg/PB port (certificates as in
test_tls.py), plain on an ``amp`` and a ``zmq`` port; every worker reaches it only through
the sshd's ``direct-tcpip`` channels (``MASTER`` = 127.0.0.1:PORT as seen from the sshd):

- msg over tcp+TLS, PB (``--protocol pb``) over tcp+TLS, amp, and zmq through the
  worker's local forward each run a build, and the sshd's log shows the tunnels to each
  master port;
- a worker whose known_hosts has another key for the sshd never attaches, never builds,
  logs the host-key refusal and keeps retrying with growing delays.
"""

from __future__ import annotations

import os

import pytest

from master_tests import sshd
from master_tests.sshd import ssh_server  # noqa: F401 - the fixture

from . import harness
from .multi_worker_env import MultiWorkerEnv
from .multi_worker_env import assert_backing_off
from .test_tls import Certs

REJECT_WAIT = 10  # seconds the refused worker must stay unattached
OURS = harness.PROTOCOLS["msg"]


class SSHEnv(MultiWorkerEnv):
    def __init__(self, root: str, server: sshd.Sshd) -> None:
        super().__init__(root)
        self.server = server
        self.certs = Certs(os.path.join(root, "certs"))
        self.amp_port = harness.free_port()
        self.zmq_port = harness.free_port()

        def tunnel(known_hosts: str = server.known_hosts) -> tuple[str, ...]:
            return ("--ssh-tunnel", server.tunnel, "--ssh-key", server.client_key,
                    "--ssh-known-hosts", known_hosts)

        tls = ("--tls-ca-file", self.certs.ca_file)
        #: name -> (create spec, extra create args, master port as seen from the sshd)
        self.specs = {
            "ssh-tls": (OURS, (*tunnel(), *tls), self.port),
            "ssh-pb": (OURS, ("--protocol", "pb", *tunnel(), *tls), self.port),
            "ssh-amp": (OURS, ("--transport", "amp", *tunnel()), self.amp_port),
            "ssh-zmq": (OURS, ("--transport", "zmq", *tunnel()), self.zmq_port),
            "ssh-badhost": (OURS, (*tunnel(server.wrong_known_hosts), *tls), self.port),
        }

    def start(self) -> None:
        protocols_py = repr({"msg": {"port": self.certs.strport(self.port), "transports": {
            "amp": {"port": f"tcp:{self.amp_port}:interface=127.0.0.1"},
            "zmq": {"port": self.zmq_port, "interface": "127.0.0.1"}}}})
        self.start_all(protocols_py, self.specs)


@pytest.fixture(scope="module")
def ssh_env(ssh_server, tmp_path_factory):  # noqa: F811 - the fixture imported above
    yield from harness.started(SSHEnv(str(tmp_path_factory.mktemp("e2e-ssh")), ssh_server))


def test_tac_has_ssh_settings(ssh_env):
    tac = ssh_env.workers["ssh-tls"].tac_text()
    assert f"ssh_tunnel = {ssh_env.server.tunnel!r}" in tac
    assert f"ssh_key = {[ssh_env.server.client_key]!r}" in tac
    assert f"ssh_known_hosts = {ssh_env.server.known_hosts!r}" in tac


@pytest.mark.parametrize("name, port_attr, master_says", [
    ("ssh-tls", "port", "attaching over msgproto"),
    ("ssh-pb", "port", "attaching from"),  # Buildbot's PB attach line
    ("ssh-amp", "amp_port", "attaching over msgproto"),
    ("ssh-zmq", "zmq_port", "attaching over msgproto"),
])
def test_build_through_the_tunnel(ssh_env, name, port_attr, master_says):
    ssh_env.check_build(name)
    assert f"worker '{name}' {master_says}" in ssh_env.master.log_text()
    worker_log = ssh_env.workers[name].log_text()
    assert f"Using SSH tunnel via {ssh_env.server.tunnel}" in worker_log
    assert "SSH tunnel to the master" not in worker_log  # no failed attempt
    # the traffic went through the sshd: it opened a direct-tcpip channel to that port
    assert ssh_env.server.tunnels_to(getattr(ssh_env, port_attr)) >= 1, \
        ssh_env.server.log_text()[-3000:]


def test_tls_inside_the_tunnel_is_verified(ssh_env):
    ssh_env.check_build("ssh-tls")
    assert "TLS: master certificate rejected" not in ssh_env.workers["ssh-tls"].log_text()
    # the master saw the connections come from the sshd (loopback), encrypted with TLS
    assert "worker 'ssh-tls' attaching over msgproto" in ssh_env.master.log_text()


def test_wrong_host_key_is_refused(ssh_env):
    ssh_env.wait_refusals(REJECT_WAIT)
    name = "ssh-badhost"
    ssh_env.assert_never_attached(name)
    worker = ssh_env.workers[name]
    refusals = [ln for ln in worker.log_text().splitlines() if "SSH tunnel to the master" in ln]
    assert len(refusals) >= 2, worker.diagnostics()  # it keeps retrying...
    assert "is NOT the one for" in refusals[0], refusals[0]
    assert ssh_env.server.wrong_known_hosts in refusals[0]
    assert "SHA256:" in refusals[0]
    assert_backing_off(worker)  # ...backing off
