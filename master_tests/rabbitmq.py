"""A RabbitMQ broker for the AMQP transport tests, shared by a whole pytest session.

Two ways to get one:

- ``MSGPROTO_AMQP_URL=amqp://user:pass@127.0.0.1:5672/vhost`` reuses a broker someone
  else started (CI, a developer).  Master and worker then share that URL's user, the
  exchange and queue names are made unique per session, and tests that must control
  the broker (restart it, create users) skip.
- otherwise, if rabbitmq-server is installed, a private broker is started with
  ``scripts/rabbitmq`` in a temporary directory on free loopback ports, provisioned at
  boot from a definitions file (a vhost, a master user and worker users with exactly the
  permissions docs/transports/amqp.rst prescribes), and stopped at the end of the session.

Tests skip with a clear message only when rabbitmq-server is not installed (and no URL is
given); with ``MSGPROTO_REQUIRE_SYSTEM_DEPS=1`` (scripts/run-tests, CI) they fail instead
(:mod:`master_tests.system_deps`).  Use it from pytest tests or trial TestCases alike::

    from master_tests.rabbitmq import amqp_broker  # noqa: F401  (the fixture)

    @pytest.mark.usefixtures("amqp_broker")
    class TestSomething(...):
        def test_x(self):
            broker = rabbitmq.current()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import unittest
from typing import Any
from typing import NoReturn
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlsplit

import pytest

from buildbot_worker_msgproto.transports.amqp import Names
from buildbot_worker_msgproto.transports.amqp import master_permissions
from buildbot_worker_msgproto.transports.amqp import worker_permissions
from master_tests import services
from master_tests import system_deps
from master_tests.e2e.harness import free_port

URL_ENV = "MSGPROTO_AMQP_URL"
RABBITMQ_BIN = os.environ.get("MSGPROTO_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin")
START_TIMEOUT = 120

VHOST = "msgproto-test"
MASTER_USER = "msgproto-master"
#: Worker users of the private broker, each allowed only its own queue.
WORKER_USERS = ("w1", "w2", "tw")


def installed() -> bool:
    return os.access(os.path.join(RABBITMQ_BIN, "rabbitmq-server"), os.X_OK)


def _missing(alternative: str = "") -> NoReturn:
    system_deps.missing("rabbitmq-server", f"{RABBITMQ_BIN}/rabbitmq-server is missing; "
                        f"Debian: apt-get install rabbitmq-server{alternative}")


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


@dataclasses.dataclass
class Broker:
    """A running broker and the credentials and names to use with it."""

    host: str
    port: int
    vhost: str
    master_user: str
    master_password: str
    #: worker AMQP user -> password (an external broker: every name maps to its one user)
    workers: dict[str, str]
    names: Names
    #: the private broker's directory (None for an external broker)
    directory: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the AMQPS (TLS) listener's port on 127.0.0.1, if the broker has one (``tls=``)
    tls_port: int | None = None

    def tls_url(self, user: str, password: str) -> str:
        """The ``amqps://`` URL of the TLS listener (see :func:`start_private`)."""
        if self.tls_port is None:
            raise ValueError("this broker has no TLS listener")
        return (f"amqps://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:"
                f"{self.tls_port}/{quote(self.vhost, safe='')}")

    @property
    def controllable(self) -> bool:
        return self.directory is not None

    def url(self, user: str, password: str) -> str:
        return (f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:"
                f"{self.port}/{quote(self.vhost, safe='')}")

    def master_options(self, **extra: Any) -> dict[str, Any]:
        """Options of the master's ``listen()`` (c['protocols']['msg']['transports'])."""
        options = {"url": self.url(self.master_user, self.master_password),
                   "exchange": self.names.exchange, "queue": self.names.master_queue,
                   "worker_queue_prefix": self.names.worker_queue_prefix, "heartbeat": 10}
        options.update(extra)
        return options

    def worker_credentials(self, name: str) -> tuple[str, str]:
        if not self.controllable:
            return self.master_user, self.master_password
        return name, self.workers[name]

    def worker_options(self, name: str, **extra: Any) -> dict[str, str]:
        """Worker transport options (``--transport-option KEY=VALUE``) for worker user
        ``name``."""
        user, password = self.worker_credentials(name)
        options = {"user": user, "password": password, "vhost": self.vhost,
                   "exchange": self.names.exchange, "master_queue": self.names.master_queue,
                   "worker_queue_prefix": self.names.worker_queue_prefix, "heartbeat": "10"}
        options.update(extra)
        return options

    # -- control (private broker only)
    def _script(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        if self.directory is None:
            raise unittest.SkipTest(f"the broker of {URL_ENV} is not ours to control")
        return services.run_script("rabbitmq", *args, timeout=timeout,
                                   env=dict(os.environ, **self.env), log_tail=self.log_tail)

    def start(self) -> None:
        self._script("start", self.directory, str(self.port))

    def stop(self) -> None:
        self._script("stop", self.directory, timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str) -> str:
        return self._script("ctl", self.directory, *args, timeout=60)

    def log_tail(self, lines: int = 40) -> str:
        if self.directory is None:
            return ""
        path = os.path.join(self.directory, "log", f"{self.env['MSGPROTO_RABBITMQ_NODENAME']}.log")
        return services.file_tail(path, "broker log", lines)


def _external(url: str) -> Broker:
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    tag = secrets.token_hex(4)
    names = Names(f"msgproto-{tag}", f"msgproto-{tag}.master", f"msgproto-{tag}.worker.")
    return Broker(host=parts.hostname or "127.0.0.1", port=parts.port or 5672, vhost=vhost,
                  master_user=unquote(parts.username or "guest"),
                  master_password=unquote(parts.password or "guest"), workers={},
                  names=names)


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a broker's TLS listener (see scripts/rabbitmq)."""

    cert: str
    key: str
    ca: str
    #: ``verify_none`` or ``verify_peer`` (a client certificate is never required)
    verify: str = "verify_none"


def _private(tls: TLSFiles | None = None) -> Broker:
    directory = tempfile.mkdtemp(prefix="msgproto-rabbitmq-")
    port = free_port()
    names = Names()
    workers = {name: secrets.token_hex(8) for name in WORKER_USERS}
    master_password = secrets.token_hex(8)
    users = {MASTER_USER: master_password, **workers}
    permissions = [dict(zip(("configure", "write", "read"), master_permissions(names)),
                        user=MASTER_USER, vhost=VHOST)]
    for name in workers:
        permissions.append(dict(zip(("configure", "write", "read"),
                                    worker_permissions(name, names)), user=name, vhost=VHOST))
    definitions = {
        "users": [{"name": name, "password_hash": _password_hash(password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
                  for name, password in users.items()],
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
    }
    definitions_file = os.path.join(directory, "definitions.json")
    with open(definitions_file, "w", encoding="utf-8") as f:
        json.dump(definitions, f, indent=1)
    env = {"MSGPROTO_RABBITMQ_NODENAME": f"msgproto-test-{port}@localhost",
           "MSGPROTO_RABBITMQ_EPMD_PORT": str(free_port()),
           "MSGPROTO_RABBITMQ_DIST_PORT": str(free_port()),
           "MSGPROTO_RABBITMQ_DEFINITIONS": definitions_file}
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        env.update({"MSGPROTO_RABBITMQ_TLS_PORT": str(tls_port),
                    "MSGPROTO_RABBITMQ_TLS_CERT": tls.cert,
                    "MSGPROTO_RABBITMQ_TLS_KEY": tls.key,
                    "MSGPROTO_RABBITMQ_TLS_CA": tls.ca,
                    "MSGPROTO_RABBITMQ_TLS_VERIFY": tls.verify})
    broker = Broker(host="127.0.0.1", port=port, vhost=VHOST, master_user=MASTER_USER,
                    master_password=master_password, workers=workers, names=names,
                    directory=os.path.join(directory, "broker"), env=env, tls_port=tls_port)
    try:
        broker.start()
    except BaseException:
        with contextlib.suppress(Exception):
            broker.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return broker


def start_private(tls: TLSFiles | None = None) -> Broker:
    """A broker of its own (not the session's shared one), optionally with a TLS listener
    on ``broker.tls_port``; stop it with :func:`stop_private`.  SkipTest if rabbitmq-server
    is not installed."""
    if not installed():
        _missing()
    return _private(tls)


def stop_private(broker: Broker) -> None:
    """Stop a broker of :func:`start_private` and remove its directory."""
    if broker.directory is None:
        return
    try:
        broker.stop()
    finally:
        shutil.rmtree(os.path.dirname(broker.directory), ignore_errors=True)


_broker: Broker | None = None
_users = 0


def current() -> Broker:
    """The session's broker, started on first use; SkipTest if there is none."""
    global _broker
    if _broker is None:
        url = os.environ.get(URL_ENV)
        if url:
            _broker = _external(url)
        elif not installed():
            _missing(f", or set {URL_ENV} to a broker")
        else:
            _broker = _private()
            atexit.register(_stop)
    return _broker


def _stop() -> None:
    global _broker
    broker, _broker = _broker, None
    if broker is not None:
        stop_private(broker)


@pytest.fixture(scope="session")
def amqp_broker() -> Any:
    """The shared broker (started once; stopped when the last user of it finishes)."""
    global _users
    try:
        broker = current()
    except unittest.SkipTest as e:
        pytest.skip(str(e))
    _users += 1
    try:
        yield broker
    finally:
        _users -= 1
        if _users == 0:
            _stop()
