"""A real master and worker with the fault proxy between them, for the fault tests.

The worker is created with ``buildbot-worker-msgproto create-worker`` (the CLI a user
runs) and reaches the master (or, for ``amqp``, the RabbitMQ broker) only through a
:class:`~master_tests.faultproxy.FaultProxy` that the test controls.  Each test gets its
own :class:`FaultEnv`: its own ports, directories, proxy, master and worker.

Builders (every test uses some of them):

``count``
    one shell step ``count`` printing ``line 1`` ... ``line N`` (properties ``lines``
    and ``period``), checked with :meth:`FaultEnv.assert_counted`: the step's stdout is
    every line exactly once and in order.
``upload`` / ``download``
    a ``FileUpload`` of :attr:`FaultEnv.upload_src` to :attr:`FaultEnv.upload_dest`, a
    ``FileDownload`` of :attr:`FaultEnv.download_src` to :attr:`FaultEnv.download_dest`
    (absolute paths; the test writes the source with :meth:`FaultEnv.write_random`).
``orphan``
    a shell step that writes its PID to ``pid-<buildnumber>`` and a timestamp every
    0.2 s to ``alive-<buildnumber>`` in :attr:`FaultEnv.marks_dir`; build 1 runs for
    60 s, later builds for 2 s (the window-expiry and killed-worker tests orphan build 1
    and check that its retry ran after it, not next to it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import subprocess
import sys
import time
from typing import Any
from typing import Callable

import pytest

from master_tests import rabbitmq
from master_tests.faultproxy import FaultProxy
from master_tests.faultproxy import ProxyStats

from . import harness

WORKER = "fw"
PASSWD = "fault-pw"
MIB = 1024 * 1024
TRANSFER_SIZE = 64 * MIB
#: The broker user of the worker (one of rabbitmq.WORKER_USERS).
AMQP_USER = "w2"

#: Heartbeats and window scaled down for CI (the defaults are 10 s / 30 s / 300 s).
SCALED = {"heartbeat_interval": 1, "heartbeat_timeout": 3, "resume_window": 25}

#: The master log line of a resume (manager.py) and of a suspension (driver.py).
RESUMED = "resumed its session"
LOST = "the session may resume within"

BUILDERS_PY = """
c['builders'].append(util.BuilderConfig(
    name='count', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(name='count', command=['sh', '-c',
        'i=1; while [ $i -le $LINES ]; do echo "line $i"; i=$((i+1)); sleep $PERIOD; done'],
        env={'LINES': util.Property('lines', default='200'),
             'PERIOD': util.Property('period', default='0.1')})])))
c['builders'].append(util.BuilderConfig(
    name='upload', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.FileUpload(workersrc=UPLOAD_SRC, masterdest=UPLOAD_DEST)])))
c['builders'].append(util.BuilderConfig(
    name='download', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.FileDownload(mastersrc=DOWNLOAD_SRC,
                                                  workerdest=DOWNLOAD_DEST)])))
c['builders'].append(util.BuilderConfig(
    name='orphan', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(name='orphan', command=['sh', '-c',
        'echo $$ > "$MARKS/pid-$N"; n=10; [ "$N" = 1 ] && n=300; '
        'while [ $n -gt 0 ]; do date +%s.%N >> "$MARKS/alive-$N"; n=$((n-1)); sleep 0.2; '
        'done'],
        env={'MARKS': MARKS_DIR, 'N': util.Interpolate('%(prop:buildnumber)s')})])))
"""


@dataclasses.dataclass(frozen=True)
class Transport:
    """How one transport is configured for a fault test.

    ``transport``: the worker's ``--transport``; ``transports_py``: python source of
    ``c['protocols']['msg']['transports']`` (``{T}`` is replaced by the transport's
    port; the proxy forwards to it, or for ``tcp`` to the negotiated msg/PB port);
    ``create_args``: extra create-worker options (``{CA}``: the test CA's file,
    ``{PROXY}``: the fault proxy's port).
    """

    name: str
    transport: str = "tcp"
    transports_py: str = "{}"
    create_args: tuple[str, ...] = ()
    tls: bool = False
    #: for amqp the proxy forwards to the broker; the master talks to it directly
    broker: bool = False
    #: the worker reaches the master through an HTTP CONNECT proxy (the fault proxy sits
    #: between the worker and the HTTP proxy)
    http_proxy: bool = False


TRANSPORTS = {
    "tcp": Transport("tcp"),
    "tls": Transport("tls", tls=True, create_args=("--tls-ca-file", "{CA}")),
    "http-proxy": Transport("http-proxy", http_proxy=True,
                            create_args=("--proxy-connection-string",
                                         "tcp:host=127.0.0.1:port={PROXY}")),
    "amp": Transport("amp", "amp", "{'amp': {'port': 'tcp:{T}:interface=127.0.0.1'}}"),
    "websocket": Transport("websocket", "websocket",
                           "{'websocket': {'port': 'tcp:{T}:interface=127.0.0.1', "
                           "'path': '/msg'}}", ("--transport-option", "path=/msg")),
    "zmq": Transport("zmq", "zmq", "{'zmq': {'port': {T}, 'interface': '127.0.0.1'}}"),
    "amqp": Transport("amqp", "amqp", broker=True),
}


class HTTPProxy:
    """The tests' HTTP CONNECT proxy (worker_tests/http_proxy_server.py) in a process of
    its own, listening on a free port of 127.0.0.1."""

    START_TIMEOUT = 15.0
    SCRIPT = ("from twisted.internet import reactor\n"
              "from worker_tests.http_proxy_server import ConnectProxyFactory\n"
              "port = reactor.listenTCP(0, ConnectProxyFactory(), interface='127.0.0.1')\n"
              "print(port.getHost().port, flush=True)\n"
              "reactor.run()\n")

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    def start(cls, log_path: str) -> HTTPProxy:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-c", cls.SCRIPT], cwd=root,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=log)
        proxy = cls(process, 0)
        try:
            ready, _, _ = select.select([process.stdout], [], [], cls.START_TIMEOUT)
            line = process.stdout.readline() if ready else b""  # one short line: no wait
            if not line.strip().isdigit():
                raise harness.HarnessError(f"the HTTP proxy did not start within "
                                           f"{cls.START_TIMEOUT:g} s: "
                                           + harness.read_text(log_path))
            proxy.port = int(line)
        except BaseException:
            proxy.stop()
            raise
        return proxy

    def stop(self) -> None:
        """End the process by its PID."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()


class FaultEnv:
    """Master, worker and the fault proxy between them (see the module docstring)."""

    def __init__(self, root: str, transport: Transport | str = "tcp",
                 msg_options: dict[str, Any] | None = None,
                 amqp_heartbeat: int = 2) -> None:
        self.root = root
        self.spec = TRANSPORTS[transport] if isinstance(transport, str) else transport
        self.msg_options = dict(SCALED if msg_options is None else msg_options)
        self.amqp_heartbeat = amqp_heartbeat
        self.port = harness.free_port()
        self.transport_port = harness.free_port()
        self.www_port = harness.free_port()
        self.marks_dir = os.path.join(root, "marks")
        os.makedirs(self.marks_dir, exist_ok=True)
        data = os.path.join(root, "data")
        os.makedirs(data, exist_ok=True)
        self.upload_src = os.path.join(data, "upload-src.bin")
        self.upload_dest = os.path.join(data, "upload-dest.bin")
        self.download_src = os.path.join(data, "download-src.bin")
        self.download_dest = os.path.join(data, "download-dest.bin")
        self.proxy: FaultProxy | None = None
        self.master: harness.Master | None = None
        self.worker: harness.Worker | None = None
        self.broker: rabbitmq.Broker | None = rabbitmq.current() if self.spec.broker else None
        self.certs: Any = None
        self.http_proxy: HTTPProxy | None = None

    # ------------------------------------------------------------------ setup
    def _target(self) -> tuple[str, int]:
        if self.http_proxy is not None:
            return "127.0.0.1", self.http_proxy.port
        if self.broker is not None:
            return self.broker.host, self.broker.port
        if self.spec.transport == "tcp":
            return "127.0.0.1", self.port
        return "127.0.0.1", self.transport_port

    def _protocols_py(self) -> str:
        if self.spec.tls:
            port = self.certs.strport(self.port)
        else:
            port = f"tcp:{self.port}:interface=127.0.0.1"
        if self.broker is not None:
            transports = repr({"amqp": self.broker.master_options(
                heartbeat=self.amqp_heartbeat)})
        else:
            transports = self.spec.transports_py.replace("{T}", str(self.transport_port))
        options = ", ".join(f"{k!r}: {v!r}" for k, v in self.msg_options.items())
        return (f"{{'msg': {{'port': {port!r}, 'transports': {transports}"
                f"{', ' if options else ''}{options}}}}}")

    def _create_args(self) -> list[str]:
        args = ["--transport", self.spec.transport]
        for arg in self.spec.create_args:
            args.append(arg.replace("{CA}", self.certs.ca_file if self.certs else "")
                        .replace("{PROXY}", str(self.proxy.port)))
        if self.broker is not None:
            options = self.broker.worker_options(AMQP_USER, heartbeat=str(self.amqp_heartbeat))
            for key, value in options.items():
                args += ["--transport-option", f"{key}={value}"]
        return args

    def start(self, proxy_delay: float = 0.0) -> FaultEnv:
        """Start the proxy, the master and the worker; return once the worker attached."""
        if self.spec.tls:
            from .test_tls import Certs

            self.certs = Certs(os.path.join(self.root, "certs"))
        if self.spec.http_proxy:
            self.http_proxy = HTTPProxy.start(os.path.join(self.root, "http-proxy.log"))
        self.proxy = FaultProxy.start(*self._target(), delay=proxy_delay)
        extra = (f"UPLOAD_SRC = {self.upload_src!r}\nUPLOAD_DEST = {self.upload_dest!r}\n"
                 f"DOWNLOAD_SRC = {self.download_src!r}\n"
                 f"DOWNLOAD_DEST = {self.download_dest!r}\nMARKS_DIR = {self.marks_dir!r}\n")
        cfg = harness.make_master_cfg(self._protocols_py(),
                                      f"worker.MsgWorker({WORKER!r}, {PASSWD!r})", self.port,
                                      self.www_port, extra + BUILDERS_PY)
        self.master = harness.Master(os.path.join(self.root, "master"), cfg,
                                     www_port=self.www_port, master_port=self.port)
        basedir = os.path.join(self.root, "worker")
        # through the HTTP proxy the worker names the master itself: the proxy connects
        master = self.port if self.http_proxy is not None else self.proxy.port
        create = [harness.venv_exe("buildbot-worker-msgproto"), "create-worker",
                  *self._create_args(), basedir, f"127.0.0.1:{master}", WORKER, PASSWD]
        self.worker = harness.Worker(basedir, create, name=WORKER)
        harness.start_attached(self.master, self.worker, 60)
        return self

    def stop(self) -> None:
        for proc in (self.worker, self.master):
            if proc is not None:
                proc.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.http_proxy is not None:
            self.http_proxy.stop()

    def e2e_diagnostics(self) -> str:
        parts = [p.diagnostics(80) for p in (self.master, self.worker) if p is not None]
        if self.proxy is not None and self.proxy.process.poll() is None:
            parts.append(f"---- proxy ----\n{self.proxy.stats()}")
        if self.broker is not None:
            parts.append(self.broker.log_tail(20))
        return "\n".join(parts)

    # ------------------------------------------------------------------ builds
    def write_random(self, path: str, size: int = TRANSFER_SIZE) -> str:
        """Write ``size`` random bytes to ``path``; return their sha256."""
        with open(path, "wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
            f.write(os.urandom(size % MIB))
        return harness.sha256_file(path)

    def start_build(self, builder: str, **properties: str) -> tuple[int, dict]:
        """Force a build and wait until it runs; returns (buildrequest id, build)."""
        brid = self.master.force_build(builder, properties)
        return brid, self.master.wait_build_started(brid, 60)

    def wait_output(self, buildid: int, step: str, text: str, timeout: float = 30) -> None:
        """Wait until the stdout of ``step`` contains ``text``."""
        def seen() -> bool:
            try:
                return text in self.master.build_log_text(buildid, step, streams="o")
            except harness.HarnessError:  # step or log not there yet
                return False

        harness.wait_for(seen, timeout, f"{text!r} in the output of step {step!r}", 0.2,
                         self.e2e_diagnostics)

    def wait_stats(self, predicate: Callable[[ProxyStats], bool], what: str,
                   timeout: float = 30) -> ProxyStats:
        return self.proxy.wait_until(predicate, timeout, what)

    def wait_log(self, proc: harness._Process, text: str, timeout: float,
                 count: int = 1) -> None:
        """Wait until ``text`` occurs ``count`` times in ``proc``'s twistd.log."""
        harness.wait_for(lambda: proc.log_text().count(text) >= count, timeout,
                         f"{text!r} (x{count}) in the {proc.kind} log", 0.2,
                         self.e2e_diagnostics)

    def finish(self, brid: int, timeout: float = 90, retried: bool = False) -> dict:
        """Wait for build request ``brid`` to complete; return its last build.  Unless
        ``retried``, it must have had exactly one build (a build that Buildbot retried,
        even successfully, means the fault was not survived)."""
        build = self.master.wait_build(brid, timeout)
        builds = self.master.builds_for_request(brid)
        if not retried and len(builds) != 1:
            raise AssertionError(f"build request {brid} had {len(builds)} builds:\n"
                                 + "\n".join(self.master.build_summary(b["buildid"], False)
                                             for b in builds))
        return build

    def assert_success(self, build: dict) -> None:
        assert build["results"] == harness.SUCCESS, self.master.build_summary(build["buildid"])

    def assert_counted(self, build: dict, lines: int) -> str:
        """The build succeeded and step ``count`` printed ``line 1`` .. ``line N`` exactly
        once each and in order (its stdout, headers excluded); returns the header text."""
        self.assert_success(build)
        stepid = self.master.step(build["buildid"], "count")["stepid"]
        out = self.master.step_log_text(stepid, streams="o").splitlines()
        expected = [f"line {i}" for i in range(1, lines + 1)]
        if out != expected:
            missing = sorted(set(expected) - set(out), key=lambda s: int(s.split()[1]))
            repeated = sorted({x for x in out if out.count(x) > 1})
            raise AssertionError(f"stdout is not 'line 1'..'line {lines}' once each in order: "
                                 f"{len(out)} lines, missing {missing[:10]}, repeated "
                                 f"{repeated[:10]}, first {out[:3]}, last {out[-3:]}")
        return self.master.step_log_text(stepid, streams="h")

    def suspensions(self) -> list[float]:
        """Seconds each resume of the master's log took (its 'resumed ... after N s')."""
        return [float(s) for s in re.findall(r"resumed its session from .* after ([0-9.]+) s",
                                             self.master.log_text())]

    def assert_resumed(self, headers: str | None = None, times: int = 1) -> list[float]:
        """The session was suspended and resumed (at least ``times`` times), the worker was
        never detached, and (given the step's header text) the step said so."""
        resumes = self.suspensions()
        assert len(resumes) >= times, self.e2e_diagnostics()
        log = self.master.log_text()
        assert "resume_window_expired" not in log, self.e2e_diagnostics()
        assert "starting arbitration" not in log
        assert "Worker.detached" not in log, self.e2e_diagnostics()
        assert "msgproto: session with the buildmaster resumed" in self.worker.log_text()
        if headers is not None:
            assert "worker connection lost at" in headers, headers
            assert "worker connection resumed at" in headers, headers
        return resumes


class FaultEnvs:
    """The ``fault_env`` fixture: ``fault_env(transport, proxy_delay=0.0, msg_options=...)``
    starts a :class:`FaultEnv` in a directory of its own."""

    def __init__(self, root: str, request: Any) -> None:
        self.root = root
        self.request = request
        self.envs: list[FaultEnv] = []

    def __call__(self, transport: Transport | str = "tcp", proxy_delay: float = 0.0,
                 **kwargs: Any) -> FaultEnv:
        spec = TRANSPORTS[transport] if isinstance(transport, str) else transport
        if spec.broker:  # the session's broker (skips if there is none); stopped at the end
            self.request.getfixturevalue("amqp_broker")
        env = FaultEnv(os.path.join(self.root, f"env{len(self.envs)}"), transport, **kwargs)
        self.envs.append(env)
        return env.start(proxy_delay)

    def e2e_diagnostics(self) -> str:  # attached to a failing test's report (conftest.py)
        return "\n".join(env.e2e_diagnostics() for env in self.envs)

    def stop(self) -> None:
        for env in self.envs:
            env.stop()


@pytest.fixture
def fault_env(tmp_path: Any, request: Any) -> Any:
    envs = FaultEnvs(str(tmp_path), request)
    try:
        yield envs
    finally:
        envs.stop()


def wait_seconds(seconds: float) -> None:
    """A deliberate pause (a fault's duration), named so that it reads as one."""
    time.sleep(seconds)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def read_stamps(path: str) -> list[float]:
    try:
        with open(path, encoding="ascii") as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
