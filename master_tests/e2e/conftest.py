"""pytest fixtures for the end-to-end tests (real master + real workers in subprocesses).

Protocol variants: the module-scoped ``protocol`` fixture is parametrized with
``harness.enabled_protocols()``. To run everything over the new protocol as well, change the
single line ``ENABLED_PROTOCOLS = ('pb',)`` in harness.py to ``('pb', 'msg')`` (or, without
editing, run with ``MSGPROTO_E2E_PROTOCOLS=pb,msg``). Nothing in this file needs to change.

Sharing: ONE parity master + ONE main worker ('w1') per test module and protocol
(``parity_env``). Tests that need to stop/restart a worker or create it with special options
get their own *worker* (``extra_worker``) on that same master; only the master-restart test
builds its own master (``make_master``).

On failure, the tails of every involved twistd.log are attached to the test report.
"""

from __future__ import annotations

import os
import shutil

import pytest

from . import harness
from . import list_args_cfg
from . import parity_cfg


def _passwd(name: str) -> str:
    return f"pw-{name}"


class ParityEnv:
    """The shared parity master and its main worker, plus helpers for the tests."""

    def __init__(self, protocol: harness.ProtocolSpec, root: str) -> None:
        self.protocol = protocol
        self.root = root
        self.data_dir = os.path.join(root, "master_data")
        self.secrets_dir = os.path.join(root, "secrets")
        self.master_port = harness.free_port()
        self.master: harness.Master | None = None
        self.worker: harness.Worker | None = None
        self.workers: list[harness.Worker] = []
        self.data_sha256: dict[str, str] = {}
        self._builds: dict[str, dict] = {}

    # -- setup / teardown -----------------------------------------------------------------
    def start(self) -> None:
        self.data_sha256 = parity_cfg.prepare_master_data(self.data_dir)
        harness.write_secrets(self.secrets_dir, {parity_cfg.SECRET_NAME: parity_cfg.SECRET_VALUE})
        www_port = harness.free_port()
        cfg = harness.make_master_cfg(
            self.protocol.protocols_py,
            [self.protocol.master_worker_py(n, _passwd(n)) for n in parity_cfg.ALL_WORKERS],
            self.master_port,
            www_port,
            parity_cfg.parity_builders_py(self.data_dir)
            + list_args_cfg.builders_py(repr([parity_cfg.MAIN_WORKER])),
            secrets_dir=self.secrets_dir,
        )
        self.master = harness.Master(
            os.path.join(self.root, "master"), cfg, www_port=www_port, master_port=self.master_port
        )
        self.master.create()
        # create the main worker while nothing runs yet, start it once the master is up
        self.worker = self.new_worker(
            parity_cfg.MAIN_WORKER,
            env={parity_cfg.WORKER_ENV_VAR: parity_cfg.WORKER_ENV_VALUE},
        )
        # a stray directory a worker *without* --delete-leftover-dirs must keep
        os.makedirs(os.path.join(self.worker.basedir, "stray_keep", "sub"))
        self.master.start()
        self.worker.start()
        self.master.wait_worker_connected(parity_cfg.MAIN_WORKER, 30, worker=self.worker)

    def stop(self) -> None:
        for w in reversed(self.workers):
            w.stop()
        if self.master is not None:
            self.master.stop()

    def new_worker(
        self,
        name: str,
        *,
        extra_create_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> harness.Worker:
        """Create (not start) a worker basedir for the configured worker ``name``.
        Its info/admin and info/host files get known values."""
        basedir = os.path.join(self.root, "workers", name)
        if os.path.exists(basedir):
            shutil.rmtree(basedir)
        w = harness.Worker.for_protocol(
            self.protocol,
            basedir,
            self.master_port,
            name,
            _passwd(name),
            extra_create_args=extra_create_args,
            env=env,
        )
        w.create()
        tac = w.tac_text()
        if self.protocol.tac_marker not in tac:
            raise harness.HarnessError(
                f"{w.create_cmd} made a buildbot.tac without {self.protocol.tac_marker!r}:\n{tac}"
            )
        info = os.path.join(basedir, "info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "admin"), "w", encoding="utf-8") as f:
            f.write(f"E2E Admin <{name}@example.invalid>\n")
        with open(os.path.join(info, "host"), "w", encoding="utf-8") as f:
            f.write(f"e2e host of {name}\n")
        self.workers.append(w)
        return w

    # -- helpers for tests ------------------------------------------------------------------
    def build(self, builder: str, timeout: float = 90.0) -> dict:
        """Run builder once per module (several tests may check the same build)."""
        if builder not in self._builds:
            self._builds[builder] = self.master.run_build(builder, timeout=timeout)
        return self._builds[builder]

    def e2e_diagnostics(self) -> str:
        parts = []
        if self.master is not None:
            parts.append(self.master.diagnostics(80))
        parts.extend(w.diagnostics(40) for w in self.workers)
        return "\n".join(parts)


@pytest.fixture(scope="module", params=harness.enabled_protocols())
def protocol(request) -> harness.ProtocolSpec:
    """The protocol variant under test (see harness.ENABLED_PROTOCOLS)."""
    return harness.PROTOCOLS[request.param]


@pytest.fixture(scope="module")
def parity_env(protocol, tmp_path_factory):
    root = str(tmp_path_factory.mktemp(f"e2e-{protocol.name}"))
    yield from harness.started(ParityEnv(protocol, root))


@pytest.fixture
def extra_worker(parity_env):
    """Factory: ``extra_worker(name, extra_create_args=(...))`` -> created (not started)
    worker for one of the dedicated worker names of the parity master; stopped after the
    test."""
    created: list[harness.Worker] = []

    def make(name: str, extra_create_args: tuple[str, ...] = ()) -> harness.Worker:
        w = parity_env.new_worker(name, extra_create_args=extra_create_args)
        created.append(w)
        return w

    yield make
    for w in created:
        w.stop()


class MasterFactory:
    """Separate master(s) + worker(s) for tests that restart the master."""

    def __init__(self, protocol: harness.ProtocolSpec, root: str) -> None:
        self.protocol = protocol
        self.root = root
        self.processes: list[harness._Process] = []

    def master(self, builders: list[str], worker_names: list[str]) -> harness.Master:
        port = harness.free_port()
        www_port = harness.free_port()
        cfg = harness.make_master_cfg(
            self.protocol.protocols_py,
            [self.protocol.master_worker_py(n, _passwd(n)) for n in worker_names],
            port,
            www_port,
            harness.simple_builders_py(builders),
        )
        m = harness.Master(
            os.path.join(self.root, "master"), cfg, www_port=www_port, master_port=port
        )
        self.processes.append(m)
        return m.create()

    def worker(self, master: harness.Master, name: str) -> harness.Worker:
        w = harness.Worker.for_protocol(
            self.protocol,
            os.path.join(self.root, "workers", name),
            master.master_port,
            name,
            _passwd(name),
        )
        self.processes.append(w)
        return w.create()

    def e2e_diagnostics(self) -> str:
        return "\n".join(p.diagnostics(60) for p in self.processes)

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()


@pytest.fixture
def make_master(protocol, tmp_path):
    f = MasterFactory(protocol, str(tmp_path))
    try:
        yield f
    finally:
        f.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach master/worker log tails to the report of a failing e2e test."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or call.when not in ("setup", "call"):
        return
    for name, value in getattr(item, "funcargs", {}).items():
        diag = getattr(value, "e2e_diagnostics", None)
        if callable(diag):
            try:
                rep.sections.append((f"e2e logs ({name})", diag()))
            except Exception as e:  # never mask the real failure
                rep.sections.append((f"e2e logs ({name})", f"unavailable: {e!r}"))
