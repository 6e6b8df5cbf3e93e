"""One real master with one msg worker, for the end-to-end tests that poke at the master.

Shared by the bad-input, connection-flood and lifecycle tests: the master's msg port
listens on 127.0.0.1 with the ``msg_options`` each test needs, and ``start()`` returns
once the worker is attached.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from . import harness

WORKER = "w1"
PASSWD = "single-worker-pw"


def long_and_quick_builders_py(long_lines: int) -> str:
    """Builders ``long`` (``long_lines`` lines, one per 0.25 s) and ``quick`` (echo)."""
    return f"""
c['builders'].append(util.BuilderConfig(
    name='long', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(name='count', command=['sh', '-c',
        'i=0; while [ $i -lt {int(long_lines)} ]; do echo line-$i; i=$((i+1)); sleep 0.25; '
        'done'])])))
c['builders'].append(util.BuilderConfig(
    name='quick', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(name='hello', command=['echo', 'still-ok'])])))
"""


class SingleWorkerEnv:
    """A master (msg on 127.0.0.1 plus ``msg_options``) and worker ``WORKER``."""

    def __init__(self, root: str, msg_options: dict[str, Any] | None = None,
                 builders_py: str | None = None, create_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.port = harness.free_port()
        www_port = harness.free_port()
        spec = harness.PROTOCOLS["msg"]
        protocols_py = repr({"msg": {"port": f"tcp:{self.port}:interface=127.0.0.1",
                                     **(msg_options or {})}})
        cfg = harness.make_master_cfg(protocols_py, spec.master_worker_py(WORKER, PASSWD),
                                      self.port, www_port,
                                      builders_py or harness.simple_builders_py(["b"]))
        self.master = harness.Master(os.path.join(root, "master"), cfg, www_port=www_port,
                                     master_port=self.port)
        self.worker = harness.Worker.for_protocol(spec, os.path.join(root, "worker"), self.port,
                                                  WORKER, PASSWD, extra_create_args=create_args)

    def start(self) -> SingleWorkerEnv:
        harness.start_attached(self.master, self.worker, 30)
        return self

    def stop(self) -> None:
        """Stop both (resuming a process a test froze with SIGSTOP first)."""
        for proc in (self.worker, self.master):
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
            proc.stop()

    def e2e_diagnostics(self) -> str:
        return self.master.diagnostics(80) + "\n" + self.worker.diagnostics(40)
