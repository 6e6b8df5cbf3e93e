"""Several REAL Buildbot masters in Buildbot's own distributed mode, with real workers.

The masters share one PostgreSQL database (a fresh one per environment on the session's
private server, ``master_tests/postgres.py``) and exchange messages through the session's
crossbar router (``c['mq']`` type ``wamp``, ``master_tests/crossbar.py``), with
``c['multiMaster'] = True``.  Each master has its own basedir, web port and worker port;
all run the same master.cfg otherwise.  Only the first master's ``buildbot create-master``
creates the schema (it is checked: create-master exits 0 even when that failed); the
others reuse its relocatable buildbot.tac.

Every worker name of ``worker_names`` is configured on every master (what a user of
several masters does), with builder ``on-NAME`` (that worker only) and builder ``spread``
(the workers of ``spread``).  Their one step ``hello`` prints ``hello-from-WORKER``; a
build forced with property ``gate=PATH`` (:meth:`MultiMasterEnv.gate`) first waits, at most
``GATE_TIMEOUT`` seconds, until :meth:`MultiMasterEnv.release` creates that file, so a test
can hold builds running while it looks at them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Callable

from master_tests.crossbar import Router
from master_tests.e2e import harness
from master_tests.postgres import Server

#: how long a gated build waits for its gate file, at most
GATE_TIMEOUT = 120
#: what the wamp connector logs when the master joined the router's realm
WAMP_JOINED = "Wamp connection succeed!"
ATTACH_TIMEOUT = 30.0

GATE_SH = (
    'i=0; while [ "$0" != - ] && [ ! -e "$0" ] && [ $i -lt ' + str(GATE_TIMEOUT * 10) + ' ]; '
    'do sleep 0.1; i=$((i+1)); done; '
    '[ "$0" = - ] || [ -e "$0" ] || { echo "gate $0 not opened" >&2; exit 1; }; '
    'echo "hello-from-$1"'
)

_BUILDERS_PY = """
def _gated_factory():
    return util.BuildFactory([steps.ShellCommand(
        name='hello', command=['sh', '-c', {gate_sh!r}, util.Interpolate('%(prop:gate:--)s'),
                               util.Property('workername')])])
for _name in WORKER_NAMES:
    c['builders'].append(util.BuilderConfig(
        name='on-' + _name, workernames=[_name], factory=_gated_factory()))
if {spread!r}:
    c['builders'].append(util.BuilderConfig(
        name='spread', workernames={spread!r}, factory=_gated_factory()))
"""


def passwd(name: str) -> str:
    return f"pw-{name}"


class MultiMasterEnv:
    """``count`` masters of one Buildbot cluster (see the module docstring), speaking
    ``protocol`` to their workers.  ``builders_py`` replaces the gated builders (e.g. ``""``:
    none); ``passwd(name)`` is worker ``name``'s password."""

    def __init__(
        self,
        root: str,
        protocol: harness.ProtocolSpec,
        database: Server,
        router: Router,
        *,
        count: int = 2,
        worker_names: Sequence[str] = ("w1", "w2"),
        spread: Sequence[str] = (),
        max_builds: dict[str, int] | None = None,
        builders_py: str | None = None,
        passwd: Callable[[str], str] = passwd,
        extra_py: str = "",
    ) -> None:
        self.root = os.path.abspath(root)
        self.protocol = protocol
        self.database = database
        self.router = router
        self.count = count
        self.worker_names = list(worker_names)
        self.spread = list(spread)
        self.max_builds = dict(max_builds or {})
        self.builders_py = (_BUILDERS_PY.format(gate_sh=GATE_SH, spread=self.spread)
                            if builders_py is None else builders_py)
        self.passwd = passwd
        self.extra_py = extra_py
        self.db_name: str | None = None
        self.masters: list[harness.Master] = []
        self.workers: list[harness.Worker] = []
        self._masterids: dict[int, int] = {}
        #: seconds taken by the steps of start(): 'create' (database, schema, basedirs)
        #: and 'start' (all masters running and joined to the router)
        self.timings: dict[str, float] = {}

    # -- setup / teardown ----------------------------------------------------------------
    def master_cfg(self, master_port: int, www_port: int) -> str:
        """master.cfg of one master of this cluster (only the ports differ)."""
        workers = []
        for name in self.worker_names:
            worker_py = self.protocol.master_worker_py(name, self.passwd(name))
            if name in self.max_builds:
                worker_py = f"{worker_py[:-1]}, max_builds={int(self.max_builds[name])})"
            workers.append(worker_py)
        cluster_py = (f"c['multiMaster'] = True\n"
                      f"c['mq'] = {self.router.mq_config()!r}\n")
        return harness.make_master_cfg(
            self.protocol.protocols_py, workers, master_port, www_port,
            self.builders_py, extra_py=cluster_py + self.extra_py,
            db_url=self.database.url(self.db_name))

    def start(self) -> MultiMasterEnv:
        """Create the database and the basedirs, start every master side by side and wait
        (bounded) until each runs and has joined the router."""
        began = time.monotonic()
        self.db_name = self.database.create_database()
        for index in range(self.count):
            master_port, www_port = harness.free_port(), harness.free_port()
            master = harness.Master(os.path.join(self.root, f"master{index}"),
                                    self.master_cfg(master_port, www_port),
                                    www_port=www_port, master_port=master_port)
            self.masters.append(master)
        self._create_basedirs()
        created = time.monotonic()
        self.timings["create"] = created - began
        for master in self.masters:
            master.spawn()
        for master in self.masters:
            master.wait_running()
            harness.wait_for(lambda m=master: WAMP_JOINED in m.new_log_text(), 30,
                             f"master {master.basedir} to join the WAMP router {self.router.url}",
                             0.1, lambda m=master: m.diagnostics() + self.router.log_tail())
        self.timings["start"] = time.monotonic() - created
        return self

    def _create_basedirs(self) -> None:
        first = self.masters[0]
        first.create(["--relocatable", f"--db={self.database.url(self.db_name)}"])
        if not {"masters", "builds", "workers"} <= self.database.tables(self.db_name):
            raise harness.HarnessError(
                f"buildbot create-master created no schema in database {self.db_name}; "
                f"buildbot upgrade-master says:\n{self._upgrade_output(first)}\n"
                f"{self.database.log_tail()}")
        tac = os.path.join(first.basedir, "buildbot.tac")
        for master in self.masters[1:]:
            os.makedirs(master.basedir)
            shutil.copy(tac, master.basedir)  # relocatable: basedir is the tac's directory
            master.write_cfg(master.cfg_text)

    @staticmethod
    def _upgrade_output(master: harness.Master) -> str:
        result = subprocess.run([harness.venv_exe("buildbot"), "upgrade-master", master.basedir],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        return f"(exit {result.returncode})\n{result.stdout}\n{result.stderr}"

    def close(self) -> None:
        for group in (self.workers, self.masters):
            for process in group:  # all of a group shut down side by side
                if process.is_running:
                    process.popen.send_signal(signal.SIGTERM)
            for process in group:
                process.stop()
        if self.db_name is not None:
            self.database.drop_database(self.db_name)

    def e2e_diagnostics(self) -> str:
        parts = [m.diagnostics(60) for m in self.masters]
        parts.extend(w.diagnostics(30) for w in self.workers)
        parts.append(self.router.log_tail(20))
        parts.append(self.database.log_tail(20))
        return "\n".join(parts)

    # -- masters ---------------------------------------------------------------------------
    def masterid(self, index: int) -> int:
        """Master ``index``'s id in the shared database (Buildbot names a master
        ``HOST:BASEDIR``)."""
        if index not in self._masterids:
            master = self.masters[index]
            for entry in master.api_get("masters")["masters"]:
                if entry["name"].endswith(":" + master.basedir):
                    self._masterids[index] = entry["masterid"]
                    break
            else:
                raise harness.HarnessError(f"master {master.basedir} is not in its masters API")
        return self._masterids[index]

    # -- workers ---------------------------------------------------------------------------
    def add_worker(self, name: str, index: int, *, basedir_name: str | None = None,
                   attach: bool = True, masters: Sequence[int] = (),
                   create_args: Sequence[str] = (),
                   addresses: Mapping[int, str] | None = None) -> harness.Worker:
        """Create and start a worker process called ``name`` (one of ``worker_names``) for
        master ``index``; returns once that master lists it as connected (``attach=False``:
        once the process runs).  ``basedir_name`` (default ``name``) lets two processes use
        the same worker name.  ``masters``: the indexes of the masters the worker knows
        (a list, ``HOST:PORT,HOST:PORT``; default: master ``index`` only); ``addresses``:
        ``HOST:PORT`` the worker uses for some of them (e.g. a fault proxy's)."""
        master = self.masters[index]
        worker = harness.Worker.for_protocol(
            self.protocol, os.path.join(self.root, "workers", basedir_name or name),
            master.master_port, name, self.passwd(name), extra_create_args=create_args)
        if masters:
            master_arg = f"127.0.0.1:{int(master.master_port)}"
            worker.create_cmd[worker.create_cmd.index(master_arg)] = ",".join(
                (addresses or {}).get(i, f"127.0.0.1:{self.masters[i].master_port}")
                for i in masters)
        self.workers.append(worker.create())
        worker.start()
        if not attach:
            return worker
        masterid = self.masterid(index)

        def attached():
            if not worker.is_running:
                raise harness.HarnessError(f"worker {name} exited\n{worker.diagnostics()}")
            data = master.worker_data(name)
            return data if masterid in self.connected_to(data) else None

        harness.wait_for(attached, ATTACH_TIMEOUT, f"worker {name} to attach to master {index}",
                         0.1, lambda: worker.diagnostics() + "\n" + master.diagnostics())
        return worker

    @staticmethod
    def connected_to(worker_data: dict) -> set[int]:
        """The masterids a worker (a workers API entry) is connected to."""
        return {entry["masterid"] for entry in worker_data["connected_to"]}

    # -- gated builds ----------------------------------------------------------------------
    def gate(self) -> str:
        """A new, closed gate: pass it as property ``gate`` to hold a build."""
        os.makedirs(os.path.join(self.root, "gates"), exist_ok=True)
        return os.path.join(self.root, "gates", secrets.token_hex(4))

    @staticmethod
    def release(gate: str) -> None:
        """Open ``gate``: the builds holding on it go on and finish."""
        with open(gate, "w", encoding="ascii"):
            pass
