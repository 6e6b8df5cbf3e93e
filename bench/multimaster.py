"""Start-up and worker-attach times of a Buildbot cluster (stock distributed mode).

    python bench/multimaster.py [--repeat 3] [--workers 200] [--protocol pb|msg] \
        [--pb-backlog 4096]

Each repetition measures, on 127.0.0.1 with the multi-master test infrastructure
(``master_tests/postgres.py``, ``master_tests/crossbar.py``,
``master_tests/multimaster/env.py``):

- PostgreSQL: initdb of a new private server and its start (scripts/postgresql);
- crossbar: start of a new private router (scripts/crossbar);
- a reference master with sqlite and the simple mq: ``create-master`` and start (one
  worker and one builder configured, as in the clusters below);
- clusters of 1, 2 and 3 masters (``multiMaster``, the shared database, the wamp mq):
  create (new database, schema, basedirs) and start (all masters running and joined to
  the router);
- ``--workers`` workers attaching to a cluster of 1 master, and split evenly over a
  cluster of 2 masters: from the moment ``bench/many_workers.py`` starts them (one process
  per master, started at the same wall-clock moment) until the shared database lists them
  all as connected.

With ``--protocol pb`` the masters' pb port listens with ``--pb-backlog`` (default 4096;
0: Twisted's default of 50, with which 200 workers connecting at once overflow the
accept queue and about half of them wait for their keepalive: see bench/README.rst).

Prints medians and the raw samples.  Every process is started here and stopped by its
PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from master_tests.crossbar import Router  # noqa: E402
from master_tests.e2e import harness  # noqa: E402
from master_tests.multimaster.env import MultiMasterEnv  # noqa: E402
from master_tests.postgres import Server  # noqa: E402

PASSWD = "bench-pw"
#: one builder using every worker (attaching a worker then runs setBuilderList), as in
#: the many-workers phase of bench/run_bench.py; the masters run no build
BUILDERS_PY = harness.simple_builders_py(["idle"])
ATTACH_TIMEOUT = 600.0


def timed(action: Callable[[], object]) -> tuple[float, object]:
    began = time.monotonic()
    result = action()
    return time.monotonic() - began, result


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.workdir = workdir
        self.protocol = harness.PROTOCOLS[args.protocol]
        if args.protocol == "pb" and args.pb_backlog:
            self.protocol = dataclasses.replace(self.protocol, protocols_py=(
                self.protocol.protocols_py.replace(
                    "interface=127.0.0.1", f"interface=127.0.0.1:backlog={args.pb_backlog}")))
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)
        print(f"  {key}: {value:.2f} s", flush=True)

    def run(self) -> None:
        for rep in range(self.args.repeat):
            print(f"repetition {rep + 1}/{self.args.repeat}", flush=True)
            self.repetition(os.path.join(self.workdir, f"rep{rep + 1}"))

    def repetition(self, root: str) -> None:
        seconds, database = timed(Server.start_private)
        self.add("PostgreSQL initdb + start", seconds)
        try:
            seconds, router = timed(Router.start_private)
            self.add("crossbar start", seconds)
            try:
                self.reference_master(os.path.join(root, "reference"))
                for count in (1, 2, 3):
                    self.cluster_start(os.path.join(root, f"start{count}"), database, router,
                                       count)
                for count in self.args.attach_masters:
                    self.attach(os.path.join(root, f"attach{count}"), database, router, count)
                if self.args.failover:
                    self.failover(os.path.join(root, "failover"), database, router)
            finally:
                router.stop_private()
        finally:
            database.stop_private()

    def reference_master(self, root: str) -> None:
        port, www = harness.free_port(), harness.free_port()
        cfg = harness.make_master_cfg(
            self.protocol.protocols_py, [self.protocol.master_worker_py("w1", PASSWD)], port,
            www, BUILDERS_PY)
        master = harness.Master(os.path.join(root, "master"), cfg, www_port=www,
                                master_port=port)
        try:
            seconds, _ = timed(master.create)
            self.add("reference master (sqlite, simple mq): create", seconds)
            seconds, _ = timed(master.start)
            self.add("reference master (sqlite, simple mq): start", seconds)
        finally:
            master.stop()

    def cluster(self, root: str, database: Server, router: Router, count: int,
                names: list[str]) -> MultiMasterEnv:
        return MultiMasterEnv(root, self.protocol, database, router, count=count,
                              worker_names=names, builders_py=BUILDERS_PY,
                              passwd=lambda _name: PASSWD)

    def cluster_start(self, root: str, database: Server, router: Router, count: int) -> None:
        env = self.cluster(root, database, router, count, ["w1"])
        try:
            env.start()
            self.add(f"cluster of {count}: create (database, schema, basedirs)",
                     env.timings["create"])
            self.add(f"cluster of {count}: start", env.timings["start"])
        finally:
            env.close()

    def attach(self, root: str, database: Server, router: Router, count: int) -> None:
        n = self.args.workers
        env = self.cluster(root, database, router, count,
                           [f"mw{i:03d}" for i in range(1, n + 1)])
        procs: list[subprocess.Popen] = []
        try:
            env.start()
            per = -(-n // count)
            start_at = time.time() + 3.0  # time for each process to build its workers
            started_files = []
            for index, master in enumerate(env.masters):
                first = 1 + index * per
                wroot = os.path.join(root, "workers", str(index))
                os.makedirs(wroot)
                started_files.append(os.path.join(wroot, "started"))
                cmd = [sys.executable, os.path.join(HERE, "many_workers.py"),
                       "--protocol", self.protocol.name, "--port", str(master.master_port),
                       "--first", str(first), "--count", str(min(per, n - first + 1)),
                       "--root", wroot, "--passwd", PASSWD, "--start-at", f"{start_at:.6f}"]
                with open(os.path.join(wroot, "console.log"), "ab") as console:
                    procs.append(subprocess.Popen(
                        cmd, env={**os.environ, **harness.SUBPROCESS_ENV},
                        stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                        start_new_session=True))

            def all_connected() -> float | None:
                for proc in procs:
                    if proc.poll() is not None:
                        raise harness.HarnessError(f"bench/many_workers.py exited "
                                                   f"({proc.returncode}); logs in {root}")
                try:
                    doc = env.masters[0].api_get("workers", field=["name", "connected_to"])
                except (harness.HarnessError, OSError, http.client.HTTPException):
                    return None  # a busy master may drop one poll; the deadline bounds it
                connected = sum(1 for w in doc["workers"] if w["connected_to"])
                return time.time() if connected >= n else None

            done = harness.wait_for(all_connected, ATTACH_TIMEOUT,
                                    f"{n} workers to attach", 0.2, env.e2e_diagnostics)
            began = min(float(harness.read_text(path)) for path in started_files)
            self.add(f"{n} workers attach to {count} master(s)", done - began)
        finally:
            for proc in procs:
                harness.terminate(proc, 30)
            env.close()

    def failover(self, root: str, database: Server, router: Router) -> None:
        """``--failover`` msg workers that know masters A and B, all on A (preferred); A is
        killed; the time until every one is attached to B."""
        n = self.args.failover
        env = MultiMasterEnv(root, self.protocol, database, router, count=2,
                             worker_names=[f"fw{i:03d}" for i in range(1, n + 1)],
                             builders_py=BUILDERS_PY, passwd=lambda _name: PASSWD)
        proc = None
        try:
            env.start()
            a, b = env.masters
            wroot = os.path.join(root, "workers")
            os.makedirs(wroot)
            cmd = [sys.executable, os.path.join(HERE, "many_workers.py"), "--protocol", "msg",
                   "--port", str(a.master_port), "--prefix", "fw", "--count", str(n),
                   "--root", wroot, "--passwd", PASSWD,
                   "--masters", f"127.0.0.1:{a.master_port},127.0.0.1:{b.master_port}"]
            with open(os.path.join(wroot, "console.log"), "ab") as console:
                proc = subprocess.Popen(cmd, env={**os.environ, **harness.SUBPROCESS_ENV},
                                        stdin=subprocess.DEVNULL, stdout=console,
                                        stderr=subprocess.STDOUT, start_new_session=True)

            def attached_to(index: int) -> float | None:
                if proc.poll() is not None:
                    raise harness.HarnessError(f"many_workers.py exited; logs in {root}")
                masterid = env.masterid(index)
                try:
                    doc = env.masters[1].api_get("workers", field=["name", "connected_to"])
                except (harness.HarnessError, OSError, http.client.HTTPException):
                    return None
                on = sum(1 for w in doc["workers"]
                         if masterid in {c["masterid"] for c in w["connected_to"]})
                return time.monotonic() if on >= n else None

            harness.wait_for(lambda: attached_to(0), ATTACH_TIMEOUT,
                             f"{n} workers on master A", 0.5, env.e2e_diagnostics)
            killed = time.monotonic()
            a.kill()
            done = harness.wait_for(lambda: attached_to(1), ATTACH_TIMEOUT,
                                    f"{n} workers on master B", 0.2, env.e2e_diagnostics)
            self.add(f"failover: {n} workers on master B after A was killed", done - killed)
        finally:
            if proc is not None:
                harness.terminate(proc, 30)
            env.close()

    def report(self) -> None:
        print(f"\nmedians over {self.args.repeat} repetition(s), protocol "
              f"{self.protocol.name}, {os.cpu_count()} CPUs:")
        width = max(len(k) for k in self.samples)
        for key, values in self.samples.items():
            raw = ", ".join(f"{v:.2f}" for v in values)
            print(f"  {key:<{width}}  {statistics.median(values):7.2f} s   [{raw}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=200)
    p.add_argument("--protocol", choices=sorted(harness.PROTOCOLS), default="pb")
    p.add_argument("--attach-masters", default="1,2",
                   help="cluster sizes the workers attach to (e.g. 1,2,3)")
    p.add_argument("--failover", type=int, default=0, metavar="N",
                   help="msg only: N workers knowing two masters; the time until all are on "
                        "the second after the first is killed (issue 10 asks for 500)")
    p.add_argument("--pb-backlog", type=int, default=4096,
                   help="listen backlog of the pb port (0: Twisted's default, 50)")
    args = p.parse_args(argv)
    args.attach_masters = [int(x) for x in args.attach_masters.split(",") if x]
    if args.failover and args.protocol != "msg":
        p.error("--failover needs --protocol msg")
    for service in (Server, Router):
        why = service.missing()
        if why:
            print(why, file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="msgproto-bench-mm-") as workdir:
        bench = Bench(args, workdir)
        try:
            bench.run()
        finally:
            if bench.samples:
                bench.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
