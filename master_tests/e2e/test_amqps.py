"""The AMQP transport over TLS (AMQPS), master and worker verifying the broker.

A private RabbitMQ (master_tests/rabbitmq.start_private) gets a TLS listener on
127.0.0.1 with a certificate issued by a test CA (made with ``cryptography``, see
test_tls.Certs).  Then

- the master connects with an ``amqps://`` URL and ``ca_file`` = that CA, our worker with
  ``--transport amqp --tls-ca-file CA`` to the broker's TLS port, and the whole transport
  suite (shell step, file download and upload checked byte for byte, interrupt, reconnect)
  runs through the broker; the broker confirms that both connections use TLS;
- a worker trusting an unrelated CA, and one pinning a wrong fingerprint, never get an
  AMQP connection, log the rejection and keep retrying;
- a master whose ``ca_file`` is an unrelated CA does not connect and says why.

Skips when rabbitmq-server is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from master_tests import rabbitmq

from . import harness
from . import tls_checks
from .test_tls import Certs
from .tls_checks import RejectingEnv
from .tls_checks import assert_certificate_rejected
from .transport_suite import WORKER
from .transport_suite import TransportEnv
from .transport_suite import TransportSuite

REJECT_WAIT = 15  # seconds a rejected worker must stay unattached
#: broker worker users (rabbitmq.WORKER_USERS) of the workers that must be rejected
REJECTED = {"w1": "wrong-ca", "w2": "pin-bad"}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: Any) -> Any:
    """(certs, broker): a private broker with a TLS listener on ``broker.tls_port``."""
    certs = Certs(str(tmp_path_factory.mktemp("amqps-certs")))
    try:
        broker = rabbitmq.start_private(rabbitmq.TLSFiles(
            cert=certs.master_cert, key=certs.master_key, ca=certs.ca_file))
    except Exception as e:
        if isinstance(e, pytest.skip.Exception) or type(e).__name__ == "SkipTest":
            pytest.skip(str(e))
        raise
    try:
        yield certs, broker
    finally:
        rabbitmq.stop_private(broker)


def _options(broker: rabbitmq.Broker, user: str) -> list[str]:
    options: list[str] = []
    for key, value in broker.worker_options(user).items():
        options += ["--transport-option", f"{key}={value}"]
    return options


class TestAmqps(TransportSuite):
    transport = "amqp"
    certs: Certs
    broker: rabbitmq.Broker

    def master_transports_py(self) -> str:
        broker = self.broker
        return repr({"amqp": broker.master_options(
            url=broker.tls_url(broker.master_user, broker.master_password),
            ca_file=self.certs.ca_file)})

    def worker_master_arg(self, env: TransportEnv) -> str:
        return f"127.0.0.1:{self.broker.tls_port}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        return (*_options(self.broker, WORKER), "--tls-ca-file", self.certs.ca_file)

    @pytest.fixture(scope="class")
    def env(self, tmp_path_factory: Any, tls_broker: Any) -> Any:
        certs, broker = self.certs, self.broker = tls_broker
        wrong_fp = tls_checks.wrong_fingerprint(certs.fingerprint)
        args = {"wrong-ca": ("--tls-ca-file", certs.other_ca_file),
                "pin-bad": ("--tls-fingerprint", wrong_fp)}
        yield from harness.started(RejectingEnv(
            self, str(tmp_path_factory.mktemp("transport-amqps")),
            {name: (*_options(broker, name), *args[kind]) for name, kind in REJECTED.items()}))

    # ------------------------------------------------------------------ TLS specifics
    def test_master_and_worker_use_the_tls_listener(self, env: RejectingEnv) -> None:
        env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        assert (f"consuming from 'msgproto.master' on amqp://127.0.0.1:{env.suite.broker.tls_port}/"
                in env.master.log_text())
        tac = env.worker.tac_text()
        assert f"tls_ca_file = {env.certs.ca_file!r}" in tac
        assert "use_tls = True" in tac
        # the broker's own view: both AMQP connections are TLS, on the TLS port
        listing = env.suite.broker.ctl("list_connections", "user", "ssl", "port",
                                       "--no-table-headers", "--quiet")
        rows = {tuple(line.split("\t")) for line in listing.splitlines() if line.strip()}
        tls_port = str(env.suite.broker.tls_port)
        assert (rabbitmq.MASTER_USER, "true", tls_port) in rows, listing
        assert (WORKER, "true", tls_port) in rows, listing
        # a worker that rejects the broker's certificate may show up for an instant (a
        # pinned fingerprint is checked once TLS is up); it never gets a session
        for user in REJECTED:
            assert f"worker {user!r} authenticated" not in env.master.log_text()

    @pytest.mark.parametrize("name, why", [
        ("w1", "is not trusted by the CAs of"),
        ("w2", "is not the pinned"),
    ])
    def test_rejected_broker_certificate(self, env: RejectingEnv, name: str, why: str) -> None:
        assert_certificate_rejected(env.master, env.rejected[name], name, why,
                                    f"127.0.0.1:{env.suite.broker.tls_port}",
                                    env.rejected_started, REJECT_WAIT)

    def test_master_rejects_an_untrusted_broker(self, env: RejectingEnv) -> None:
        """The master's side, in a process of its own: listen() with an unrelated CA as
        ``ca_file`` never gets a broker connection and logs why."""
        broker = env.suite.broker
        options = broker.master_options(
            url=broker.tls_url(broker.master_user, broker.master_password),
            ca_file=env.certs.other_ca_file, queue="msgproto.master.untrusted")
        script = textwrap.dedent(f"""
            import sys
            from twisted.internet import defer, task
            from twisted.python import log
            from buildbot_worker_msgproto.transports import amqp

            async def main(reactor):
                log.startLogging(sys.stdout, setStdout=False)
                listening = await amqp.listen(reactor, {options!r}, lambda: None)
                print("LINK", listening.link is not None, flush=True)
                await listening.stop()

            task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "LINK False" in out, out
        lines = [ln for ln in out.splitlines() if "is not reachable yet" in ln]
        assert lines and "TLS: the broker certificate was rejected" in lines[0], out
        assert "certificate verify failed" in lines[0], out
