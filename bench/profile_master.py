#!/usr/bin/env python
"""Where the master's CPU goes: this plugin's code or Buildbot's (cProfile of a real master).

    .venv/bin/python bench/profile_master.py attach [--workers 2000] [--protocol msg|pb]
    .venv/bin/python bench/profile_master.py steps [--steps 100] [--protocol msg|pb]
    .venv/bin/python bench/profile_master.py report FILE.prof ...

``attach``: a master (sqlite) with ``--workers`` configured workers and one builder using
all of them is started, profiled from the loading of master.cfg until it is ready
(phase "start"); then ``bench/many_workers.py`` starts all workers in one process at
once, profiled until the last one's attach sequence has finished (phase "attach").
``steps``: a master with one worker runs a build of ``--steps`` ``ShellCommand(['true'])``
steps (after a warm-up build), profiled from the build's forcing to its end.

The profiler (``cProfile``, the reactor's thread only: master.cfg is read and the
database runs in Buildbot's thread pools, shown as "other threads") is started in the
reactor's thread by a few lines in master.cfg, right after master.cfg was read, and
switched by SIGUSR2, which saves the running profile and starts a new one.  The report
puts every function's own time on an **owner**: this plugin (``buildbot_msgproto``,
``buildbot_worker_msgproto``), Buildbot (``buildbot``) or, for libraries (Twisted,
SQLAlchemy, the standard library...), whoever called them, following the profile's caller
edges in proportion to their time up to the first plugin or Buildbot frame; time no
owner called (the reactor's own loop, polling) is "reactor / libraries".  Call counts of
the functions that matter for the attach path are printed too.  See bench/README.rst
("Where the master's CPU goes").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_cfg  # noqa: E402
from run_bench import PROTOS  # noqa: E402
from run_bench import Rig  # noqa: E402
from run_bench import _read_events  # noqa: E402
from run_bench import cpu_seconds  # noqa: E402
from run_bench import create_pair  # noqa: E402

from master_tests.e2e.harness import SUBPROCESS_ENV  # noqa: E402
from master_tests.e2e.harness import Master  # noqa: E402
from master_tests.e2e.harness import Worker  # noqa: E402
from master_tests.e2e.harness import free_port  # noqa: E402
from master_tests.e2e.harness import make_master_cfg  # noqa: E402

PASSWD = "pw"

#: master.cfg lines: profile the reactor thread from here on; SIGUSR2 saves the profile
#: to PREFIX.N (N = 0, 1, ...) and starts the next one.
PROFILER_PY = """
import cProfile as _bench_cprofile
import signal as _bench_signal
import time as _bench_ptime

from twisted.internet import reactor as _bench_reactor

_bench_profile = {{'profiler': None, 'n': 0}}


def _bench_profile_switch(signum=None, frame=None):
    profiler = _bench_profile['profiler']
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats('{prefix}.%d' % _bench_profile['n'])
        _bench_profile['n'] += 1
    _bench_profile['profiler'] = _bench_cprofile.Profile({timer})
    _bench_profile['profiler'].enable()


def _bench_profile_start():
    _bench_signal.signal(_bench_signal.SIGUSR2, _bench_profile_switch)
    _bench_profile_switch()


# master.cfg is read in a thread: profile the reactor's thread, from the moment it runs
_bench_reactor.callFromThread(_bench_profile_start)
"""

PLUGIN = ("buildbot_msgproto", "buildbot_worker_msgproto")
#: cProfile timers: wall-clock (the default, cheap; time waiting in epoll is taken off in
#: the report) or the thread's CPU time (exact, but a system call per event: a master
#: under profile is several times slower, which changes what a burst of logins does).
TIMERS = {"wall": "", "cpu": "_bench_ptime.thread_time"}
#: Functions in which the reactor waits for work (their time is idle, not CPU).
IDLE = ("<method 'poll' of 'select.epoll' objects>",)
#: Functions whose call counts the report prints (substring of "file:line(name)").
COUNTED = (
    ("Builder.attached", "process/builder.py", "(attached)"),
    ("ComparableMixin.__eq__", "buildbot/util/__init__.py", "(__eq__)"),
    ("AbstractWorker.attached", "worker/base.py", "(attached)"),
    ("MsgConnection.remoteSetBuilderList", "buildbot_msgproto/connection.py",
     "(remoteSetBuilderList)"),
    ("AbstractWorker.updateWorker (worker info to the DB)", "worker/base.py",
     "(updateWorker)"),
    ("BotMaster.getBuildersForWorker", "process/botmaster.py", "(getBuildersForWorker)"),
    ("Builder.getBuilderId", "process/builder.py", "(getBuilderId)"),
    ("MsgDispatcher.credentials_for", "buildbot_msgproto/manager.py", "(credentials_for)"),
    ("ScramCredentials.from_password (PBKDF2)", "protocol/auth.py", "(from_password)"),
    ("maybeStartBuildsForWorker", "process/botmaster.py", "(maybeStartBuildsForWorker)"),
)


def owner_of(filename: str) -> str | None:
    """'plugin', 'pb protocol', 'buildbot' or None (a library, or built-in).  Buildbot's
    PB and msgpack connections and Twisted's PB are "pb protocol": the counterpart of
    the plugin when a stock master is profiled."""
    path = filename.replace("\\", "/")
    if any(f"/{p}/" in path for p in PLUGIN):
        return "plugin"
    if "/buildbot/worker/protocols/" in path or "/twisted/spread/" in path:
        return "pb protocol"
    if "/buildbot/" in path:  # buildbot_worker's paths do not contain it
        return "buildbot"
    return None


def attribute(stats: pstats.Stats, unowned: dict[Any, float] | None = None,
              by_function: dict[Any, float] | None = None) -> dict[str, float]:
    """Own time of every function, put on its owner (see the module doc); ``unowned``
    collects, per function, the time no owner called; ``by_function``, per plugin or
    Buildbot function, its own time plus the library time put on it."""
    raw = stats.stats  # type: ignore[attr-defined]
    memo: dict[Any, dict[Any, float]] = {}
    busy: set = set()  # functions on the current path: recursive edges are skipped
    nobody = ("reactor / libraries", None)

    def shares(func: Any) -> dict[Any, float]:
        """Fractions of ``func``'s time per (owner, owning function), by its callers."""
        owner = owner_of(func[0])
        if owner is not None:
            return {(owner, func): 1.0}
        if func in memo:
            return memo[func]
        callers = {caller: edge for caller, edge in raw.get(func, (0, 0, 0, 0, {}))[4].items()
                   if caller not in busy and caller != func}
        total = sum(edge[2] for edge in callers.values())
        if not callers or total <= 0:
            return {nobody: 1.0}
        busy.add(func)
        out: dict[Any, float] = defaultdict(float)
        for caller, edge in callers.items():
            for who, fraction in shares(caller).items():
                out[who] += fraction * edge[2] / total
        busy.discard(func)
        memo[func] = dict(out)
        return memo[func]

    totals: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, _callers) in raw.items():
        for (who, owning), fraction in shares(func).items():
            totals[who] += tt * fraction
            if owning is None and unowned is not None:
                unowned[func] = unowned.get(func, 0.0) + tt * fraction
            if owning is not None and by_function is not None:
                by_function[owning] = by_function.get(owning, 0.0) + tt * fraction
    return dict(totals)


def top_functions(stats: pstats.Stats, owner: str, n: int = 12, own: bool = False
                  ) -> list[tuple[float, int, str]]:
    """The ``n`` functions of ``owner`` with the most cumulative (``own``: own) time."""
    out = []
    for func, (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if owner_of(func[0]) == owner:
            short = func[0].split("site-packages/")[-1].split("wt-speed/")[-1]
            out.append((tt if own else ct, nc, f"{short}:{func[1]}({func[2]})"))
    return sorted(out, reverse=True)[:n]


def counts(stats: pstats.Stats) -> list[tuple[str, int, float]]:
    out = []
    for label, file_part, name_part in COUNTED:
        calls, cum = 0, 0.0
        for func, (_cc, nc, _tt, ct, _c) in stats.stats.items():  # type: ignore[attr-defined]
            if file_part in func[0] and f"({func[2]})" == name_part:
                calls += nc
                cum += ct
        out.append((label, calls, cum))
    return out


def report(path: str, title: str, extra: str = "", per: int | None = None) -> str:
    stats = pstats.Stats(path)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    unowned: dict[Any, float] = {}
    by_function: dict[Any, float] = {}
    owners = attribute(stats, unowned, by_function)
    idle = sum(v[2] for k, v in stats.stats.items()  # type: ignore[attr-defined]
               if k[2] in IDLE)
    total -= idle
    owners["reactor / libraries"] = owners.get("reactor / libraries", 0.0) - idle
    lines = [f"== {title} ({path})", extra,
             f"profiled reactor-thread time, without {idle:.2f} s waiting in epoll (with "
             f"cProfile's overhead): {total:.2f} s"
             + (f" ({total / per * 1000:.1f} ms per item, {per} items)" if per else "")]
    for who in ("plugin", "pb protocol", "buildbot", "reactor / libraries"):
        value = owners.get(who, 0.0)
        share = value / total if total else 0
        each = f", {value / per * 1000:.2f} ms per item" if per else ""
        lines.append(f"  {who:<22}{value:8.2f} s {share:6.1%}{each}")
    lines.append("  calls of interest (count, cumulative s):")
    for label, calls, cum in counts(stats):
        lines.append(f"    {label:<52}{calls:>10}{cum:9.2f}")
    for who in ("plugin", "pb protocol", "buildbot"):
        for own in (False, True):
            top = top_functions(stats, who, own=own)
            if not top:
                continue
            lines.append(f"  top {who} functions by {'own' if own else 'cumulative'} time "
                         "(s, calls):")
            for seconds, nc, name in top:
                lines.append(f"    {seconds:8.3f} {nc:>9}  {name}")
    for who in ("plugin", "buildbot"):
        lines.append(f"  top {who} functions by own time plus the library time they called "
                     "(s):")
        mine = [(v, k) for k, v in by_function.items() if owner_of(k[0]) == who]
        for value, func in sorted(mine, reverse=True)[:10]:
            short = func[0].split("site-packages/")[-1].split("wt-speed/")[-1]
            lines.append(f"    {value:8.2f}  {short}:{func[1]}({func[2]})")
    lines.append("  top functions of 'reactor / libraries' (own s):")
    for func, value in sorted(unowned.items(), key=lambda kv: -kv[1])[:8]:
        short = func[0].split("site-packages/")[-1].split("lib/python3")[-1]
        lines.append(f"    {value:8.2f}  {short}:{func[1]}({func[2]})")
    return "\n".join(line for line in lines if line is not None)


# --------------------------------------------------------------------------------------
def thread_cpu(pid: int) -> tuple[float, float]:
    """(all threads, reactor thread) user+system CPU seconds of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        with open(path, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return read(f"/proc/{pid}/stat"), read(f"/proc/{pid}/task/{pid}/stat")


class Profiled:
    """A master whose reactor thread is profiled (PROFILER_PY) in phases."""

    def __init__(self, master: Master, prefix: str) -> None:
        self.master = master
        self.prefix = prefix
        self.n = 0
        self.cpu = thread_cpu(master.pid) if master.pid else (0.0, 0.0)

    def switch(self) -> tuple[str, float, float]:
        """Save the running profile; returns (file, CPU s of all threads, of the reactor)."""
        path = f"{self.prefix}.{self.n}"
        os.kill(self.master.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master did not write {path}")
            time.sleep(0.05)
        time.sleep(0.5)  # dump_stats writes the file in one go; let it finish
        self.n += 1
        cpu = thread_cpu(self.master.pid)
        used = (cpu[0] - self.cpu[0], cpu[1] - self.cpu[1])
        self.cpu = cpu
        return path, used[0], used[1]


def with_profiler(cfg: str, prefix: str, timer: str) -> str:
    """``cfg`` (a master.cfg) with PROFILER_PY at its top, before anything else."""
    head, _, rest = cfg.partition("c = BuildmasterConfig")
    return (head + PROFILER_PY.format(prefix=prefix, timer=TIMERS[timer])
            + "\nc = BuildmasterConfig" + rest)


def attach(args: argparse.Namespace, workdir: str) -> list[str]:
    proto = PROTOS[args.protocol]
    port, www = free_port(), free_port()
    names = [f"mw{i:03d}" for i in range(1, args.workers + 1)]
    events = os.path.join(workdir, "events.log")
    prefix = os.path.join(workdir, "profile")
    cfg = make_master_cfg(proto.spec.protocols_py, [proto.spec.master_worker_py(n, PASSWD)
                                                    for n in names], port, www,
                          bench_cfg.many_builders_py() + bench_cfg.recorder_py(events),
                          extra_py=proto.master_extra_py)
    cfg = with_profiler(cfg, prefix, args.timer)
    master = Master(os.path.join(workdir, "master"), cfg, www_port=www, master_port=port)
    out = []
    procs: list[subprocess.Popen] = []
    try:
        master.create()
        t0 = time.monotonic()
        master.start(600)
        started_in = time.monotonic() - t0
        prof = Profiled(master, prefix)
        prof.cpu = (0.0, 0.0)  # since the process started
        path, cpu_all, cpu_main = prof.switch()
        out.append(report(path, f"master start, {args.workers} workers configured "
                                f"({args.protocol})",
                          f"buildbot start -> REST answers: {started_in:.1f} s; master CPU "
                          f"{cpu_all:.1f} s (reactor thread {cpu_main:.1f} s, other threads "
                          f"{cpu_all - cpu_main:.1f} s)", per=args.workers))
        root = os.path.join(workdir, "workers")
        os.makedirs(root, exist_ok=True)
        env = dict(os.environ)
        env.update(SUBPROCESS_ENV)
        cmd = [sys.executable, os.path.join(HERE, "many_workers.py"), "--protocol",
               proto.many_workers_protocol, "--port", str(port), "--root", root,
               "--passwd", PASSWD, "--count", str(args.workers)]
        with open(os.path.join(root, "console.log"), "ab") as console:
            procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                          stdout=console, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        t0 = time.time()
        deadline = time.monotonic() + args.limit
        attached: set = set()
        while time.monotonic() < deadline:
            _connected, attached, _failed = _read_events(events, 0)
            if len(attached) >= args.workers or procs[0].poll() is not None:
                break
            time.sleep(0.5)
        took = time.time() - t0
        workers_cpu = cpu_seconds(procs[0].pid)
        path, cpu_all, cpu_main = prof.switch()
        out.append(report(path, f"attach burst of {args.workers} workers ({args.protocol})",
                          f"{len(attached)}/{args.workers} attached in {took:.1f} s; master CPU "
                          f"{cpu_all:.1f} s (reactor thread {cpu_main:.1f} s, other threads "
                          f"{cpu_all - cpu_main:.1f} s); workers' process CPU "
                          f"{workers_cpu or 0:.1f} s", per=args.workers))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        master.stop(60)
    return out


def steps(args: argparse.Namespace, workdir: str) -> list[str]:
    proto = PROTOS[args.protocol]
    port, www = free_port(), free_port()
    prefix = os.path.join(workdir, "profile")
    builders = bench_cfg.HELPERS_PY + f"""
c['builders'].append(util.BuilderConfig(
    name='steps', workernames=WORKER_NAMES, factory=util.BuildFactory(
        [BenchMark('bench_t0')]
        + [steps.ShellCommand(name='s%04d' % i, command=['true']) for i in range({args.steps})]
        + [BenchMark('bench_t1')])))
"""
    cfg = make_master_cfg(proto.spec.protocols_py, proto.spec.master_worker_py("w1", PASSWD),
                          port, www, builders, extra_py=proto.master_extra_py)
    cfg = with_profiler(cfg, prefix, args.timer)
    master = Master(os.path.join(workdir, "master"), cfg, www_port=www, master_port=port)
    worker = Worker.for_protocol(proto.spec, os.path.join(workdir, "worker"), port, "w1",
                                 PASSWD)
    out = []
    try:
        create_pair(master, worker, proto)
        worker.start(30)
        master.wait_worker_connected("w1", 60, worker)
        rig = Rig(master, worker)
        rig.run("steps", 600)  # warm-up
        prof = Profiled(master, prefix)
        prof.switch()  # drop everything until now
        for rep in range(args.repeat):
            _build, props = rig.run("steps", 600)
            per_step = (float(props["bench_t1"]) - float(props["bench_t0"])) / args.steps
            path, cpu_all, cpu_main = prof.switch()
            out.append(report(path, f"build of {args.steps} x ShellCommand true "
                                    f"({args.protocol}), run {rep + 1}",
                              f"wall {per_step * 1000:.1f} ms per step; master CPU "
                              f"{cpu_all / args.steps * 1000:.1f} ms per step (reactor "
                              f"thread {cpu_main / args.steps * 1000:.1f} ms)",
                              per=args.steps))
    finally:
        worker.stop(30)
        master.stop(60)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="scenario", required=True)
    a = sub.add_parser("attach")
    a.add_argument("--workers", type=int, default=2000)
    a.add_argument("--limit", type=float, default=600.0, help="seconds to wait for attach")
    s = sub.add_parser("steps")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--repeat", type=int, default=3)
    for p in (a, s):
        p.add_argument("--protocol", choices=("msg", "pb"), default="msg")
        p.add_argument("--timer", choices=sorted(TIMERS), default="wall")
        p.add_argument("--workdir", default=None, help="kept if given (profiles are there)")
    r = sub.add_parser("report")
    r.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    if args.scenario == "report":
        for path in args.files:
            print(report(path, os.path.basename(path)))
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix="msgproto-profile-")
    os.makedirs(workdir, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f}; work dir {workdir}", flush=True)
    try:
        for text in (attach if args.scenario == "attach" else steps)(args, workdir):
            print(text, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
