"""``buildbot-worker-msgproto check-connection`` against real masters: every diagnosis and
its exit code, and a check that never attaches nor disturbs a running worker.

Masters (real Buildbot, sqlite):

- ``tls``: msg + PB on a TLS port (client certificates optional, keys from gen-keys),
  plus amp, websocket and zmq transports, ``check_reveals_unknown_workers`` on; its
  worker ``w1`` runs while the checks run;
- ``plain``: msg + PB on a plain TCP port, the default (unknown workers not revealed);
- ``pb``: a stock Buildbot master, PB only.

Around them: an HTTP CONNECT proxy (worker_tests/http_proxy_server.py, its own process;
it tunnels to 127.0.0.1 only and refuses other hosts with 403), the private sshd
(master_tests/sshd.py), a port nothing listens on, and a socket that accepts but never
speaks.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from buildbot_worker_msgproto.check.diagnosis import Outcome
from buildbot_worker_msgproto.scripts import gen_keys
from buildbot_worker_msgproto.security.tls_info import colons
from master_tests.sshd import ssh_server  # noqa: F401 - the fixture

from . import harness

CLI = harness.venv_exe("buildbot-worker-msgproto")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = ("w1", "certw")
PASSWORD = "pw-w1"
RUN_TIMEOUT = 120


BUILDERS_PY = harness.simple_builders_py(["hello"], ["w1"])


def _msg_cfg(port: int, www_port: int, options: dict, workers: list[str]) -> str:
    return harness.make_master_cfg(repr({"msg": {"port": f"tcp:{port}:interface=127.0.0.1",
                                                 **options}}), workers, port, www_port,
                                   BUILDERS_PY)


class CheckEnv:
    def __init__(self, root: str) -> None:
        self.root = root
        self.layout = gen_keys.generate(os.path.join(root, "keys"), workers=list(WORKERS)).layout
        self.other = gen_keys.generate(os.path.join(root, "other-keys"), workers=[]).layout
        self.ports = {name: harness.free_port() for name in
                      ("tls", "amp", "websocket", "zmq", "plain", "pb", "silent")}
        self.masters: dict[str, harness.Master] = {}
        self.worker: harness.Worker | None = None
        self.proxy: subprocess.Popen | None = None
        self.proxy_port = 0
        self.silent = socket.socket()

    def start(self) -> None:
        ports, layout = self.ports, self.layout
        workers = [f"worker.MsgWorker('w1', {PASSWORD!r})", "worker.MsgWorker('certw', None)"]
        tls_options = {
            "tls_cert": layout.master_cert, "tls_key": layout.master_key,
            "tls_client_ca": layout.ca_cert, "client_certificates": "optional",
            "check_reveals_unknown_workers": True,
            "transports": {"amp": {"port": f"tcp:{ports['amp']}:interface=127.0.0.1"},
                           "websocket": {"port": f"tcp:{ports['websocket']}"
                                                 ":interface=127.0.0.1", "path": "/msg"},
                           "zmq": {"port": ports["zmq"], "interface": "127.0.0.1"}}}
        configs = {
            "tls": _msg_cfg(ports["tls"], harness.free_port(), tls_options, workers),
            "plain": _msg_cfg(ports["plain"], harness.free_port(), {}, workers),
            "pb": harness.make_master_cfg(
                f"{{'pb': {{'port': 'tcp:{ports['pb']}:interface=127.0.0.1'}}}}",
                f"worker.Worker('w1', {PASSWORD!r})", ports["pb"], harness.free_port(),
                BUILDERS_PY),
        }
        for name, cfg in configs.items():
            www = int(re.search(r"'port': 'tcp:(\d+):interface=127.0.0.1', 'plugins'",
                                cfg).group(1))
            master = harness.Master(os.path.join(self.root, f"master-{name}"), cfg,
                                    www_port=www, master_port=ports[name])
            self.masters[name] = master.create()
        for master in self.masters.values():
            master.start()
        basedir = os.path.join(self.root, "w1")
        self.worker = harness.Worker(basedir, [
            CLI, "create-worker", "--tls-ca-file", layout.ca_cert, basedir,
            f"127.0.0.1:{ports['tls']}", "w1", PASSWORD], name="w1").create()
        self.worker.start()
        self.masters["tls"].wait_worker_connected("w1", 60, worker=self.worker)
        self.silent.bind(("127.0.0.1", ports["silent"]))
        self.silent.listen(8)  # the kernel accepts; nobody ever speaks
        self.proxy = subprocess.Popen([sys.executable, "-m", "worker_tests.http_proxy_server"],
                                      cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        line = self.proxy.stdout.readline()
        assert line.startswith("port "), line
        self.proxy_port = int(line.split()[1])

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.terminate()
            self.proxy.wait(10)
            self.proxy.stdout.close()
        self.silent.close()
        if self.worker is not None:
            self.worker.stop()
        for master in self.masters.values():
            master.stop()

    def e2e_diagnostics(self) -> str:
        parts = [m.diagnostics(40) for m in self.masters.values()]
        if self.worker is not None:
            parts.append(self.worker.diagnostics(30))
        return "\n".join(parts)

    def check(self, *args: str, expect: Outcome, timeout: float = 15) -> str:
        """Run check-connection; assert its exit code; return its output."""
        result = subprocess.run([CLI, "check-connection", "--timeout", str(timeout), *args],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT)
        out = result.stdout + result.stderr
        assert result.returncode == int(expect), f"{args}: exit {result.returncode}\n{out}"
        last = out.strip().splitlines()[-1]
        prefix = "OK: " if expect is Outcome.OK else f"FAILED ({int(expect)} "
        assert last.startswith(prefix), out
        return out

    def tls_args(self, ca: str | None = None) -> tuple[str, ...]:
        return ("--tls-ca-file", ca or self.layout.ca_cert)

    def at(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from harness.started(CheckEnv(str(tmp_path_factory.mktemp("e2e-check"))))


def _fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return colons(cert.fingerprint(hashes.SHA256()).hex())


# ----------------------------------------------------------------------------- success
def test_a_check_reports_everything_and_does_not_disturb_the_running_worker(env):
    master, worker = env.masters["tls"], env.worker
    before = master.worker_data("w1")
    out = env.check(*env.tls_args(), env.at("tls"), "w1", PASSWORD, expect=Outcome.OK)
    assert "transport:    tcp (negotiated on the PB port), direct" in out
    assert re.search(r"encryption:\s+TLS \(TLSv1\.[23], \S+\)", out), out
    assert f"SHA-256 {_fingerprint(env.layout.master_cert)}" in out
    assert f"verification: verified: issued by a CA of {env.layout.ca_cert}" in out
    assert "protocol:     msg v1, features: blob, pipelined_close, pushed_download, resume" in out
    assert "login:        password" in out
    assert re.search(r"round trip:\s+\d+\.\d\d ms", out), out
    assert "not attached" in out.splitlines()[-1]
    # the master authenticated the check and left it at that
    log = master.log_text()
    assert re.search(r"connection check of worker 'w1' from 127\.0\.0\.1:\d+ passed; not "
                     "attaching it", log), log[-3000:]
    assert "duplicate" not in log
    assert log.count("worker 'w1' attaching over msgproto") == 1
    # the running worker kept its one session
    assert master.worker_data("w1")["connected_to"] == before["connected_to"]
    assert worker.is_running and worker.log_text().count("Connected to buildmaster") == 1
    assert master.run_build("hello", timeout=60)["results"] == harness.SUCCESS


def test_a_workers_basedir_is_checked_with_its_own_settings(env):
    out = env.check(env.worker.basedir, expect=Outcome.OK)
    assert "check-connection: worker 'w1', 1 master" in out
    assert f"master:       {env.at('tls')}" in out
    assert env.worker.is_running


def test_certificate_login(env):
    out = env.check(*env.tls_args(), "--tls-client-cert", env.layout.worker_cert("certw"),
                    "--tls-client-key", env.layout.worker_key("certw"), env.at("tls"),
                    "certw", expect=Outcome.OK)
    assert "login:        TLS client certificate" in out


@pytest.mark.parametrize("transport, options", [
    ("amp", ()), ("websocket", ("--transport-option", "path=/msg")), ("zmq", ())])
def test_every_transport(env, transport, options):
    out = env.check("--transport", transport, *options, env.at(transport), "w1", PASSWORD,
                    expect=Outcome.OK)
    assert f"transport:    {transport}, direct" in out
    assert "encryption:   none" in out


def test_through_an_http_proxy(env):
    out = env.check(*env.tls_args(), "--proxy-connection-string",
                    f"tcp:host=127.0.0.1:port={env.proxy_port}", env.at("tls"), "w1",
                    PASSWORD, expect=Outcome.OK)
    assert f"HTTP proxy tcp:host=127.0.0.1:port={env.proxy_port}" in out


def test_through_an_ssh_tunnel(env, ssh_server):  # noqa: F811 - the fixture
    out = env.check(*env.tls_args(), "--ssh-tunnel", ssh_server.tunnel, "--ssh-key",
                    ssh_server.client_key, "--ssh-known-hosts", ssh_server.known_hosts,
                    env.at("tls"), "w1", PASSWORD, expect=Outcome.OK)
    assert f"SSH tunnel via {ssh_server.tunnel}" in out
    assert ssh_server.tunnels_to(env.ports["tls"]) >= 1


# ----------------------------------------------------------------------------- failures
def test_name_resolution(env):
    out = env.check("nosuchhost.invalid:9989", "w1", PASSWORD,
                    expect=Outcome.NAME_RESOLUTION)
    assert "cannot resolve the host name of nosuchhost.invalid:9989" in out


def test_connection_refused(env):
    out = env.check(f"127.0.0.1:{harness.free_port()}", "w1", PASSWORD,
                    expect=Outcome.CONNECTION_REFUSED)
    assert "nothing listens there" in out


def test_timeout(env):
    out = env.check(env.at("silent"), "w1", PASSWORD, expect=Outcome.TIMEOUT, timeout=2)
    assert "within 2 s while waiting for the master's dialect offer" in out


def test_proxy_refusal(env):
    out = env.check("--proxy-connection-string", f"tcp:host=127.0.0.1:port={env.proxy_port}",
                    f"localhost:{env.ports['plain']}", "w1", PASSWORD,
                    expect=Outcome.PROXY_REFUSED)
    assert "403 Forbidden" in out


def test_tls_verification_failure_shows_the_fingerprint(env):
    out = env.check(*env.tls_args(env.other.ca_cert), env.at("tls"), "w1", PASSWORD,
                    expect=Outcome.TLS_VERIFICATION)
    assert f"SHA-256 {_fingerprint(env.layout.master_cert)}" in out  # to pin, if wanted
    assert "verification: REJECTED" in out
    assert "is not trusted by the CAs of" in out.splitlines()[-1]


@pytest.mark.parametrize("master", ["tls", "plain"])
def test_wrong_password(env, master):
    args = env.tls_args() if master == "tls" else ()
    out = env.check(*args, env.at(master), "w1", "not-the-password",
                    expect=Outcome.WRONG_PASSWORD)
    assert "wrong password" in out


def test_unknown_worker_where_the_master_reveals_it(env):
    out = env.check(*env.tls_args(), env.at("tls"), "nobody", PASSWORD,
                    expect=Outcome.UNKNOWN_WORKER)
    assert "does not know worker 'nobody'" in out


def test_unknown_worker_looks_like_a_wrong_password_by_default(env):
    """A master without check_reveals_unknown_workers keeps names unprobeable."""
    env.check(env.at("plain"), "nobody", PASSWORD, expect=Outcome.WRONG_PASSWORD)


def test_ssh_host_key(env, ssh_server):  # noqa: F811 - the fixture
    out = env.check(*env.tls_args(), "--ssh-tunnel", ssh_server.tunnel, "--ssh-key",
                    ssh_server.client_key, "--ssh-known-hosts", ssh_server.wrong_known_hosts,
                    env.at("tls"), "w1", PASSWORD, expect=Outcome.SSH_HOST_KEY)
    assert "is NOT the one for" in out


def test_pb_only_master(env):
    out = env.check(env.at("pb"), "w1", PASSWORD, expect=Outcome.PB_ONLY)
    assert "offers only PB" in out
    log = env.masters["pb"].log_text()
    assert "attaching" not in log  # PB was never logged in to


def test_a_suspended_session_is_left_alone(env):
    """The worker dies without a word: its session is suspended, waiting for a resume.
    A check authenticates, and the suspended session stays (a new *login* would end it)."""
    master = env.masters["tls"]
    env.worker.kill()
    harness.wait_for(lambda: "its builds go on if it resumes" in master.log_text(), 60,
                     "the master to suspend w1's session", diagnostics=env.e2e_diagnostics)
    env.check(*env.tls_args(), env.at("tls"), "w1", PASSWORD, expect=Outcome.OK)
    log = master.log_text()
    assert "ending its suspended session" not in log
    assert master.worker_data("w1")["connected_to"]  # still attached, suspended
    env.worker.start()  # a new login of the restarted worker does end it
    harness.wait_for(lambda: "ending its suspended session" in master.log_text(), 60,
                     "the new login to end the suspended session",
                     diagnostics=env.e2e_diagnostics)
    master.wait_worker_connected("w1", 60, worker=env.worker)
