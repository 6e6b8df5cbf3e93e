"""What the private test services of the multi-master tests (``master_tests/postgres.py``,
``master_tests/crossbar.py``) share: a service run by its ``scripts/`` control script in a
temporary directory of its own on a free 127.0.0.1 port, started once per pytest session
(per pytest-xdist worker) and stopped by its PID at the end."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
from typing import Callable
from typing import Generic
from typing import TypeVar

import pytest

from master_tests import system_deps
from master_tests.e2e.harness import free_port

SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "scripts")
START_TIMEOUT = 90
STOP_TIMEOUT = 60


def run_script(script: str, *args: str, timeout: float, env: dict[str, str] | None = None,
               log_tail: Callable[[], str] = str) -> str:
    """Run ``scripts/<script> ARGS...`` (with ``env``, default: ours); its stdout, or
    RuntimeError with its output and ``log_tail()`` (the tail of the service's log)."""
    result = subprocess.run([os.path.join(SCRIPTS_DIR, script), *args], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/{script} {' '.join(args)} failed "
                           f"({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                           f"{log_tail()}")
    return result.stdout


def file_tail(path: str, title: str, lines: int = 40) -> str:
    """The last ``lines`` lines of the log file ``path`` under a ``title`` line ("" if it
    cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f"---- {title} ----\n" + "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def unavailable(message: str) -> None:
    """A service the tests need is not installed: skip the test on a developer's machine,
    fail it under scripts/run-tests or in CI (:func:`master_tests.system_deps.required`)."""
    system_deps.unavailable(message)


class ScriptService:
    """A service that ``scripts/<script> start|stop DIR [PORT]`` controls, with its files
    in ``directory`` and its log in ``directory/<log_name>``."""

    script = ""
    log_name = ""
    #: file under ``directory`` that exists while the service may be running
    pid_file = ""

    def __init__(self, directory: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()

    @classmethod
    def missing(cls) -> str | None:
        """Why the service cannot run here (None: it can)."""
        return None

    def start(self):
        self.run_script("start", self.directory, str(self.port), timeout=START_TIMEOUT)
        return self

    def stop(self) -> None:
        self.run_script("stop", self.directory, timeout=STOP_TIMEOUT)

    def run_script(self, *args: str, timeout: float) -> str:
        """Run ``scripts/<script> ARGS...`` (see :func:`run_script`)."""
        return run_script(self.script, *args, timeout=timeout, log_tail=self.log_tail)

    def log_tail(self, lines: int = 40) -> str:
        path = os.path.join(self.directory, self.log_name)
        return file_tail(path, path, lines)

    @classmethod
    def start_private(cls):
        """One of its own, in a new directory under /tmp (a directory pytest's basetemp,
        0700, would keep another user out); skips (fails in CI) if it cannot run here.
        Stop it with :meth:`stop_private`."""
        why = cls.missing()
        if why:
            unavailable(why)
        service = cls(tempfile.mkdtemp(prefix=f"msgproto-{cls.script}-"))
        try:
            return service.start()
        except BaseException:
            service.stop_private()
            raise

    def stop_private(self) -> None:
        """Stop it (if it may run) and remove its directory."""
        try:
            if os.path.exists(os.path.join(self.directory, self.pid_file)):
                self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


S = TypeVar("S", bound=ScriptService)


class Shared(Generic[S]):
    """The session's one instance of a service: started on first use, stopped by
    :meth:`close` (the session fixture's end) or at interpreter exit."""

    def __init__(self, start: Callable[[], S]) -> None:
        self._start = start
        self._service: S | None = None

    def current(self) -> S:
        if self._service is None:
            self._service = self._start()
            atexit.register(self.close)
        return self._service

    def close(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            with contextlib.suppress(Exception):
                service.stop_private()

    def fixture(self, name: str, doc: str):
        """A session-scoped pytest fixture called ``name`` that gives the service and
        stops it at the end of the session."""

        def service_fixture():
            yield self.current()
            self.close()

        service_fixture.__doc__ = doc
        return pytest.fixture(scope="session", name=name)(service_fixture)
