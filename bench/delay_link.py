#!/usr/bin/env python
"""File transfers over a delayed link, as a fraction of the raw link through the same proxy.

    .venv/bin/python bench/delay_link.py [--rtt 0,20,100,200] [--mib 64] [--repeat 3] \
        [--rate-mbit N] [--columns pb,msgpack,msg/tcp,msg/amp,msg/websocket,msg/zmq,msg/amqp]

Per column (pb, msgpack = stock msgpack_experimental_v7, msg/<transport> = this package): one
fresh master (sqlite) and one worker that reaches it through ``master_tests/faultproxy.py``
(for msg/amqp: the worker reaches the RabbitMQ broker through it).  Per RTT the proxy's delay
is set and the worker process is started afresh, so that every RTT begins with a new session
(a cold transfer window); after a warm-up build, ``--repeat`` rounds of:

* ``upload``: FileUpload of a random file (sha256 of what the master wrote checked);
* ``download``: FileDownload of a random file (the worker reports sha256 and size);
* ``dir``: DirectoryUpload of a directory of ``--dir-files`` small files (1-4 KiB, made by a
  seeded generator; the master's unpacked tree is compared file by file);
* ``fixed``: FileUpload and FileDownload of a 1-byte file: what a transfer step costs
  besides its bytes (the command's round trips).

Each transfer is timed inside the master (the step's ``run()``).  The raw link is measured
by ``bench/raw_link.py``'s plain sockets through a proxy with the same delay, for the same
byte counts, in the same run; ``raw`` = raw seconds / our seconds (1.0 = as fast as plain
TCP).  ``stream`` = raw streaming rate over ours once each side's fixed round trips are
taken off (raw: one RTT; ours: the ``fixed`` step of the same direction).

pb and msgpack move one block per round trip (16 KiB for downloads and directories, 256
KiB for file uploads), so at RTT > 0 they transfer ``--baseline-mib`` instead of ``--mib``
(their rate is RTT-bound and does not depend on the size); MiB/s and the fractions are
comparable, seconds are not.  A column ``NAME@VENV`` runs NAME with the master and worker of
another virtualenv (e.g. ``msg/tcp@/tmp/before/.venv``: the code before a change, in the same
run); ``NAME+W`` runs msg with a transfer window of at most W MiB on both sides
(``max_transfer_window`` W MiB, ``max_replay_bytes`` 2W MiB; default 64 and 128).
``--rate-mbit N`` caps the proxy at N Mbit/s (10**6 bits) in each direction
(``FaultProxy.set_rate``) for the raw link and every column alike; 0, the default, is no
cap (then the raw link streams at whatever the proxy process manages, 1-2 GiB/s, a
bandwidth-delay product no real long path has).  Everything runs on 127.0.0.1; every
process started here is stopped by its pid. See bench/README.rst ("Transfers over a
delayed link", "... with a bandwidth cap").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_cfg  # noqa: E402
import raw_link  # noqa: E402
import transports_cfg  # noqa: E402
from run_bench import EMPTY_SHA256  # noqa: E402
from run_bench import PROTOS  # noqa: E402
from run_bench import TRANSPORT_PROTOS  # noqa: E402
from run_bench import Proto  # noqa: E402
from run_bench import Rig  # noqa: E402
from run_bench import create_pair  # noqa: E402
from run_bench import loadavg  # noqa: E402
from run_bench import write_random_file  # noqa: E402

from master_tests.e2e import harness  # noqa: E402
from master_tests.e2e.harness import Master  # noqa: E402
from master_tests.e2e.harness import Worker  # noqa: E402
from master_tests.e2e.harness import free_port  # noqa: E402
from master_tests.e2e.harness import make_master_cfg  # noqa: E402
from master_tests.e2e.harness import sha256_file  # noqa: E402
from master_tests.faultproxy import FaultProxy  # noqa: E402

MiB = 1 << 20
PASSWD = "pw"
KINDS = ("upload", "download", "dir")

#: The directory generator, run by the worker (in a ShellCommand) and by this script: the
#: same seed gives the same files.  Sizes 1-4 KiB; 20 files per subdirectory.
DIR_PROGRAM = """\
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(12)
for i in range(count):
    d = os.path.join(root, 'd%03d' % (i // 20))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'f%05d.bin' % i), 'wb') as f:
        f.write(rng.randbytes(rng.randint(1024, 4096)))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tree_digest(root: str) -> tuple[str, int, int]:
    """(sha256 over relative paths and contents, files, bytes) of a directory tree."""
    h, files, size = hashlib.sha256(), 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            h.update(os.path.relpath(path, root).encode() + b"\0" + data)
            files += 1
            size += len(data)
    return h.hexdigest(), files, size


def tar_size(root: str) -> int:
    """Bytes of the uncompressed tar stream DirectoryUpload sends for ``root``."""
    import tarfile
    with tempfile.TemporaryFile() as f:
        with tarfile.open(mode="w", fileobj=f) as archive:
            archive.add(root, "")
        return f.tell()


def builders_py(files: dict[str, str], upload_dest: str, dir_dest: str, dir_files: int,
                python: str) -> str:
    """Builders up-<size> / down-<size> for every master-side source in ``files`` and 'dir'."""
    out = [bench_cfg.HELPERS_PY, f"""
def _bench_builder(name, factory_steps):
    c['builders'].append(util.BuilderConfig(
        name=name, workernames=WORKER_NAMES, factory=util.BuildFactory(factory_steps)))

_bench_builder('warmup', [
    steps.ShellCommand(name='mkfile', command='head -c 100000 /dev/urandom > small.bin'),
    steps.FileUpload(name='up', workersrc='small.bin', masterdest={upload_dest!r}),
    steps.FileDownload(name='down', mastersrc={files["tiny"]!r}, workerdest='small2.bin'),
])
"""]
    for label, src in files.items():
        out.append(bench_cfg.transfer_builders_py(f"up-{label}", f"down-{label}",
                                                  os.path.getsize(src), upload_dest, src))
    out.append(f"""
_bench_builder('dir', [
    steps.ShellCommand(name='make-dir',
                       command='rm -rf tree && {python} -c "$BENCH_PROG" tree {dir_files}',
                       env={{'BENCH_PROG': {DIR_PROGRAM!r}}}),
    bench_timed(steps.DirectoryUpload)(
        name='dirupload', bench_prop='bench_dt', workersrc='tree', masterdest={dir_dest!r}),
])
""")
    return "".join(out)


@dataclasses.dataclass
class Samples:
    seconds: list[float] = dataclasses.field(default_factory=list)
    size: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


class DelayBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.rtts = [float(r) for r in args.rtt.split(",")]
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="msgproto-delay-")
        os.makedirs(self.workdir, exist_ok=True)
        self.python = sys.executable
        # master-side download sources and their digests
        self.sizes = {"big": int(args.mib * MiB), "base": int(args.baseline_mib * MiB), "tiny": 1}
        self.sources: dict[str, str] = {}
        self.sha: dict[str, str] = {}
        for label, size in self.sizes.items():
            path = os.path.join(self.workdir, f"src-{label}.bin")
            self.sha[label] = write_random_file(path, size)
            self.sources[label] = path
        gen = os.path.join(self.workdir, "expected-tree")
        shutil.rmtree(gen, ignore_errors=True)
        _run_generator(gen, args.dir_files)
        self.dir_digest = tree_digest(gen)
        self.dir_tar_bytes = tar_size(gen)
        shutil.rmtree(gen)
        # results[column][rtt][kind] -> Samples; fixed[column][rtt][direction] -> Samples
        self.results: dict[str, dict[float, dict[str, Samples]]] = {}
        self.raw: dict[float, dict[str, dict[int, float]]] = {}  # rtt -> dir -> bytes -> s
        self.broker: transports_cfg.BenchBroker | None = None
        self.load: list[float] = []

    # ------------------------------------------------------------------ sizes
    def label_for(self, column: str, rtt: float) -> str:
        if column.partition("@")[0] in ("pb", "msgpack") and rtt > 0:
            return "base"
        return "big"

    # ------------------------------------------------------------------ raw link
    def measure_raw(self) -> None:
        server = raw_link.Server()
        try:
            for rtt in self.rtts:
                sizes = sorted({self.sizes["big"], self.sizes["base"], self.dir_tar_bytes,
                                1})
                out: dict[str, dict[int, float]] = {"upload": {}, "download": {}}
                for size in sizes:
                    for direction, (times, _cpu) in raw_link.measure(
                            server, rtt, size, self.a.repeat, self.a.rate_mbit).items():
                        out[direction][size] = statistics.median(times)
                self.raw[rtt] = out
                log(f"raw link at {rtt:g} ms: " + ", ".join(
                    f"{d} {s / MiB:.1f} MiB {t:.3f}s" for d in out for s, t in out[d].items()
                    if s > 1))
        finally:
            server.listener.close()

    # ------------------------------------------------------------------ one column
    def run_column(self, column: str) -> None:
        """Run one column; ``NAME@VENV`` with the executables of another virtualenv,
        ``NAME+W`` with a transfer window of at most W MiB."""
        name, _, venv = column.partition("@")
        name, _, window = name.partition("+")
        self.window_mib = int(window) if window else None
        saved = harness.VENV_BIN
        label = column
        if venv:
            harness.VENV_BIN = os.path.join(os.path.abspath(venv), "bin")
            label = f"{name}@{os.path.basename(os.path.dirname(os.path.abspath(venv)))}"
        try:
            self._run_column(label, self._with_window(TRANSPORT_PROTOS.get(name)
                                                      or PROTOS[name]))
        finally:
            harness.VENV_BIN = saved

    def _with_window(self, proto: Proto) -> Proto:
        """``proto`` with the ``+W`` limits on the master and in the worker's tac."""
        if self.window_mib is None:
            return proto
        window, replay = self.window_mib * MiB, 2 * self.window_mib * MiB
        return dataclasses.replace(
            proto,
            master_extra_py=proto.master_extra_py + (
                f"\nc['protocols']['msg'].update(max_transfer_window={window}, "
                f"max_replay_bytes={replay})\n"),
            worker_tac_patch=proto.worker_tac_patch + (
                "from buildbot_worker_msgproto.protocol.limits import Limits\n"
                f"BENCH_LIMITS = Limits(max_transfer_window={window}, "
                f"max_replay_bytes={replay})\n"))

    def _run_column(self, column: str, proto: Proto) -> None:
        cdir = os.path.join(self.workdir, column.replace("/", "-").replace("@", "-"))
        os.makedirs(cdir, exist_ok=True)
        port, www = free_port(), free_port()
        ep = None
        if proto.transport is not None:
            ep = transports_cfg.endpoint(proto.transport, port, self.broker)
        target = ep.port if ep is not None else port
        upload_dest = os.path.join(cdir, "upload-dest.bin")
        dir_dest = os.path.join(cdir, "dir-dest")
        cfg = make_master_cfg(
            proto.spec.protocols_py if ep is None else transports_cfg.master_protocols_py(ep),
            proto.spec.master_worker_py("w1", PASSWD), port, www,
            builders_py(self.sources, upload_dest, dir_dest, self.a.dir_files, self.python),
            extra_py=proto.master_extra_py)
        master = Master(os.path.join(cdir, "master"), cfg, www_port=www, master_port=port)
        proxy = FaultProxy.start("127.0.0.1", target,
                                 rate=raw_link.rate_bytes(self.a.rate_mbit))
        worker = self._worker(proto, ep, cdir, proxy.port)
        self.results[column] = {}
        try:
            create_pair(master, worker, proto)
            for rtt in self.rtts:
                proxy.set_delay(rtt / 2000)
                self.results[column][rtt] = {k: Samples() for k in
                                             (*KINDS, "fixed-upload", "fixed-download")}
                try:
                    self._run_rtt(column, rtt, master, worker, upload_dest, dir_dest)
                finally:
                    worker.stop(30)
                self.load.append(os.getloadavg()[0])
        finally:
            worker.stop(30)
            master.stop(30)
            proxy.stop()

    def _worker(self, proto: Proto, ep: Any, cdir: str, proxy_port: int) -> Worker:
        basedir = os.path.join(cdir, "worker")
        spec = proto.spec
        if ep is not None:
            spec = dataclasses.replace(spec, create_options=(
                spec.create_options + transports_cfg.create_options(ep, "w1")))
        return Worker.for_protocol(spec, basedir, proxy_port, "w1", PASSWD)

    def _run_rtt(self, column: str, rtt: float, master: Master, worker: Worker,
                 upload_dest: str, dir_dest: str) -> None:
        tag = f"{column} at {rtt:g} ms"
        worker.start(30)
        master.wait_worker_connected("w1", 60, worker)
        rig = Rig(master, worker)
        rig.run("warmup", 120)
        label = self.label_for(column, rtt)
        cells = self.results[column][rtt]
        for rep in range(self.a.repeat):
            for kind in KINDS:
                cell = cells[kind]
                if len(cell.problems) > 1:
                    continue
                try:
                    seconds, problem = getattr(self, f"m_{kind}")(rig, label, upload_dest,
                                                                  dir_dest)
                except Exception as e:  # a failed build or REST call: one sample lost
                    seconds, problem = None, f"FAILED: {type(e).__name__}: {str(e)[:300]}"
                if seconds is not None:
                    cell.seconds.append(seconds)
                    cell.size = self.dir_tar_bytes if kind == "dir" else self.sizes[label]
                if problem:
                    cell.problems.append(problem)
                log(f"{tag} rep {rep + 1} {kind}: "
                    + (f"{seconds:.3f}s" if seconds is not None else "-")
                    + (f"  {problem}" if problem else ""))
            for direction in ("upload", "download"):
                cell = cells[f"fixed-{direction}"]
                cell.size = 1
                try:
                    seconds, problem = getattr(self, f"m_{direction}")(rig, "tiny",
                                                                       upload_dest, dir_dest)
                    cell.seconds.append(seconds)
                except Exception as e:
                    problem = f"FAILED: {type(e).__name__}: {str(e)[:300]}"
                if problem:
                    cell.problems.append(problem)

    # ------------------------------------------------------------------ measurements
    def m_upload(self, rig: Rig, label: str, dest: str, _dir: str) -> tuple[float, str | None]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(dest)
        _build, props = rig.run(f"up-{label}", self._timeout(label))
        dt = float(props["bench_dt"])
        want_sha, want_size = str(props["bench_src"]).split()
        got = (sha256_file(dest), str(os.path.getsize(dest))) if os.path.exists(dest) else None
        with contextlib.suppress(FileNotFoundError):
            os.remove(dest)
        if got != (want_sha, want_size):
            return dt, f"BROKEN: master got {got}, worker sent {want_sha[:12]} {want_size}"
        return dt, None

    def m_download(self, rig: Rig, label: str, _dest: str, _dir: str
                   ) -> tuple[float, str | None]:
        _build, props = rig.run(f"down-{label}", self._timeout(label))
        dt = float(props["bench_dt"])
        got_sha, got_size = (str(props["bench_got"]).split() + ["?", "?"])[:2]
        if (got_sha, got_size) != (self.sha[label], str(self.sizes[label])):
            empty = " (an EMPTY file)" if got_sha == EMPTY_SHA256 else ""
            return dt, f"BROKEN: worker wrote {got_size} bytes{empty}"
        return dt, None

    def m_dir(self, rig: Rig, _label: str, _dest: str, dir_dest: str
              ) -> tuple[float, str | None]:
        shutil.rmtree(dir_dest, ignore_errors=True)
        _build, props = rig.run("dir", self._timeout("base") * 4)
        dt = float(props["bench_dt"])
        got = tree_digest(dir_dest) if os.path.isdir(dir_dest) else None
        shutil.rmtree(dir_dest, ignore_errors=True)
        if got != self.dir_digest:
            return dt, f"BROKEN: master tree {got}, expected {self.dir_digest}"
        return dt, None

    def _timeout(self, label: str) -> float:
        rtt = max(self.rtts) / 1000
        blocks = max(1, self.sizes[label] // (16 * 1024))
        return max(120.0, blocks * rtt * 2 + 60)

    # ------------------------------------------------------------------ report
    def rows(self) -> list[dict[str, Any]]:
        out = []
        for column, by_rtt in self.results.items():
            for rtt, cells in by_rtt.items():
                for kind in KINDS:
                    cell = cells[kind]
                    med = cell.median()
                    direction = "download" if kind == "download" else "upload"
                    raw = self.raw.get(rtt, {}).get(direction, {}).get(cell.size)
                    fixed = cells[f"fixed-{direction}"].median()
                    row = {"column": column, "rtt_ms": rtt, "kind": kind,
                           "bytes": cell.size, "seconds": med, "samples": cell.seconds,
                           "problems": cell.problems, "raw_seconds": raw,
                           "fixed_seconds": fixed}
                    if med and cell.size:
                        row["mib_s"] = cell.size / MiB / med
                        if raw:
                            row["raw_fraction"] = raw / med
                            ours = med - (fixed or 0)
                            raw_stream = raw - rtt / 1000
                            if ours > 0 and raw_stream > 0:
                                row["stream_fraction"] = raw_stream / ours
                    out.append(row)
        return out

    def render(self, rows: list[dict[str, Any]]) -> str:
        head = (f"{'column':<14}{'RTT':>6}  {'kind':<9}{'MiB':>7}{'seconds':>9}{'MiB/s':>8}"
                f"{'raw s':>8}{'raw':>7}{'fixed s':>9}{'stream':>8}  samples / problems")
        lines = [head, "-" * len(head)]
        def f(r: dict[str, Any], key: str, fmt: str) -> str:
            v = r.get(key)
            return format(v, fmt) if isinstance(v, float) else "-"

        for r in rows:
            samples = " ".join(f"{s:.3f}" for s in r["samples"])
            problems = ("; " + "; ".join(r["problems"])) if r["problems"] else ""
            lines.append(
                f"{r['column']:<14}{r['rtt_ms']:>4g}ms  {r['kind']:<9}"
                f"{r['bytes'] / MiB:>7.1f}{f(r, 'seconds', '9.3f')}{f(r, 'mib_s', '8.1f')}"
                f"{f(r, 'raw_seconds', '8.3f')}{f(r, 'raw_fraction', '7.0%')}"
                f"{f(r, 'fixed_seconds', '9.3f')}{f(r, 'stream_fraction', '8.0%')}  "
                f"{samples}{problems}")
        return "\n".join(lines)


def _run_generator(root: str, count: int) -> None:
    import subprocess
    subprocess.run([sys.executable, "-c", DIR_PROGRAM, root, str(count)], check=True,
                   timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt", default="0,20,100,200", help="RTTs in ms (default 0,20,100,200)")
    ap.add_argument("--mib", type=float, default=64.0, help="file size in MiB (default 64)")
    ap.add_argument("--baseline-mib", type=float, default=4.0,
                    help="file size for pb and msgpack at RTT > 0 (default 4)")
    ap.add_argument("--dir-files", type=int, default=1000,
                    help="files in the uploaded directory (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per RTT (default 3)")
    ap.add_argument("--rate-mbit", type=float, default=0,
                    help="bandwidth cap of the proxy in Mbit/s each way, for the raw link "
                         "and all columns (default 0: none)")
    ap.add_argument("--columns", default="pb,msgpack,msg/tcp",
                    help="comma separated: pb, msgpack, msg/<transport> (default "
                         "pb,msgpack,msg/tcp)")
    ap.add_argument("--workdir", default=None, help="default: a new temp dir, removed")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "delay.json"))
    args = ap.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    for c in columns:
        name, _, venv = c.partition("@")
        name = name.partition("+")[0]
        if name not in PROTOS and name not in TRANSPORT_PROTOS:
            ap.error(f"unknown column {c!r}")
        if venv and not os.path.exists(os.path.join(venv, "bin", "buildbot")):
            ap.error(f"no buildbot in {venv}/bin")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started
    bench = DelayBench(args)
    started = time.time()
    log(f"delay bench: columns {columns}, RTTs {bench.rtts} ms, "
        f"{raw_link.rate_label(args.rate_mbit)}, {args.mib:g} MiB "
        f"(pb/msgpack at RTT > 0: {args.baseline_mib:g} MiB), directory of "
        f"{args.dir_files} files ({bench.dir_tar_bytes / MiB:.2f} MiB as tar), "
        f"{args.repeat} rounds {loadavg()}")
    try:
        if any(c.startswith("msg/amqp") for c in columns):
            bench.broker = transports_cfg.BenchBroker(bench.workdir)
            bench.broker.start()
        bench.measure_raw()
        for column in columns:
            log(f"--- {column}")
            try:
                bench.run_column(column)
            except Exception as e:  # one column failing must not lose the others
                log(f"{column}: FAILED: {type(e).__name__}: {str(e)[:2000]}")
    finally:
        if bench.broker is not None:
            bench.broker.stop()
        if args.workdir is None:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    rows = bench.rows()
    table = bench.render(rows)
    print()
    print(f"delay bench, {raw_link.rate_label(args.rate_mbit)}, "
          f"{time.time() - started:.0f} s, load average after each RTT: "
          + " ".join(f"{x:.2f}" for x in bench.load) + f" {loadavg()}")
    print(table)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "rows": rows, "raw": {str(k): v for k, v in
                                                             bench.raw.items()},
                   "load": bench.load, "dir_tar_bytes": bench.dir_tar_bytes}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
