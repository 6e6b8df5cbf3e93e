"""End-to-end harness: a REAL Buildbot master and REAL workers, each in its own subprocess.

Everything talks over 127.0.0.1 only: the master's web server and its worker port are bound
to the loopback interface, and the harness speaks to the master only through its REST API
(stdlib ``urllib``).

Protocol selection
------------------
A protocol variant is described by a :class:`ProtocolSpec` in :data:`PROTOCOLS`. Each spec
gives the master-side ``c['protocols']`` value, the master-side worker object and the command
line that creates the worker basedir. The tests are parametrized over
:data:`ENABLED_PROTOCOLS`.

    >>> TO ADD THE 'msg' VARIANT, CHANGE ONE LINE: ENABLED_PROTOCOLS below, to
    >>>     ENABLED_PROTOCOLS = ('pb', 'msg')
    >>> (the 'msg' ProtocolSpec is already in PROTOCOLS). To try it without editing
    >>> anything: MSGPROTO_E2E_PROTOCOLS=pb,msg pytest master_tests/e2e

Every wait loop here is bounded by an explicit timeout; every process is started by us with
``Popen`` in its own session so that ``stop()`` can terminate it (SIGTERM, then SIGKILL of
its process group) by its id.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Callable
from typing import TypeVar

# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------

#: directory holding the executables of the venv we run in (buildbot, buildbot-worker, ...).
#: Not resolved through symlinks on purpose: ``venv/bin/python`` is usually a symlink.
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))

#: Buildbot result codes (buildbot.process.results), duplicated to keep this module light.
SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)
RESULT_NAMES = {
    None: "not finished",
    SUCCESS: "SUCCESS",
    WARNINGS: "WARNINGS",
    FAILURE: "FAILURE",
    SKIPPED: "SKIPPED",
    EXCEPTION: "EXCEPTION",
    RETRY: "RETRY",
    CANCELLED: "CANCELLED",
}

#: Added to the environment of every master/worker subprocess. Third-party deprecation
#: warnings must never break (or clutter) startup; this is config, not a version pin.
SUBPROCESS_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::PendingDeprecationWarning",
    "PYTHONUNBUFFERED": "1",
}

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0
HTTP_TIMEOUT = 15.0
POLL_INTERVAL = 0.2


class HarnessError(AssertionError):
    """Raised when the harness cannot do what it was asked; message carries log tails."""


def venv_exe(name: str) -> str:
    """Path of an executable installed in the same venv as ``sys.executable``."""
    return os.path.join(VENV_BIN, name)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature, but good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
    diagnostics: Callable[[], str] | None = None,
) -> Any:
    """Call ``predicate`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.0f}s waiting for {what}"
            if diagnostics is not None:
                msg += "\n" + diagnostics()
            raise HarnessError(msg)
        time.sleep(interval)


E = TypeVar("E")


def started(env: E) -> Iterator[E]:
    """The body of a fixture of an environment with ``start()`` and ``stop()``
    (``yield from harness.started(env)``): start it, yield it, and stop it after the
    tests, also when starting failed half way."""
    try:
        env.start()
        yield env
    finally:
        env.stop()


def find_processes(argv: Sequence[str]) -> list[int]:
    """pids of processes (of any owner we can see) whose command line is exactly ``argv``."""
    wanted = b"\0".join(a.encode() for a in argv) + b"\0"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == wanted:
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def write_secrets(dirname: str, secrets: dict[str, str]) -> str:
    """Create a directory usable by ``util.SecretInAFile`` (files must not be world-readable)."""
    os.makedirs(dirname, mode=0o700, exist_ok=True)
    os.chmod(dirname, 0o700)
    for key, value in secrets.items():
        path = os.path.join(dirname, key)
        with open(path, "w", encoding="utf-8") as f:
            f.write(value)
        os.chmod(path, 0o600)
    return dirname


# --------------------------------------------------------------------------------------------
# Protocol variants
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
    """How to run master and worker for one protocol.

    Templates use plain-text tokens (no str.format, since python dict literals have braces):
    ``{PORT}`` in ``protocols_py``; ``{NAME}`` and ``{PASSWD}`` (replaced by python string
    literals) in ``worker_py``.
    """

    name: str
    #: python source for c['protocols'], e.g. "{'pb': {'port': 'tcp:{PORT}:...'}}"
    protocols_py: str
    #: python source for one entry of c['workers'] (after ``from buildbot.plugins import worker``)
    worker_py: str
    #: executable (in the venv) + sub-command creating a worker basedir
    create_prefix: tuple[str, ...] = ("buildbot-worker", "create-worker")
    #: options always passed to the create command (before the positional arguments)
    create_options: tuple[str, ...] = ()
    #: executable (in the venv) + sub-command starting a worker in the foreground
    start_prefix: tuple[str, ...] = ("buildbot-worker", "start", "--nodaemon")
    #: module prefix of the master-side connection class (``type(worker.conn)``) proving
    #: that a connected worker really talks this protocol (checked by test_protocol_in_use)
    conn_class_prefix: str = ""
    #: text the created worker's buildbot.tac must contain
    tac_marker: str = ""

    def master_protocols_py(self, port: int) -> str:
        return self.protocols_py.replace("{PORT}", str(int(port)))

    def master_worker_py(self, name: str, passwd: str) -> str:
        return self.worker_py.replace("{NAME}", repr(name)).replace("{PASSWD}", repr(passwd))

    def worker_create_cmd(
        self,
        basedir: str,
        master_port: int,
        name: str,
        passwd: str | None,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The create command; ``passwd=None`` leaves the password out (certificate login)."""
        # twisted's usage.Options uses getopt: options must come before positional arguments
        return [
            venv_exe(self.create_prefix[0]),
            *self.create_prefix[1:],
            *self.create_options,
            *extra_args,
            basedir,
            f"127.0.0.1:{int(master_port)}",
            name,
            *([passwd] if passwd is not None else []),
        ]

    def worker_start_cmd(self, basedir: str) -> list[str]:
        return [venv_exe(self.start_prefix[0]), *self.start_prefix[1:], basedir]


PROTOCOLS: dict[str, ProtocolSpec] = {
    # stock Buildbot Perspective Broker: the reference behaviour.
    "pb": ProtocolSpec(
        name="pb",
        protocols_py="{'pb': {'port': 'tcp:{PORT}:interface=127.0.0.1'}}",
        worker_py="worker.Worker({NAME}, {PASSWD})",
        conn_class_prefix="buildbot.worker.protocols.pb.",
        tac_marker="protocol = 'pb'",
    ),
    # the new JSON message protocol of this package.
    "msg": ProtocolSpec(
        name="msg",
        protocols_py="{'msg': {'port': 'tcp:{PORT}:interface=127.0.0.1'}}",
        worker_py="worker.MsgWorker({NAME}, {PASSWD})",
        create_prefix=("buildbot-worker-msgproto", "create-worker"),
        create_options=("--protocol", "msg"),
        conn_class_prefix="buildbot_msgproto.",
        tac_marker="protocol = 'msg'",
    ),
}

# >>> THE ONE PLACE TO CHANGE TO RUN THE E2E TESTS OVER THE NEW PROTOCOL TOO: ('pb', 'msg') <<<
ENABLED_PROTOCOLS: tuple[str, ...] = ("pb", "msg")


def enabled_protocols() -> list[str]:
    """ENABLED_PROTOCOLS, unless overridden by MSGPROTO_E2E_PROTOCOLS=pb,msg (for trying out)."""
    env = os.environ.get("MSGPROTO_E2E_PROTOCOLS", "").strip()
    names = [n.strip() for n in env.split(",") if n.strip()] if env else list(ENABLED_PROTOCOLS)
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; known: {sorted(PROTOCOLS)}")
    return names


# --------------------------------------------------------------------------------------------
# master.cfg generation
# --------------------------------------------------------------------------------------------

#: number of generic AnyPropertyParameter fields on the 'force' scheduler (force_build limit)
FORCE_PROPERTY_SLOTS = 8

_MASTER_CFG_TEMPLATE = """\
# -*- python -*-
# Generated by master_tests/e2e/harness.py:make_master_cfg. Do not edit.
import os
import re

from buildbot.plugins import schedulers
from buildbot.plugins import secrets
from buildbot.plugins import steps
from buildbot.plugins import util
from buildbot.plugins import worker

c = BuildmasterConfig = {{}}
c['title'] = 'msgproto-e2e'
c['titleURL'] = 'http://127.0.0.1:{www_port}/'
c['buildbotURL'] = 'http://127.0.0.1:{www_port}/'
c['buildbotNetUsageData'] = None
c['db'] = {{'db_url': {db_url!r}}}
c['www'] = {{'port': 'tcp:{www_port}:interface=127.0.0.1', 'plugins': {{}}}}
# never merge two forced build requests: each test waits for *its* build request
c['collapseRequests'] = False
# let force_build() pass arbitrary property values (default only allows [\\w.-/~:]*)
c['validation'] = {{'property_value': re.compile(r'(?s).*')}}

c['protocols'] = {protocols_py}
c['workers'] = [
{workers_py}
]
WORKER_NAMES = [w.name for w in c['workers']]
c['builders'] = []
c['schedulers'] = []
{secrets_py}
# ---- builders ------------------------------------------------------------------------------
{builders_py}
# ---- extra ---------------------------------------------------------------------------------
{extra_py}
# ---- the 'force' scheduler covering every builder ----------------------------------------
if c['builders']:
    c['schedulers'].append(schedulers.ForceScheduler(
        name='force',
        builderNames=[b.name for b in c['builders']],
        properties=[util.AnyPropertyParameter('prop%d' % i) for i in range({slots})],
    ))
"""


def make_master_cfg(
    protocols_py: str,
    worker_py: str | Sequence[str],
    port: int,
    www_port: int,
    builders_py: str = "",
    *,
    secrets_dir: str | None = None,
    extra_py: str = "",
    db_url: str = "sqlite:///state.sqlite",
) -> str:
    """Text of a complete master.cfg.

    ``protocols_py``: python source of c['protocols']; the token ``{PORT}`` is replaced by
    ``port`` (a concrete source like ``"{'pb': {'port': 1234}}"`` works as well).
    ``worker_py``: python source of one worker, e.g. ``"worker.Worker('w1', 'pass')"``, or a
    sequence of those. ``builders_py``: python source appending BuilderConfigs to
    ``c['builders']``; it may use ``WORKER_NAMES``, ``steps``, ``util``, ``worker``.
    A ForceScheduler named 'force' covering all builders is always added.
    ``db_url``: c['db']['db_url'] (the default is a sqlite file in the basedir).
    """
    workers = [worker_py] if isinstance(worker_py, str) else list(worker_py)
    workers_py = "\n".join(f"    {w}," for w in workers)
    secrets_py = ""
    if secrets_dir is not None:
        secrets_py = f"c['secretsProviders'] = [secrets.SecretInAFile(dirname={secrets_dir!r})]"
    return _MASTER_CFG_TEMPLATE.format(
        protocols_py=protocols_py.replace("{PORT}", str(int(port))),
        workers_py=workers_py,
        www_port=int(www_port),
        secrets_py=secrets_py,
        builders_py=builders_py,
        extra_py=extra_py,
        slots=FORCE_PROPERTY_SLOTS,
        db_url=db_url,
    )


def cfg_import_py(module: str) -> str:
    """master.cfg source importing ``module``, a module of this directory, as
    ``_<module>`` (the master imports it as a top-level module: it may hold real steps)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return (
        "import sys as _sys\n"
        f"if {here!r} not in _sys.path:\n"
        f"    _sys.path.insert(0, {here!r})\n"
        f"import {module} as _{module}\n"
    )


def simple_builders_py(names: Iterable[str], workernames: Iterable[str] | None = None) -> str:
    """Builders each running one trivial ShellCommand (echo). For reconnect-style tests."""
    wn = "WORKER_NAMES" if workernames is None else repr(list(workernames))
    out = []
    for name in names:
        out.append(
            "c['builders'].append(util.BuilderConfig(\n"
            f"    name={name!r}, workernames={wn},\n"
            "    factory=util.BuildFactory([steps.ShellCommand(\n"
            "        name='hello', command=['echo', 'hello from', util.Property('workername')])])))"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Subprocess handling
# --------------------------------------------------------------------------------------------

_LIVE: set[_Process] = set()


@atexit.register
def _kill_leftovers() -> None:  # last-resort cleanup if a fixture finalizer never ran
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc._terminate(timeout=5)


def terminate(p: subprocess.Popen, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
    """Stop a process started in its own session, by its PID: SIGTERM (twistd shuts down
    gracefully on it), SIGKILL of its process group after ``timeout`` seconds or once it
    exited (stray children such as an interrupted 'sleep'). Returns its exit code."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)
    return p.returncode


class _Process:
    """A foreground twistd process we own (``buildbot start --nodaemon`` / worker)."""

    kind = "process"

    def __init__(self, basedir: str, env: dict[str, str] | None = None) -> None:
        self.basedir = os.path.abspath(basedir)
        self.extra_env = dict(env or {})
        self.popen: subprocess.Popen | None = None
        self._log_offset = 0

    # -- logs ---------------------------------------------------------------------------
    @property
    def log_path(self) -> str:
        return os.path.join(self.basedir, "twistd.log")

    @property
    def console_path(self) -> str:
        return os.path.join(self.basedir, "console.log")

    def log_text(self) -> str:
        """Contents of twistd.log (all runs of this basedir)."""
        return read_text(self.log_path)

    def new_log_text(self) -> str:
        """twistd.log text written since the last start()."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 60) -> str:
        parts = [f"---- {self.kind} {self.basedir}: tail of twistd.log ----"]
        parts.append(tail(self.log_text(), lines) or "(empty)")
        console = read_text(self.console_path).strip()
        if console:
            parts.append(f"---- {self.kind} {self.basedir}: tail of console.log ----")
            parts.append(tail(console, 20))
        return "\n".join(parts)

    # -- lifecycle ------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SUBPROCESS_ENV)
        env.update(self.extra_env)
        return env

    def _spawn(self, argv: Sequence[str]) -> None:
        if self.is_running:
            raise HarnessError(f"{self.kind} in {self.basedir} is already running")
        try:
            self._log_offset = os.path.getsize(self.log_path)
        except OSError:
            self._log_offset = 0
        with open(self.console_path, "ab") as console:
            self.popen = subprocess.Popen(
                list(argv),
                cwd=self.basedir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill its children
            )
        _LIVE.add(self)

    @property
    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def _terminate(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return terminate(self.popen, timeout)
        finally:
            _LIVE.discard(self)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Graceful SIGTERM, SIGKILL after ``timeout`` seconds. Returns the exit code."""
        return self._terminate(timeout)

    def _fail_if_exited(self) -> None:
        """Raise if the process, starting up, has exited already."""
        if not self.is_running:
            raise HarnessError(
                f"{self.kind} exited with code {self.popen.returncode} during startup\n"
                + self.diagnostics()
            )

    def _await_start(self, ready: Callable[[], bool], timeout: float) -> None:
        """Wait (bounded) until ``ready()``; stop the process and raise if it does not."""
        try:
            wait_for(ready, timeout, f"{self.kind} in {self.basedir} to start", 0.1,
                     self.diagnostics)
        except BaseException:
            self.stop(timeout=5)
            raise

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The process group stopped (SIGSTOP) inside the block, resumed (SIGCONT) after."""
        os.killpg(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.pid, signal.SIGCONT)

    def kill(self) -> int | None:
        """Abrupt SIGKILL of the whole process group (no graceful protocol shutdown)."""
        p = self.popen
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        return self._terminate(timeout=10)


# --------------------------------------------------------------------------------------------
# Master
# --------------------------------------------------------------------------------------------


class Master(_Process):
    """A buildmaster in ``basedir`` (created with ``buildbot create-master``), run with
    ``buildbot start --nodaemon`` and driven through its REST API."""

    kind = "master"

    def __init__(
        self,
        basedir: str,
        cfg_text: str | None = None,
        *,
        www_port: int | None = None,
        master_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(basedir, env)
        self.cfg_text = cfg_text
        self.www_port = www_port if www_port is not None else free_port()
        #: the worker-protocol port of the cfg (informational; the cfg text is what counts)
        self.master_port = master_port
        self._rpc_id = 0

    @property
    def www_url(self) -> str:
        return f"http://127.0.0.1:{self.www_port}/"

    @property
    def api_url(self) -> str:
        return self.www_url + "api/v2/"

    # -- lifecycle ------------------------------------------------------------------------
    def create(self, extra_args: Sequence[str] = ()) -> Master:
        """``buildbot create-master`` (``extra_args``: its options, e.g. ``--db=URL``), then
        write the cfg text. Note that create-master exits 0 even when it could not create
        the database."""
        os.makedirs(os.path.dirname(self.basedir) or ".", exist_ok=True)
        cmd = [venv_exe("buildbot"), "create-master", "--quiet", *extra_args, self.basedir]
        res = subprocess.run(
            cmd,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise HarnessError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        if self.cfg_text is not None:
            self.write_cfg(self.cfg_text)
        return self

    def write_cfg(self, cfg_text: str) -> None:
        self.cfg_text = cfg_text
        with open(os.path.join(self.basedir, "master.cfg"), "w", encoding="utf-8") as f:
            f.write(cfg_text)

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> Master:
        """Start and wait (bounded) until 'BuildMaster is running' and the REST API answers."""
        self.spawn()
        return self.wait_running(timeout)

    def spawn(self) -> None:
        """Start the master process without waiting (see :meth:`wait_running`): several
        masters start side by side."""
        self._spawn([venv_exe("buildbot"), "start", "--nodaemon", self.basedir])

    def wait_running(self, timeout: float = DEFAULT_START_TIMEOUT) -> Master:
        """Wait (bounded) until the spawned master logs 'BuildMaster is running' and its
        REST API answers; stop it and raise if it does not."""

        def ready() -> bool:
            self._fail_if_exited()
            log = self.new_log_text()
            if "BuildMaster startup failed" in log or "Configuration Errors" in log:
                raise HarnessError("master startup failed\n" + self.diagnostics(120))
            if "BuildMaster is running" not in log:
                return False
            try:
                self.api_get("masters")
            except (HarnessError, OSError):
                return False
            return True

        self._await_start(ready, timeout)
        return self

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> Master:
        self.stop()
        return self.start(timeout)

    # -- HTTP -----------------------------------------------------------------------------
    def _http(self, method: str, path: str, body: Any = None) -> Any:
        url = self.api_url + path.lstrip("/")
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise HarnessError(f"{method} {url} -> HTTP {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise HarnessError(f"{method} {url} failed: {e.reason}") from None
        if not raw:
            return None
        return json.loads(raw.decode("utf-8"))

    def api_get(self, path: str, **query: Any) -> dict:
        """GET /api/v2/<path>?<query>; returns the decoded JSON document."""
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        return self._http("GET", path)

    def jsonrpc(self, path: str, method: str, **params: Any) -> Any:
        """POST a JSON-RPC 2.0 control call (how the web UI forces / stops builds)."""
        self._rpc_id += 1
        body = {"jsonrpc": "2.0", "method": method, "id": self._rpc_id, "params": params}
        reply = self._http("POST", path, body)
        if "error" in reply:
            raise HarnessError(f"JSON-RPC {method} on {path} failed: {reply['error']}")
        return reply.get("result")

    # -- builds ---------------------------------------------------------------------------
    def force_build(
        self,
        builder_name: str,
        properties: dict[str, str] | None = None,
        *,
        scheduler: str = "force",
        reason: str = "e2e",
    ) -> int:
        """Force a build through the REST API; returns the buildrequest id.

        Force-scheduler field values are passed as one-element lists: the scheduler calls
        ``parse_from_args(values)`` which takes element 0 (a bare string would be truncated to
        its first character!)."""
        params: dict[str, Any] = {"builderNames": [builder_name], "reason": [reason]}
        props = dict(properties or {})
        if len(props) > FORCE_PROPERTY_SLOTS:
            raise HarnessError(f"at most {FORCE_PROPERTY_SLOTS} properties can be forced")
        for i, (k, v) in enumerate(props.items()):
            params[f"prop{i}_name"] = [str(k)]
            params[f"prop{i}_value"] = [str(v)]
        result = self.jsonrpc(f"forceschedulers/{scheduler}", "force", **params)
        # result is [bsid, {builderid: brid}]
        _bsid, brids = result
        if len(brids) != 1:
            raise HarnessError(f"expected one build request, got {brids!r}")
        return int(next(iter(brids.values())))

    def builds_for_request(self, brid: int) -> list[dict]:
        builds = self.api_get(f"buildrequests/{brid}/builds", property="*")["builds"]
        return sorted(builds, key=lambda b: b["buildid"])

    def wait_build_started(self, brid: int, timeout: float = 60.0) -> dict:
        """Wait until the build request has a (started) build; returns that build."""

        def started():
            builds = self.builds_for_request(brid)
            if builds:
                return builds[-1]
            br = self.api_get(f"buildrequests/{brid}")["buildrequests"][0]
            if br["complete"]:
                raise HarnessError(f"build request {brid} completed without a build: {br}")
            return None

        return wait_for(started, timeout, f"a build for request {brid}", 0.1, self.diagnostics)

    def wait_build(self, brid: int, timeout: float = 60.0) -> dict:
        """Wait until build request ``brid`` is complete; return its (last) build dict.

        The build dict includes 'properties' ({name: [value, source]}) and 'results'."""

        def done():
            br = self.api_get(f"buildrequests/{brid}")["buildrequests"][0]
            if not br["complete"]:
                return None
            builds = self.builds_for_request(brid)
            if not builds:
                raise HarnessError(
                    f"build request {brid} completed with results "
                    f"{RESULT_NAMES.get(br['results'])} but without any build"
                )
            if not builds[-1]["complete"]:
                return None
            return builds[-1]

        def diag():
            out = []
            for b in self.builds_for_request(brid):
                out.append(self.build_summary(b["buildid"]))
            return "\n".join(out) + "\n" + self.diagnostics()

        return wait_for(done, timeout, f"build request {brid} to complete", POLL_INTERVAL, diag)

    def run_build(
        self, builder_name: str, properties: dict[str, str] | None = None, timeout: float = 60.0
    ) -> dict:
        """force_build + wait_build."""
        return self.wait_build(self.force_build(builder_name, properties), timeout)

    def stop_build(self, buildid: int, reason: str = "stopped by e2e test") -> None:
        """Interrupt a running build (what the web UI 'Stop' button does)."""
        self.jsonrpc(f"builds/{buildid}", "stop", reason=reason)

    def get_build(self, buildid: int) -> dict:
        return self.api_get(f"builds/{buildid}", property="*")["builds"][0]

    def build_steps(self, buildid: int) -> list[dict]:
        steps = self.api_get(f"builds/{buildid}/steps")["steps"]
        return sorted(steps, key=lambda s: s["number"])

    def step(self, buildid: int, name: str) -> dict:
        """The step called ``name`` in build ``buildid``."""
        for s in self.build_steps(buildid):
            if s["name"] == name:
                return s
        raise HarnessError(f"no step {name!r} in build {buildid}\n" + self.build_summary(buildid))

    def step_logs(self, stepid: int) -> list[dict]:
        return self.api_get(f"steps/{stepid}/logs")["logs"]

    def _find_log(self, stepid: int, logname: str) -> dict:
        logs = self.step_logs(stepid)
        for lg in logs:
            if lg["name"] == logname or lg["slug"] == logname:
                return lg
        names = [lg["name"] for lg in logs]
        raise HarnessError(f"step {stepid} has no log {logname!r}; it has {names}")

    def step_log_text(self, stepid: int, logname: str = "stdio", streams: str | None = None) -> str:
        """Text of a step log.

        For stream logs (type 's', e.g. 'stdio') each stored line starts with a stream char:
        'o' stdout, 'e' stderr, 'h' header. The char is removed; ``streams`` (e.g. 'o', 'oe')
        keeps only lines of those streams."""
        lg = self._find_log(stepid, logname)
        chunks = self.api_get(f"logs/{lg['logid']}/contents")["logchunks"]
        content = "".join(c["content"] for c in chunks)
        if lg["type"] != "s":
            return content
        lines = []
        for line in content.splitlines(keepends=True):
            if not line:
                continue
            if streams is None or line[0] in streams:
                lines.append(line[1:])
        return "".join(lines)

    def build_log_text(
        self, buildid: int, step_name: str, logname: str = "stdio", streams: str | None = None
    ) -> str:
        return self.step_log_text(self.step(buildid, step_name)["stepid"], logname, streams)

    def build_properties(self, buildid: int) -> dict[str, Any]:
        """{name: value} of a build's properties."""
        props = self.api_get(f"builds/{buildid}/properties")["properties"]
        merged: dict[str, Any] = {}
        for entry in props:
            for k, (value, _source) in entry.items():
                merged[k] = value
        return merged

    def build_summary(self, buildid: int, with_logs: bool = True, log_lines: int = 15) -> str:
        """Human readable summary of a build and its steps (for assertion messages)."""
        try:
            b = self.get_build(buildid)
            out = [
                f"build {buildid} (#{b['number']}): {RESULT_NAMES.get(b['results'])} "
                f"- {b['state_string']}"
            ]
            for s in self.build_steps(buildid):
                out.append(
                    f"  step {s['number']} {s['name']!r}: {RESULT_NAMES.get(s['results'])}"
                    f" - {s['state_string']}"
                )
                if with_logs:
                    for lg in self.step_logs(s["stepid"]):
                        text = self.step_log_text(s["stepid"], lg["name"])
                        out.append(f"    log {lg['name']!r}:")
                        out.extend("      | " + ln for ln in tail(text, log_lines).splitlines())
            return "\n".join(out)
        except Exception as e:  # diagnostics must never hide the original problem
            return f"(could not summarize build {buildid}: {e!r})"

    # -- workers --------------------------------------------------------------------------
    def worker_data(self, name: str) -> dict:
        return self.api_get(f"workers/{name}")["workers"][0]

    def wait_worker_connected(
        self, name: str, timeout: float = 30.0, worker: Worker | None = None
    ) -> dict:
        """Wait until worker ``name`` shows up in connected_to; returns the worker dict.
        Pass ``worker`` to fail fast (with its log) if its process dies."""

        def connected():
            if worker is not None and worker.popen is not None and not worker.is_running:
                raise HarnessError(
                    f"worker process exited ({worker.popen.returncode}) before connecting\n"
                    + worker.diagnostics()
                )
            w = self.worker_data(name)
            return w if w["connected_to"] else None

        def diag():
            return (worker.diagnostics() + "\n" if worker else "") + self.diagnostics()

        return wait_for(connected, timeout, f"worker {name!r} to connect", 0.1, diag)

    def wait_worker_disconnected(self, name: str, timeout: float = 30.0) -> dict:
        def disconnected():
            w = self.worker_data(name)
            return w if not w["connected_to"] else None

        return wait_for(
            disconnected, timeout, f"worker {name!r} to disconnect", 0.1, self.diagnostics
        )


# --------------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------------


class Worker(_Process):
    """A worker basedir created by an arbitrary command line (``create_cmd``) and run in
    the foreground with ``buildbot-worker start --nodaemon <basedir>``."""

    kind = "worker"

    def __init__(
        self,
        basedir: str,
        create_cmd: Sequence[str] | None = None,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        start_cmd: Sequence[str] | None = None,
    ) -> None:
        super().__init__(basedir, env)
        self.create_cmd = list(create_cmd) if create_cmd is not None else None
        self.name = name
        self.start_cmd = (
            list(start_cmd)
            if start_cmd is not None
            else [venv_exe("buildbot-worker"), "start", "--nodaemon", self.basedir]
        )

    @classmethod
    def for_protocol(
        cls,
        spec: ProtocolSpec,
        basedir: str,
        master_port: int,
        name: str,
        passwd: str | None,
        *,
        extra_create_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Worker:
        basedir = os.path.abspath(basedir)
        return cls(
            basedir,
            spec.worker_create_cmd(basedir, master_port, name, passwd, extra_create_args),
            name=name,
            env=env,
            start_cmd=spec.worker_start_cmd(basedir),
        )

    def tac_text(self) -> str:
        """The created basedir's buildbot.tac ("" before ``create()``)."""
        return read_text(os.path.join(self.basedir, "buildbot.tac"))

    def create(self) -> Worker:
        if self.create_cmd is None:
            raise HarnessError("no create_cmd given")
        # `create-worker` makes only the last path component
        os.makedirs(os.path.dirname(self.basedir), exist_ok=True)
        try:
            res = subprocess.run(
                self.create_cmd,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except FileNotFoundError as e:
            raise HarnessError(
                f"cannot run {self.create_cmd[0]!r} ({e}); is the package installed in the venv?"
            ) from None
        if res.returncode != 0 or not os.path.exists(os.path.join(self.basedir, "buildbot.tac")):
            raise HarnessError(
                f"{self.create_cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return self

    def start(self, timeout: float = 15.0) -> Worker:
        """Start the worker process. Waits (bounded) only until twistd has loaded the tac
        and started the service; use Master.wait_worker_connected for the connection."""
        self._spawn(self.start_cmd)

        def started() -> bool:
            # twistd's own startup line; a worker may start and stop again at once (a
            # stock worker whose first login is refused), which is for the test to judge
            if "starting up" in self.new_log_text():
                return True
            self._fail_if_exited()
            return False

        self._await_start(started, timeout)
        return self

    def restart(self, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> Worker:
        self.stop(stop_timeout)
        return self.start()


def start_attached(master: Master, worker: Worker, timeout: float) -> None:
    """Create ``master`` and ``worker``, start both; return once the worker is attached."""
    master.create()
    worker.create()
    master.start()
    worker.start()
    master.wait_worker_connected(worker.name, timeout, worker=worker)
