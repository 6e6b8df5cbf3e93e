"""One real master with several workers, each created by its own command line.

Shared by the TLS and mTLS end-to-end tests: every worker gets a builder ``b-NAME``
that echoes ``hello-from-NAME``, so a test can check that worker's build.
"""

from __future__ import annotations

import os
import re
import time

from . import harness

ATTACH_TIMEOUT = 30



def hello_builders_py(more_steps_py: str = "") -> str:
    """Builders ``b-NAME``, one a worker, whose step ``hello`` echoes ``hello-from-NAME``;
    ``more_steps_py``: python source of further steps (each ending in a comma) that may
    use ``name``."""
    return f"""
for name in WORKER_NAMES:
    c['builders'].append(util.BuilderConfig(
        name='b-' + name, workernames=[name],
        factory=util.BuildFactory([
            steps.ShellCommand(name='hello', command=['sh', '-c', 'echo hello-from-$0', name]),
{more_steps_py}        ])))
"""


BUILDERS_PY = hello_builders_py()


def check_hello_build(master: harness.Master, name: str, timeout: float,
                      worker: harness.Worker | None = None) -> None:
    """Worker ``name`` attaches within ``timeout`` s and the build of its builder succeeds
    with its output (``worker``: its process, to fail fast if it dies)."""
    master.wait_worker_connected(name, timeout, worker=worker)
    build = master.run_build("b-" + name, timeout=60)
    assert build["results"] == harness.SUCCESS, master.build_summary(build["buildid"])
    text = master.step_log_text(master.step(build["buildid"], "hello")["stepid"])
    assert f"hello-from-{name}" in text

#: worker name -> (protocol spec, extra create-worker args, master port the worker uses)
WorkerSpecs = dict[str, tuple[harness.ProtocolSpec, tuple[str, ...], int]]


class MultiWorkerEnv:
    """A master on ``port`` and the workers of ``specs`` (with password 'pw' on both sides,
    unless ``passwords[name]`` gives (master's, worker's); None: no password)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.passwords: dict[str, tuple[str | None, str | None]] = {}
        self.port = harness.free_port()
        self.master: harness.Master | None = None
        self.workers: dict[str, harness.Worker] = {}
        self.started_at = 0.0

    def start_all(self, protocols_py: str, specs: WorkerSpecs) -> None:
        """Write master.cfg for ``protocols_py``, create everything, start it all."""
        www_port = harness.free_port()
        cfg = harness.make_master_cfg(
            protocols_py,
            [f"worker.MsgWorker({n!r}, {self.passwords.get(n, ('pw', 'pw'))[0]!r})"
             for n in specs], self.port, www_port, BUILDERS_PY)
        self.master = harness.Master(os.path.join(self.root, "master"), cfg,
                                     www_port=www_port, master_port=self.port)
        self.master.create()
        for name, (spec, args, port) in specs.items():
            w = harness.Worker.for_protocol(spec, os.path.join(self.root, name), port, name,
                                            self.passwords.get(name, ("pw", "pw"))[1],
                                            extra_create_args=args)
            self.workers[name] = w.create()
        self.master.start()
        self.started_at = time.monotonic()
        for w in self.workers.values():
            w.start()

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        if self.master is not None:
            self.master.stop()

    def e2e_diagnostics(self) -> str:
        parts = [self.master.diagnostics(60)] if self.master else []
        parts.extend(w.diagnostics(30) for w in self.workers.values())
        return "\n".join(parts)

    def check_build(self, name: str) -> None:
        """Worker ``name`` attaches and its builder's build succeeds with its output."""
        check_hello_build(self.master, name, ATTACH_TIMEOUT, self.workers[name])

    def wait_refusals(self, seconds: float) -> None:
        """Let the workers run (and be refused) for ``seconds`` since they started."""
        remaining = seconds - (time.monotonic() - self.started_at)
        if remaining > 0:
            time.sleep(remaining)

    def assert_never_attached(self, name: str, keeps_running: bool = True) -> None:
        """Worker ``name`` never attached (and runs still, if ``keeps_running``)."""
        if keeps_running:
            assert self.workers[name].is_running, self.workers[name].diagnostics()
        assert not self.master.worker_data(name)["connected_to"], self.e2e_diagnostics()
        assert f"worker '{name}' attaching" not in self.master.log_text()


def assert_backing_off(worker: harness.Worker) -> None:
    """``worker`` retried with growing delays and never connected."""
    log = worker.log_text()
    delays = [float(d) for d in re.findall(r"Scheduling retry \d+ to connect .* in "
                                           r"([0-9.]+) seconds", log)]
    assert len(delays) >= 2 and delays[-1] > delays[0], worker.diagnostics()
    assert "Connected to buildmaster" not in log
