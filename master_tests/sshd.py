"""A private, real OpenSSH server for the SSH tunnel tests (worker_tests and master_tests).

``Sshd(root).start()`` writes its own sshd_config, host key and authorized_keys under
``root`` and runs ``/usr/sbin/sshd -D`` on 127.0.0.1 and a free port, logging at DEBUG1 to
a file the tests read (``direct-tcpip`` opens show that traffic went through it).  The
login user is the current user.  Keys are made here with ``cryptography`` (ed25519,
OpenSSH format):

- ``client_key``: authorized, port forwarding allowed;
- ``restricted_key``: authorized with ``restrict`` (no port forwarding);
- ``stranger_key``: not authorized.

Without ``/usr/sbin/sshd`` the tests skip and say how to install it; with
``MSGPROTO_REQUIRE_SYSTEM_DEPS=1`` (scripts/run-tests, CI) they fail
(:mod:`master_tests.system_deps`).  The pytest fixture
``ssh_server`` shares one server per session; use it from trial TestCases too::

    from master_tests.sshd import ssh_server  # noqa: F401 (the fixture)

    @pytest.mark.usefixtures("ssh_server")
    class TestX(unittest.TestCase):
        def test_x(self):
            server = sshd.current()
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from master_tests import system_deps
from master_tests.e2e.harness import free_port

#: The OpenSSH server binary (MSGPROTO_SSHD overrides it).
SSHD = os.environ.get("MSGPROTO_SSHD", "/usr/sbin/sshd")
START_TIMEOUT = 15.0


def write_key_pair(path: str, comment: str = "msgproto-test") -> str:
    """A new ed25519 key in OpenSSH format at ``path`` (0600) and ``path.pub``; returns
    the public key line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    line = f"{public} {comment}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    with open(path + ".pub", "w", encoding="ascii") as f:
        f.write(line + "\n")
    return line


class Sshd:
    """One sshd process with its files under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = os.path.join(root, "ssh_host_ed25519_key")
        self.other_host_key = os.path.join(root, "other_host_key")
        self.client_key = os.path.join(root, "client_key")
        self.restricted_key = os.path.join(root, "restricted_key")
        self.stranger_key = os.path.join(root, "stranger_key")
        self.authorized_keys = os.path.join(root, "authorized_keys")
        self.config = os.path.join(root, "sshd_config")
        self.log_file = os.path.join(root, "sshd.log")
        self.known_hosts = os.path.join(root, "known_hosts")
        self.wrong_known_hosts = os.path.join(root, "known_hosts.wrong")
        self.process: subprocess.Popen | None = None

    @property
    def tunnel(self) -> str:
        """The ``--ssh-tunnel`` value for this server."""
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def host_name(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def start(self) -> Sshd:
        if not os.path.exists(SSHD):
            system_deps.missing(f"the OpenSSH server ({SSHD})", "the SSH tunnel tests run a "
                                "private sshd; Debian: apt-get install openssh-server")
        os.makedirs(self.root, exist_ok=True)
        host_public = write_key_pair(self.host_key, "host")
        other_public = write_key_pair(self.other_host_key, "impostor")
        client = write_key_pair(self.client_key, "worker")
        restricted = write_key_pair(self.restricted_key, "restricted")
        write_key_pair(self.stranger_key, "stranger")
        with open(self.authorized_keys, "w", encoding="ascii") as f:
            f.write(f"{client}\nrestrict {restricted}\n")
        with open(self.known_hosts, "w", encoding="ascii") as f:
            f.write(f"{self.host_name} {host_public}\n")
        with open(self.wrong_known_hosts, "w", encoding="ascii") as f:
            f.write(f"{self.host_name} {other_public}\n")
        with open(self.config, "w", encoding="ascii") as f:
            f.write(f"""\
ListenAddress 127.0.0.1:{self.port}
HostKey {self.host_key}
PidFile {os.path.join(self.root, 'sshd.pid')}
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
X11Forwarding no
LogLevel DEBUG1
""")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", self.config, "-E", self.log_file],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")
                raise AssertionError(f"sshd exited with {self.process.returncode}: {err}\n"
                                     f"{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not accept on port {self.port} within "
                                     f"{START_TIMEOUT:g} s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def log_text(self) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tunnels_to(self, port: int) -> int:
        """How many ``direct-tcpip`` channels to ``port`` sshd was asked for so far."""
        return len(re.findall(rf"server_request_direct_tcpip: .* target \S+ port {int(port)}\b",
                              self.log_text()))


_current: Sshd | None = None


def current() -> Sshd:
    """The session's server (the ``ssh_server`` fixture must be active)."""
    if _current is None:
        raise AssertionError("no sshd: use the ssh_server fixture")
    return _current


@pytest.fixture(scope="session")
def ssh_server():
    """One private sshd for the whole test session."""
    global _current
    root = tempfile.mkdtemp(prefix="msgproto-sshd-")
    server = Sshd(root)
    try:
        _current = server.start()
        yield server
    finally:
        _current = None
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
