#!/usr/bin/env python
"""Compare Buildbot's PB, msgpack_experimental_v7 and this package's msg protocol.

    /work/venv/bin/python bench/run_bench.py [--repeat 3] [--quick] [--protocols pb,msgpack,msg]

Per repetition and protocol, one after the other (never concurrently): a fresh master (sqlite)
with one fresh worker runs the same builds (per-step overhead, 2 file transfers, a big log);
then a second fresh master with ``--workers`` configured workers sees them all start at once
from one process (bench/many_workers.py). Medians are printed as a table (see
bench/README.rst) and written to bench/results/latest.json. Only 127.0.0.1 is used; every
wait is bounded; every process started here is stopped by its id.

    /work/venv/bin/python bench/run_bench.py --per-transport [--protocols pb] \
        [--transports tcp,amp,websocket,zmq,amqp] [--scale 200,1000] [--scale-repeat 1]

measures msg over each transport instead (columns msg/tcp, msg/amp, ...; plus pb or msgpack
as a baseline if named in --protocols), each with its own fresh master and worker, and per
--scale N a fresh master with N workers started at once (master sockets, fds, RSS, CPU;
for amqp also the broker's). A private RabbitMQ broker is started for amqp. Two tables
are printed (see bench/README.rst) and written to bench/results/transports.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_cfg  # noqa: E402
import transports_cfg  # noqa: E402

from master_tests.e2e.harness import PROTOCOLS as HARNESS_PROTOCOLS  # noqa: E402
from master_tests.e2e.harness import RESULT_NAMES  # noqa: E402
from master_tests.e2e.harness import SUBPROCESS_ENV  # noqa: E402
from master_tests.e2e.harness import SUCCESS  # noqa: E402
from master_tests.e2e.harness import HarnessError  # noqa: E402
from master_tests.e2e.harness import Master  # noqa: E402
from master_tests.e2e.harness import ProtocolSpec  # noqa: E402
from master_tests.e2e.harness import Worker  # noqa: E402
from master_tests.e2e.harness import free_port  # noqa: E402
from master_tests.e2e.harness import make_master_cfg  # noqa: E402
from master_tests.e2e.harness import sha256_file  # noqa: E402
from master_tests.e2e.harness import tail  # noqa: E402
from master_tests.e2e.harness import terminate  # noqa: E402

MiB = 1 << 20
PASSWD = "pw"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Proto:
    key: str  # column name
    spec: ProtocolSpec
    many_workers_protocol: str  # --protocol of bench/many_workers.py
    master_extra_py: str = ""
    worker_tac_patch: str = ""  # python inserted into buildbot.tac after the Worker import
    transport: str | None = None  # msg over this transport (--per-transport columns)


PROTOS: dict[str, Proto] = {
    "pb": Proto("pb", HARNESS_PROTOCOLS["pb"], "pb"),
    "msgpack": Proto(
        "msgpack",
        ProtocolSpec(
            name="msgpack",
            # the stock msgpack dispatcher accepts only a bare port number (binds 0.0.0.0;
            # the benchmark still connects over 127.0.0.1 only)
            protocols_py="{'msgpack_experimental_v7': {'port': {PORT}}}",
            worker_py="worker.Worker({NAME}, {PASSWD})",
            create_options=("--protocol", "msgpack_experimental_v7"),
        ),
        "msgpack_experimental_v7",
        master_extra_py=bench_cfg.MSGPACK_MASTER_QUIET_PY,
        worker_tac_patch=bench_cfg.MSGPACK_WORKER_QUIET_PY,
    ),
    "msg": Proto("msg", HARNESS_PROTOCOLS["msg"], "msg"),
    # msg with session resume off: what acks and replay buffers cost (bench/resume.py)
    "msg-noresume": Proto("msg-noresume", HARNESS_PROTOCOLS["msg"], "msg",
                          master_extra_py="c['protocols']['msg']['resume_window'] = 0\n"),
}
ALIASES = {"msgpack_experimental_v7": "msgpack"}
# --per-transport: one column per msg transport, named msg/<transport>
TRANSPORT_PROTOS: dict[str, Proto] = {
    f"msg/{t}": Proto(f"msg/{t}", HARNESS_PROTOCOLS["msg"], "msg", transport=t)
    for t in transports_cfg.TRANSPORTS
}


def proto_for(key: str) -> Proto:
    return TRANSPORT_PROTOS[key] if key in TRANSPORT_PROTOS else PROTOS[key]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Metric:
    key: str
    label: str
    unit: str  # 's', 's/step', 'MiB', 'fds', 'count'
    ratio: bool = True  # print msg/pb, msg/msgpack
    throughput_bytes: int = 0  # if set, cells also show MiB/s
    workers: int = 0  # --per-transport scale metrics: for this many workers


@dataclasses.dataclass
class Cell:
    samples: list[float] = dataclasses.field(default_factory=list)
    broken: list[str] = dataclasses.field(default_factory=list)  # wrong bytes / lines
    failed: list[str] = dataclasses.field(default_factory=list)  # errors, timeouts
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.failed and not self.samples and not self.broken:
            return "FAILED"
        if self.broken:
            return "BROKEN"
        if self.failed:
            return "PARTIAL"
        if not self.samples:
            return "n/a"
        return "ok"

    @property
    def median(self) -> float | None:
        """Median of the samples; for PARTIAL over the successful repetitions only."""
        if self.status not in ("ok", "PARTIAL") or not self.samples:
            return None
        return statistics.median(self.samples)


class Results:
    def __init__(self, metrics: list[Metric], protos: list[str]) -> None:
        self.metrics = metrics
        self.protos = protos
        self.cells = {(m.key, p): Cell() for m in metrics for p in protos}
        self.notes: list[str] = []

    def cell(self, key: str, proto: str) -> Cell:
        return self.cells[(key, proto)]

    def add(self, key: str, proto: str, value: float) -> None:
        self.cell(key, proto).samples.append(float(value))

    def broken(self, key: str, proto: str, why: str) -> None:
        self.cell(key, proto).broken.append(why)

    def fail(self, key: str, proto: str, why: str) -> None:
        self.cell(key, proto).failed.append(why)


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class PeakRss:
    """Peak RSS (MiB) of ``pid`` over a with-block: resets the kernel's high-water mark
    (VmHWM, via /proc/<pid>/clear_refs) and reads it at the end; falls back to sampling
    VmRSS every 20 ms if the reset is not permitted."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_mib: float | None = None
        self._hwm = False
        self._stop = threading.Event()
        self._max_kib = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        if self.pid is None:
            return self
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            self._hwm = True
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            v = proc_status_kib(self.pid, "VmRSS") or 0
            self._max_kib = max(self._max_kib, v)

    def __exit__(self, *exc: Any) -> None:
        if self.pid is None:
            return
        if self._hwm:
            v = proc_status_kib(self.pid, "VmHWM")
            self.peak_mib = v / 1024 if v else None
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(1)
            self.peak_mib = self._max_kib / 1024 if self._max_kib else None


# --------------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------------


class BuildError(Exception):
    """A build did not end in SUCCESS (or did not end in time)."""


class PhaseAbort(Exception):
    """The master/worker pair is no longer usable (worker gone, build stuck)."""


def log_excerpt(master: Master, logid: int, num_lines: int, lines: int = 12) -> str:
    first = max(0, num_lines - lines)
    try:
        doc = master.api_get(f"logs/{logid}/contents", offset=first, limit=lines)
    except (HarnessError, OSError) as e:
        return f"(log {logid}: {e})"
    chunks = doc.get("logchunks") or []
    return "".join(c["content"] for c in chunks)


def build_summary(master: Master, buildid: int) -> str:
    """Like harness.build_summary but fetches only the tail of each log (logs can be huge)."""
    try:
        b = master.get_build(buildid)
        out = [f"build {buildid}: {RESULT_NAMES.get(b['results'])} - {b['state_string']}"]
        for s in master.build_steps(buildid):
            res = s["results"]
            if res in (SUCCESS, None) and s["complete"]:
                continue
            out.append(
                f"  step {s['number']} {s['name']!r}: {RESULT_NAMES.get(res)}"
                f" - {s['state_string']}"
            )
            for lg in master.step_logs(s["stepid"]):
                text = log_excerpt(master, lg["logid"], lg["num_lines"])
                out.append(f"    log {lg['name']!r} ({lg['num_lines']} lines), tail:")
                out.extend("      | " + ln for ln in text.splitlines())
        return "\n".join(out)
    except Exception as e:  # diagnostics must not hide the original problem
        return f"(could not summarize build {buildid}: {e!r})"


class Rig:
    """One master with one worker 'w1'."""

    def __init__(self, master: Master, worker: Worker) -> None:
        self.master = master
        self.worker = worker

    def ensure_worker(self) -> None:
        if not self.worker.is_running:
            raise PhaseAbort(
                f"worker process exited ({self.worker.popen.returncode})\n"
                + self.worker.diagnostics(40)
            )
        try:
            self.master.wait_worker_connected("w1", 30.0, self.worker)
        except HarnessError as e:
            raise PhaseAbort(f"worker w1 not connected: {e}") from None

    def run(self, builder: str, timeout: float) -> tuple[dict, dict[str, Any]]:
        """Run one build; returns (build dict, {property: value}). Raises BuildError, or
        PhaseAbort if the worker process dies meanwhile."""
        self.ensure_worker()
        brid = self.master.force_build(builder)
        build = self._wait(brid, builder, timeout)
        props = self.master.build_properties(build["buildid"])
        if build["results"] != SUCCESS:
            raise BuildError(
                f"build of {builder!r} ended {RESULT_NAMES.get(build['results'])}\n"
                + build_summary(self.master, build["buildid"])
            )
        return build, props

    def _wait(self, brid: int, builder: str, timeout: float) -> dict:
        """Poll (every 0.5 s, to load the master as little as possible) until build request
        ``brid`` is complete; the timed figures come from inside the master anyway."""
        deadline = time.monotonic() + timeout
        while True:
            br = self.master.api_get(f"buildrequests/{brid}")["buildrequests"][0]
            if br["complete"]:
                builds = self.master.builds_for_request(brid)
                if not builds:
                    raise BuildError(f"build request {brid} for {builder!r} completed "
                                     f"({RESULT_NAMES.get(br['results'])}) without a build")
                if builds[-1]["complete"]:
                    return builds[-1]
            if not self.worker.is_running:
                self._abandon(brid)
                raise PhaseAbort(
                    f"worker process exited ({self.worker.popen.returncode}) during a build of "
                    f"{builder!r}\n" + self.worker.diagnostics(40)
                )
            if time.monotonic() >= deadline:
                builds = self.master.builds_for_request(brid)
                summary = build_summary(self.master, builds[-1]["buildid"]) if builds else ""
                self._abandon(brid)
                raise BuildError(
                    f"build of {builder!r} did not finish within {timeout:.0f}s\n{summary}\n"
                    + self.worker.diagnostics(25) + "\n" + self.master.diagnostics(25)
                )
            time.sleep(0.5)

    def _abandon(self, brid: int) -> None:
        """Stop a stuck build so that it cannot disturb the next measurement."""
        builds = self.master.builds_for_request(brid)
        if not builds:
            with contextlib.suppress(HarnessError):
                self.master.jsonrpc(f"buildrequests/{brid}", "cancel", reason="bench timeout")
            return
        bid = builds[-1]["buildid"]
        with contextlib.suppress(HarnessError):
            self.master.stop_build(bid, "bench timeout")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(HarnessError):
                if self.master.get_build(bid)["complete"]:
                    return
            time.sleep(0.5)
        raise PhaseAbort(
            f"build {bid} did not stop within 60 s after a timeout\n"
            + build_summary(self.master, bid)
        )


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Params:
    repeat: int
    steps: int
    file_bytes: int
    log_bytes: int
    workers: int
    attach_limit: float
    protos: list[str]
    order: str
    pb_backlog: int | None
    workdir: str
    python: str
    # --per-transport (empty: the classic pb/msgpack/msg comparison)
    transports: list[str] = dataclasses.field(default_factory=list)
    scale: list[int] = dataclasses.field(default_factory=list)
    scale_repeat: int = 0
    workers_per_proc: int = 1000

    @property
    def log_lines(self) -> int:
        return bench_cfg.log_lines_for(self.log_bytes)


def human_bytes(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000} MB"
    return f"{n} B"


def make_metrics(p: Params) -> list[Metric]:
    if p.transports:
        return make_transport_metrics(p)
    fsz = human_bytes(p.file_bytes)
    lsz = human_bytes(p.log_bytes)
    return [
        Metric("step_shell", f"per-step overhead, {p.steps} x ShellCommand true", "s/step"),
        Metric("step_stat", f"per-step overhead, {p.steps} x FileExists (stat)", "s/step"),
        Metric("upload", f"FileUpload {fsz} (worker->master)", "s", throughput_bytes=p.file_bytes),
        Metric(
            "download", f"FileDownload {fsz} (master->worker)", "s", throughput_bytes=p.file_bytes
        ),
        Metric("bigout", f"{lsz} stdout log ({p.log_lines} lines)", "s",
               throughput_bytes=p.log_lines * bench_cfg.LOG_LINE_BYTES),
        Metric("rss_upload", "master peak RSS during upload build", "MiB"),
        Metric("rss_download", "master peak RSS during download build", "MiB"),
        Metric("rss_bigout", "master peak RSS during log build", "MiB"),
        Metric("attach_time", f"{p.workers} workers: time until all connected", "s"),
        Metric("attach_full", f"{p.workers} workers: time until all fully attached", "s"),
        Metric("attach_count", f"{p.workers} workers: attached within {p.attach_limit:.0f} s",
               "count", ratio=False),
        Metric("idle_rss", f"master RSS, {p.workers} workers configured, none attached", "MiB"),
        Metric("attach_rss", f"master RSS, {p.workers} workers attached", "MiB"),
        Metric("attach_fds", f"master open fds, {p.workers} workers attached", "fds"),
    ]


SINGLE_KEYS = ["step_shell", "step_stat", "upload", "download", "bigout",
               "rss_upload", "rss_download", "rss_bigout"]
MANY_KEYS = ["attach_time", "attach_full", "attach_count", "idle_rss", "attach_rss", "attach_fds"]
# --per-transport: MANY_KEYS plus these, each suffixed with '@<workers>'
SCALE_EXTRA_KEYS = ["master_start", "attach_sockets", "attach_inbound", "attach_cpu",
                    "workers_cpu"]
BROKER_KEYS = ["broker_sockets", "broker_rss"]  # amqp only


def make_transport_metrics(p: Params) -> list[Metric]:
    """Metrics of --per-transport: the single-worker builds, then per --scale N the
    many-workers figures (keys suffixed '@N')."""
    fsz = human_bytes(p.file_bytes)
    lsz = human_bytes(p.log_bytes)
    out = [
        Metric("step_shell", f"per-step overhead, {p.steps} x ShellCommand true", "s/step"),
        Metric("step_stat", f"per-step overhead, {p.steps} x FileExists (stat)", "s/step"),
        Metric("upload", f"FileUpload {fsz}", "s", throughput_bytes=p.file_bytes),
        Metric("download", f"FileDownload {fsz}", "s", throughput_bytes=p.file_bytes),
        Metric("bigout", f"{lsz} stdout log ({p.log_lines} lines)", "s",
               throughput_bytes=p.log_lines * bench_cfg.LOG_LINE_BYTES),
        Metric("rss_upload", "master peak RSS, upload build", "MiB"),
        Metric("rss_download", "master peak RSS, download build", "MiB"),
        Metric("rss_bigout", "master peak RSS, log build", "MiB"),
    ]
    for n in p.scale:
        out += [
            Metric(f"master_start@{n}", f"{n} workers: master startup", "s", workers=n),
            Metric(f"idle_rss@{n}", f"{n} workers: master RSS, none attached", "MiB",
                   workers=n),
            Metric(f"attach_count@{n}", f"{n} workers: attached within limit", "count",
                   ratio=False, workers=n),
            Metric(f"attach_time@{n}", f"{n} workers: all connected", "s", workers=n),
            Metric(f"attach_full@{n}", f"{n} workers: all fully attached", "s", workers=n),
            Metric(f"attach_cpu@{n}", f"{n} workers: master CPU until all attached", "s",
                   workers=n),
            Metric(f"workers_cpu@{n}", f"{n} workers: worker processes' CPU until then", "s",
                   ratio=False, workers=n),
            Metric(f"attach_sockets@{n}", f"{n} workers: master open sockets", "sockets",
                   workers=n),
            Metric(f"attach_inbound@{n}", f"{n} workers: of which inbound TCP", "sockets",
                   ratio=False, workers=n),
            Metric(f"attach_fds@{n}", f"{n} workers: master open fds", "fds", workers=n),
            Metric(f"attach_rss@{n}", f"{n} workers: master RSS, all attached", "MiB",
                   workers=n),
            Metric(f"broker_sockets@{n}", f"{n} workers: broker open sockets", "sockets",
                   ratio=False, workers=n),
            Metric(f"broker_rss@{n}", f"{n} workers: broker RSS", "MiB", ratio=False,
                   workers=n),
        ]
    return out


def write_random_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def create_pair(master: Master, worker: Worker, proto: Proto) -> None:
    """Create and start ``master``; create ``worker`` (not started), with the protocol's
    buildbot.tac patch."""
    master.create()
    master.start(120)
    worker.create()
    if proto.worker_tac_patch:
        patch_tac(worker.basedir, proto.worker_tac_patch)


def patch_tac(basedir: str, code: str) -> None:
    path = os.path.join(basedir, "buildbot.tac")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(("from buildbot_worker.bot import Worker",
                            "from buildbot_worker_msgproto import Worker")):
            lines.insert(i + 1, code)
            break
    else:
        raise HarnessError(f"no Worker import in {path}")
    if "BENCH_LIMITS" in code:  # the Worker gets these limits
        lines = [line.replace("proxy_connection_string=proxy_connection_string)",
                              "proxy_connection_string=proxy_connection_string,\n"
                              "           limits=BENCH_LIMITS)") for line in lines]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


class Bench:
    def __init__(self, params: Params) -> None:
        self.p = params
        self.metrics = make_metrics(params)
        self.results = Results(self.metrics, params.protos)
        self.load: dict[str, list[float]] = {}  # 1-min load average after each repetition
        self.dead: set[tuple[str, str]] = set()  # (protocol, metric) not to be retried
        self.broker: transports_cfg.BenchBroker | None = None  # --per-transport with amqp
        self.broker_error: str | None = None
        self.info: dict[str, Any] = {}  # extra facts for the report / JSON meta
        self._cpu0: float | None = None  # master CPU seconds when the workers start
        os.makedirs(params.workdir, exist_ok=True)
        self.download_src = os.path.join(params.workdir, "download-src.bin")
        self.warmup_src = os.path.join(params.workdir, "warmup-src.bin")
        log(f"creating {human_bytes(params.file_bytes)} master-side source file")
        self.download_sha = write_random_file(self.download_src, params.file_bytes)
        write_random_file(self.warmup_src, 100_000)

    # -- phase 1: one worker ------------------------------------------------------------
    def _entries(self, keys: list[str], proto: str) -> dict[str, int]:
        out = {}
        for k in keys:
            c = self.results.cell(k, proto)
            out[k] = len(c.samples) + len(c.broken) + len(c.failed)
        return out

    def _fail_rest(self, keys: list[str], proto: str, before: dict[str, int], why: str) -> None:
        """Record ``why`` for every metric of ``keys`` that got nothing since ``before``."""
        now = self._entries(keys, proto)
        for k in keys:
            if now[k] == before[k]:
                self.results.fail(k, proto, why)

    # -- phase 1: one worker ------------------------------------------------------------
    def _endpoint(self, proto: Proto, port: int, keys: list[str], rep: int,
                  phase: str) -> transports_cfg.Endpoint | None:
        """The transport endpoint of a msg/<transport> column (None for the classic
        columns); on failure (e.g. no broker) every metric of ``keys`` is failed."""
        if proto.transport is None:
            return None
        try:
            return transports_cfg.endpoint(proto.transport, port, self.broker)
        except Exception as e:
            why = f"rep {rep + 1}: {type(e).__name__}: {e}"
            if proto.transport == "amqp" and self.broker_error:
                why += f" ({short(self.broker_error, 300)})"
            for k in keys:
                self.results.fail(k, proto.key, why)
            self.results.notes.append(f"{proto.key}: rep {rep + 1}: {phase} not run: {why}")
            log(f"{proto.key}: rep {rep + 1}: {phase} not run: {short(why)}")
            raise PhaseAbort(why) from None

    def single_worker_phase(self, proto: Proto, rep: int) -> None:
        p, res, key = self.p, self.results, proto.key
        pdir = os.path.join(p.workdir, key.replace("/", "-"), f"round{rep + 1}")
        port = free_port()
        try:
            ep = self._endpoint(proto, port, SINGLE_KEYS, rep, "single-worker phase")
        except PhaseAbort:
            return
        upload_dest = os.path.join(pdir, "upload-dest.bin")
        builders = bench_cfg.builders_py(
            steps=p.steps,
            file_bytes=p.file_bytes,
            upload_dest=upload_dest,
            download_src=self.download_src,
            warmup_src=self.warmup_src,
            warmup_dest=os.path.join(pdir, "warmup-dest.bin"),
            log_lines=p.log_lines,
            python=p.python,
        )
        www = free_port()
        cfg = make_master_cfg(
            proto.spec.protocols_py if ep is None else transports_cfg.master_protocols_py(ep),
            proto.spec.master_worker_py("w1", PASSWD),
            port,
            www,
            builders,
            extra_py=proto.master_extra_py,
        )
        master = Master(os.path.join(pdir, "master"), cfg, www_port=www, master_port=port)
        if ep is None:
            worker = Worker.for_protocol(proto.spec, os.path.join(pdir, "worker"), port, "w1",
                                         PASSWD)
        else:  # create-worker --transport NAME --transport-option K=V ... <host:port>
            spec = dataclasses.replace(proto.spec, create_options=(
                proto.spec.create_options + transports_cfg.create_options(ep, "w1")))
            worker = Worker.for_protocol(spec, os.path.join(pdir, "worker"), ep.port, "w1",
                                         PASSWD)
        before = self._entries(SINGLE_KEYS, key)
        tag = f"{key}: rep {rep + 1}/{p.repeat}"
        try:
            create_pair(master, worker, proto)
            worker.start(30)
            master.wait_worker_connected("w1", 60, worker)
            rig = Rig(master, worker)
            log(f"{tag}: fresh master and worker up; warm-up build")
            rig.run("warmup", 120)
            for name, fn in (
                ("step_shell", self.m_steps),
                ("step_stat", self.m_steps),
                ("upload", self.m_upload),
                ("download", self.m_download),
                ("bigout", self.m_bigout),
            ):
                if (key, name) in self.dead:
                    log(f"{tag} {name}: skipped, it failed in an earlier repetition")
                    continue
                t0 = time.monotonic()
                try:
                    msg = fn(rig, key, name, upload_dest)
                    log(f"{tag} {name}: {msg}  (wall {time.monotonic() - t0:.1f}s)")
                except BuildError as e:
                    res.fail(name, key, f"rep {rep + 1}: {e}")
                    self.dead.add((key, name))
                    res.notes.append(f"{key}: rep {rep + 1}: {name} failed:\n{e}")
                    log(f"{tag} {name}: FAILED: {short(e, 500)}")
        except PhaseAbort as e:
            log(f"{tag}: single-worker phase aborted: {short(e, 500)}")
            self._fail_rest(SINGLE_KEYS, key, before, f"rep {rep + 1} aborted: {e}")
            res.notes.append(f"{key}: rep {rep + 1}: single-worker phase aborted:\n{e}\n"
                             f"{master.diagnostics(40)}")
        except Exception as e:
            tb = traceback.format_exc()
            log(f"{tag}: single-worker phase failed: {short(e, 500)}")
            self._fail_rest(SINGLE_KEYS, key, before, f"rep {rep + 1}: {type(e).__name__}: {e}")
            res.notes.append(f"{key}: rep {rep + 1}: single-worker phase failed:\n{tb}")
        finally:
            worker.stop(30)
            master.stop(30)

    def m_steps(self, rig: Rig, key: str, name: str, _dest: str) -> str:
        builder = "steps" if name == "step_shell" else "stat"
        _build, props = rig.run(builder, max(120.0, self.p.steps * 2.0))
        per_step = (float(props["bench_t1"]) - float(props["bench_t0"])) / self.p.steps
        self.results.add(name, key, per_step)
        return f"{per_step * 1000:.2f} ms/step"

    def m_upload(self, rig: Rig, key: str, name: str, dest: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            os.remove(dest)
        with PeakRss(rig.master.pid) as peak:
            _build, props = rig.run("upload", self._transfer_timeout())
        self._add_rss("rss_upload", key, peak)
        dt = float(props["bench_dt"])
        want_sha, want_size = str(props["bench_src"]).split()
        got_size = os.path.getsize(dest) if os.path.exists(dest) else None
        got_sha = sha256_file(dest) if got_size is not None else None
        with contextlib.suppress(FileNotFoundError):
            os.remove(dest)
        self.results.add(name, key, dt)
        if (got_sha, got_size) != (want_sha, int(want_size)):
            why = (f"master received {got_size} bytes (sha256 {str(got_sha)[:12]}), worker sent "
                   f"{want_size} bytes (sha256 {want_sha[:12]})")
            self.results.broken(name, key, why)
            return f"BROKEN: {why} in {dt:.3f}s"
        return f"{dt:.3f}s, {self.p.file_bytes / MiB / dt:.1f} MiB/s, sha256 ok"

    def m_download(self, rig: Rig, key: str, name: str, _dest: str) -> str:
        with PeakRss(rig.master.pid) as peak:
            _build, props = rig.run("download", self._transfer_timeout())
        self._add_rss("rss_download", key, peak)
        dt = float(props["bench_dt"])
        got_sha, got_size = (str(props["bench_got"]).split() + ["?", "?"])[:2]
        self.results.add(name, key, dt)
        if (got_sha, got_size) != (self.download_sha, str(self.p.file_bytes)):
            empty = " (an EMPTY file)" if got_sha == EMPTY_SHA256 else ""
            why = (f"worker wrote {got_size} bytes{empty} (sha256 {got_sha[:12]}), master sent "
                   f"{self.p.file_bytes} bytes (sha256 {self.download_sha[:12]})")
            self.results.broken(name, key, why)
            return f"BROKEN: {why}; step took {dt:.3f}s and reported SUCCESS"
        return f"{dt:.3f}s, {self.p.file_bytes / MiB / dt:.1f} MiB/s, sha256 ok"

    def m_bigout(self, rig: Rig, key: str, name: str, _dest: str) -> str:
        timeout = max(120.0, self.p.log_bytes / MiB * 6)
        with PeakRss(rig.master.pid) as peak:
            build, props = rig.run("bigout", timeout)
        self._add_rss("rss_bigout", key, peak)
        dt = float(props["bench_dt"])
        self.results.add(name, key, dt)
        problem = self._check_big_log(rig.master, build["buildid"])
        if problem:
            self.results.broken(name, key, problem)
            return f"BROKEN: {problem}; step took {dt:.3f}s"
        return f"{dt:.3f}s, {self.p.log_lines} lines ok"

    def _check_big_log(self, master: Master, buildid: int) -> str | None:
        """None if the stdio log holds exactly the expected stdout lines, else a reason.

        The stdio log is: header lines ('h': command, environment, ...), the stdout lines
        ('o'), trailer lines ('h': exit code, elapsed time). Only the head and the tail of the
        log are fetched: the stdout block must start with line 0, end with line N-1 and span
        exactly N log lines (a lost or duplicated chunk changes the span)."""
        step = master.step(buildid, "bigout")
        stdio = master._find_log(step["stepid"], "stdio")
        logid, n = stdio["logid"], int(stdio["num_lines"])
        want = self.p.log_lines

        def lines(offset: int, limit: int) -> list[str]:
            if limit <= 0 or offset >= n:
                return []
            doc = master.api_get(f"logs/{logid}/contents", offset=offset, limit=limit)
            return "".join(c["content"] for c in (doc or {}).get("logchunks") or []).splitlines()

        def number(line: str) -> int | None:
            try:
                return int(line[1:10])
            except ValueError:
                return None

        first = last = None  # (index in the log, printed line number)
        block = 500
        for offset in range(0, min(n, 5000), block):  # header: at most a few hundred lines
            for i, ln in enumerate(lines(offset, block)):
                if ln.startswith("o"):
                    first = (offset + i, number(ln))
                    break
            if first:
                break
        tail_from = max(0, n - block)
        for i, ln in enumerate(lines(tail_from, block)):
            if ln.startswith("o"):
                last = (tail_from + i, number(ln))
        if first is None or last is None:
            return f"master log has no stdout lines (num_lines={n}), expected {want}"
        span = last[0] - first[0] + 1
        if span != want or first[1] != 0 or last[1] != want - 1:
            return (f"master log: stdout spans {span} lines (num_lines={n}), expected {want}; "
                    f"first printed number {first[1]} (expected 0), last {last[1]} "
                    f"(expected {want - 1})")
        return None

    def _transfer_timeout(self) -> float:
        return max(120.0, self.p.file_bytes / MiB * 5)

    def _add_rss(self, key: str, proto: str, peak: PeakRss) -> None:
        if peak.peak_mib is not None:
            self.results.add(key, proto, peak.peak_mib)

    # -- phase 2: many workers ----------------------------------------------------------
    def _add(self, key: str, proto: str, value: float) -> None:
        """Add a sample to ``key`` if this mode has that metric."""
        if (key, proto) in self.results.cells:
            self.results.add(key, proto, value)

    def many_workers_phase(self, proto: Proto, rep: int, n: int | None = None) -> None:
        """``n`` (default ``--workers``) workers start at once against a fresh master
        configured with exactly those workers. With --per-transport the metric keys carry
        the suffix '@n'."""
        p, res, key = self.p, self.results, proto.key
        n = p.workers if n is None else n
        sfx = f"@{n}" if p.transports else ""
        keys = [k + sfx for k in MANY_KEYS]
        if p.transports:
            keys += [k + sfx for k in SCALE_EXTRA_KEYS]
            if proto.transport == "amqp":
                keys += [k + sfx for k in BROKER_KEYS]
        sub = f"many{n}" if p.transports else "many"
        pdir = os.path.join(p.workdir, key.replace("/", "-"), f"round{rep + 1}", sub)
        os.makedirs(pdir, exist_ok=True)
        port = free_port()
        try:
            ep = self._endpoint(proto, port, keys, rep, f"{n}-workers phase")
        except PhaseAbort:
            return
        names = [f"mw{i:03d}" for i in range(1, n + 1)]
        events = os.path.join(pdir, "connect-events.txt")
        www = free_port()
        cfg = make_master_cfg(
            proto.spec.protocols_py if ep is None else transports_cfg.master_protocols_py(ep),
            [proto.spec.master_worker_py(x, PASSWD) for x in names],
            port,
            www,
            bench_cfg.many_builders_py(),
            extra_py=proto.master_extra_py + bench_cfg.recorder_py(events),
        )
        master = Master(os.path.join(pdir, "master"), cfg, www_port=www, master_port=port)
        procs: list[subprocess.Popen] = []
        before = self._entries(keys, key)
        tag = f"{key}: rep {rep + 1}: {n} workers"
        try:
            if ep is not None and ep.transport == "amqp":
                self._amqp_users(n)
            master.create()
            t0 = time.monotonic()
            master.start(max(180.0, n * 0.3))
            if ep is not None:
                self._wait_transport_ready(master, ep)
            startup = time.monotonic() - t0
            self._add("master_start" + sfx, key, startup)
            rss = proc_status_kib(master.pid, "VmRSS")
            if rss:
                res.add("idle_rss" + sfx, key, rss / 1024)
            if p.transports:
                log(f"{tag}: master with {n} workers configured up in {startup:.1f}s, "
                    f"RSS {(rss or 0) / 1024:.0f} MiB")
            self._cpu0 = cpu_seconds(master.pid)
            procs, started = self._start_many(proto, ep, port, pdir, n)
            self._measure_attach(master, procs, started, proto, ep, pdir, events, names, rep,
                                 sfx, ep.master_ports if ep is not None else (port,))
        except PhaseAbort as e:
            log(f"{tag}: many-workers phase aborted: {short(e, 500)}")
            self._fail_rest(keys, key, before, f"rep {rep + 1} aborted: {e}")
            res.notes.append(f"{key}: rep {rep + 1}: {n}-workers phase aborted:\n{e}")
        except Exception as e:
            tb = traceback.format_exc()
            log(f"{tag}: many-workers phase failed: {short(e, 500)}")
            self._fail_rest(keys, key, before, f"rep {rep + 1}: {type(e).__name__}: {e}")
            res.notes.append(f"{key}: rep {rep + 1}: {n}-workers phase failed:\n{tb}")
        finally:
            for proc in procs:
                self._stop_many(proc)
            master.stop(30)

    def _amqp_users(self, n: int) -> None:
        """Make sure the broker has AMQP users mw001..mw<n> (normally all were imported at
        the start of the run, in one call)."""
        if self.broker is None:
            raise PhaseAbort(f"no RabbitMQ broker: {self.broker_error}")
        dt = self.broker.ensure_users([f"mw{i:03d}" for i in range(1, n + 1)])
        if dt is not None:
            log(f"amqp: imported missing broker users in {dt:.1f}s")

    @staticmethod
    def _wait_transport_ready(master: Master, ep: transports_cfg.Endpoint) -> None:
        """The master logs its transport listener (amqp: and that it consumes) before it
        reports running; check it, bounded, so workers never start before it listens."""
        marks = [] if ep.transport == "tcp" else [f"msgproto: {ep.transport} transport "
                                                  "listening on"]
        if ep.transport == "amqp":
            marks.append("msgproto: amqp: consuming from")
        deadline = time.monotonic() + 30
        while not all(m in master.log_text() for m in marks):
            if time.monotonic() > deadline or not master.is_running:
                raise PhaseAbort(f"the master does not log {marks!r}\n"
                                 + master.diagnostics(40))
            time.sleep(0.2)

    def _start_many(self, proto: Proto, ep: transports_cfg.Endpoint | None, port: int,
                    pdir: str, n: int) -> tuple[list[subprocess.Popen], list[str]]:
        """Start bench/many_workers.py: one process in the classic mode; with
        --per-transport ceil(n / --workers-per-proc) processes, each with its share of the
        workers, told to start them at the same wall-clock moment (--start-at).
        Returns the processes and their 'started' files."""
        root = os.path.join(pdir, "workers")
        os.makedirs(root, exist_ok=True)
        env = dict(os.environ)
        env.update(SUBPROCESS_ENV)
        base = [self.p.python, os.path.join(HERE, "many_workers.py"),
                "--protocol", proto.many_workers_protocol]
        if ep is None:
            base += ["--port", str(port)]
        else:
            base += ["--host", ep.host, "--port", str(ep.port),
                     *transports_cfg.many_workers_options(ep)]
        base += ["--root", root, "--passwd", PASSWD]
        if not self.p.transports:  # classic: exactly as before
            jobs = [(base + ["--count", str(n)], os.path.join(root, "started"), "console.log")]
        else:
            nproc = max(1, -(-n // max(1, self.p.workers_per_proc)))
            per = -(-n // nproc)
            # time for every process to import and build its Worker objects first
            start_at = time.time() + (3.0 + per * 0.01 if nproc > 1 else 0.0)
            jobs = []
            for i in range(nproc):
                first = 1 + i * per
                count = min(per, n - first + 1)
                cmd = base + ["--first", str(first), "--count", str(count),
                              "--started-file", os.path.join(root, f"started.{i}"),
                              "--log", os.path.join(root, f"many_workers.{i}.log")]
                if nproc > 1:
                    cmd += ["--start-at", f"{start_at:.6f}"]
                jobs.append((cmd, os.path.join(root, f"started.{i}"), f"console.{i}.log"))
        procs, started = [], []
        for cmd, started_path, console_name in jobs:
            with contextlib.suppress(FileNotFoundError):
                os.remove(started_path)
            with open(os.path.join(root, console_name), "ab") as console:
                procs.append(subprocess.Popen(
                    cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=console,
                    stderr=subprocess.STDOUT, start_new_session=True,
                ))
            started.append(started_path)
        return procs, started

    @staticmethod
    def _stop_many(proc: subprocess.Popen) -> None:
        terminate(proc, 30)

    def _connected_count(self, master: Master) -> int:
        doc = master.api_get("workers", field=["name", "connected_to"])
        return sum(1 for w in doc["workers"] if w["connected_to"])

    @staticmethod
    def _many_logs(root: str, lines: int = 30) -> str:
        out = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if name.startswith(("many_workers", "console")) and name.endswith(".log"):
                text = tail(_read(os.path.join(root, name)), lines)
                if text.strip():
                    out.append(f"  -- {name}:\n{text}")
        return "\n".join(out) or "  (no output)"

    def _measure_attach(self, master: Master, procs: list[subprocess.Popen],
                        started_paths: list[str], proto: Proto,
                        ep: transports_cfg.Endpoint | None, pdir: str, events: str,
                        names: list[str], rep: int, sfx: str = "",
                        worker_ports: tuple[int, ...] = ()) -> None:
        p, res, key = self.p, self.results, proto.key
        n = len(names)
        root = os.path.join(pdir, "workers")

        def dead() -> list[subprocess.Popen]:
            return [pr for pr in procs if pr.poll() is not None]

        try:
            offset = os.path.getsize(events)
        except OSError:
            offset = 0
        deadline = time.monotonic() + 60 + (15 if len(procs) > 1 else 0)
        while not all(os.path.exists(sp) for sp in started_paths):
            if dead():
                raise PhaseAbort(f"many_workers.py exited ({dead()[0].returncode}):\n"
                                 + self._many_logs(root))
            if time.monotonic() > deadline:
                raise PhaseAbort("many_workers.py did not start within 60 s\n"
                                 + self._many_logs(root))
            time.sleep(0.05)
        time.sleep(0.01)
        starts = [float(_read(sp).strip()) for sp in started_paths]
        wcpu0 = [cpu_seconds(pr.pid) for pr in procs]  # their startup (imports) excluded
        t_start = min(starts)
        limit_at = t_start + p.attach_limit
        count = 0
        want = set(names)
        if not p.transports:  # classic: poll the REST API every 0.2 s
            while True:
                try:
                    count = self._connected_count(master)
                except HarnessError as e:
                    log(f"{key}: REST error while polling workers: {short(e)}")
                if count >= n or time.time() >= limit_at:
                    break
                if dead():
                    break
                time.sleep(0.2)
        else:
            # --per-transport: watch the master's own connect events (a file: no load on
            # the master) and ask the REST API only to confirm, once all seem connected,
            # and at the end; with 1,000 workers a REST poll every 0.2 s would itself
            # slow the master down.
            next_rest = 0.0
            while True:
                connected, _attached, _failed = _read_events(events, offset)
                now = time.time()
                final = now >= limit_at or bool(dead())
                if (want <= set(connected) and now >= next_rest) or final:
                    try:
                        count = self._connected_count(master)
                    except HarnessError as e:
                        log(f"{key}: REST error while polling workers: {short(e)}")
                    next_rest = time.time() + 1.0
                    if count >= n or final:
                        break
                time.sleep(0.1)
        t_rest = time.time()
        # precise times from the master itself: each worker's first 'connected' event (what
        # REST shows) and the end of its attach sequence (usable for builds). Events can
        # trail the REST view by a few ms; the attach sequence can take longer: wait for it
        # (bounded), also so that no worker is stopped half-attached.
        connected: dict[str, float] = {}
        attached: dict[str, float] = {}
        failed_attach: set[str] = set()
        settle_until = max(limit_at, time.time() + 10) if count >= n else time.time()
        while True:
            connected, attached, failed_attach = _read_events(events, offset)
            if want <= set(attached) or time.time() >= settle_until or dead():
                break
            time.sleep(0.1)
        rss = proc_status_kib(master.pid, "VmRSS")
        fds = open_fds(master.pid)
        cpu = cpu_seconds(master.pid)
        cpu_master = (cpu - self._cpu0) if cpu is not None and self._cpu0 is not None else None
        wcpu = [cpu_seconds(pr.pid) for pr in procs]
        cpu_workers = (sum(a - b for a, b in zip(wcpu, wcpu0))
                       if None not in wcpu and None not in wcpu0 else None)
        socks = (transports_cfg.socket_counts(master.pid, worker_ports)
                 if p.transports else None)
        broker_socks = broker_rss = None
        if ep is not None and ep.transport == "amqp" and self.broker is not None:
            bpid = self.broker.beam_pid()
            if bpid is not None:
                broker_socks = transports_cfg.socket_counts(bpid, (self.broker.port,))
                broker_rss = proc_status_kib(bpid, "VmRSS")
        res.add("attach_count" + sfx, key, count)
        if count >= n:  # "once all are attached"; a partial state would mislead
            if rss:
                res.add("attach_rss" + sfx, key, rss / 1024)
            if fds is not None:
                res.add("attach_fds" + sfx, key, fds)
            if socks is not None:
                self._add("attach_sockets" + sfx, key, socks["sockets"])
                self._add("attach_inbound" + sfx, key, socks["tcp_inbound"])
                res.cell("attach_sockets" + sfx, key).extra.setdefault(
                    "breakdown", []).append(socks)
            if broker_socks is not None:
                self._add("broker_sockets" + sfx, key, broker_socks["sockets"])
                res.cell("broker_sockets" + sfx, key).extra.setdefault(
                    "breakdown", []).append(broker_socks)
            if broker_rss:
                self._add("broker_rss" + sfx, key, broker_rss / 1024)
            if cpu_master is not None:
                self._add("attach_cpu" + sfx, key, cpu_master)
            if cpu_workers is not None:
                self._add("workers_cpu" + sfx, key, cpu_workers)
        cell = res.cell("attach_time" + sfx, key)
        cell.extra.setdefault("rest_poll_seconds", []).append(round(t_rest - t_start, 3))
        if len(procs) > 1:
            cell.extra.setdefault("worker_processes", []).append(len(procs))
            cell.extra.setdefault("start_spread_seconds", []).append(
                round(max(starts) - t_start, 3))
        if failed_attach:
            res.notes.append(f"{key}: rep {rep + 1}: attach failed on the master for "
                             f"{sorted(failed_attach)[:10]} ({len(failed_attach)} workers)")
        sock_txt = ""
        if socks is not None:
            sock_txt = (f", {socks['sockets']} sockets ({socks['tcp_inbound']} inbound TCP, "
                        f"{socks['tcp_listen']} listening, {socks['tcp_other']} other TCP, "
                        f"{socks['non_tcp']} non-TCP)")
        if cpu_master is not None and p.transports:
            sock_txt += (f"; CPU master {cpu_master:.1f}s, worker processes "
                         f"{cpu_workers or 0:.1f}s")
        if broker_socks is not None:
            sock_txt += (f"; broker {broker_socks['sockets']} sockets, "
                         f"RSS {(broker_rss or 0) / 1024:.0f} MiB")
        if count >= n:
            if want <= set(connected):
                dt = max(connected[x] for x in names) - t_start
            else:  # should not happen; fall back to the REST poll time
                dt = t_rest - t_start
            res.add("attach_time" + sfx, key, dt)
            msg = (f"{key}: rep {rep + 1}/{p.repeat} {n} workers connected in {dt:.2f}s "
                   f"(REST saw all after {t_rest - t_start:.2f}s)")
            if len(procs) > 1:
                msg += f" [{len(procs)} worker processes, start spread " \
                       f"{max(starts) - t_start:.2f}s]"
            if want <= set(attached):
                full = max(attached[x] for x in names) - t_start
                res.add("attach_full" + sfx, key, full)
                msg += f", fully attached in {full:.2f}s"
            else:
                why = (f"rep {rep + 1}: attach sequence completed for only "
                       f"{len(want & set(attached))}/{n} workers")
                res.fail("attach_full" + sfx, key, why)
                msg += f"; {why}"
            log(msg + f"; master RSS {(rss or 0) / 1024:.0f} MiB, {fds} fds" + sock_txt)
        else:
            gone = dead()
            died = "" if not gone else f"; many_workers.py exited ({gone[0].returncode})"
            why = (f"rep {rep + 1}: only {count}/{n} attached after "
                   f"{t_rest - t_start:.0f}s{died}")
            fail_keys = ["attach_time", "attach_full", "attach_rss", "attach_fds"]
            if p.transports:
                fail_keys += ["attach_sockets", "attach_inbound", "attach_cpu", "workers_cpu"]
                if ep is not None and ep.transport == "amqp":
                    fail_keys += BROKER_KEYS
            for k in fail_keys:
                res.fail(k + sfx, key, why)
            why += f" (master RSS then {(rss or 0) / 1024:.0f} MiB, {fds} fds{sock_txt})"
            res.notes.append(f"{key}: {why}\n  many_workers log tail:\n"
                             + self._many_logs(root)
                             + "\n  master log tail:\n" + tail(master.log_text(), 30))
            log(f"{key}: {why}")

    # -- all ----------------------------------------------------------------------------
    def run(self) -> None:
        """``rounds``: repetition-major (pb, msgpack, msg, pb, msgpack, msg, ...), so that
        background load on the host spreads over all protocols; ``blocks``: protocol-major.
        Either way one master at a time, each repetition with fresh masters and workers."""
        p = self.p
        if p.transports:
            self.run_per_transport()
            return
        if p.order == "rounds":
            plan = [(rep, key) for rep in range(p.repeat) for key in p.protos]
        else:
            plan = [(rep, key) for key in p.protos for rep in range(p.repeat)]
        for rep, key in plan:
            proto = PROTOS[key]
            t0 = time.monotonic()
            log(f"===== {key} rep {rep + 1}/{p.repeat}: single worker {loadavg()} =====")
            self.single_worker_phase(proto, rep)
            log(f"===== {key} rep {rep + 1}/{p.repeat}: {p.workers} workers at once "
                f"{loadavg()} =====")
            self.many_workers_phase(proto, rep)
            self.load.setdefault(key, []).append(os.getloadavg()[0])
            log(f"===== {key} rep {rep + 1}/{p.repeat}: done in {time.monotonic() - t0:.0f}s =====")

    def run_per_transport(self) -> None:
        """--per-transport: per repetition and column (baselines such as pb first, then
        msg/<transport>), the single-worker builds with a fresh master and worker, then one
        fresh master per --scale N with N workers at once. The scale phases run in the
        first --scale-repeat repetitions only. A RabbitMQ broker is started once for the
        whole run if amqp is measured, and stopped at the end."""
        p = self.p
        reps = max(p.repeat, p.scale_repeat)
        if p.order == "rounds":
            plan = [(rep, key) for rep in range(reps) for key in p.protos]
        else:
            plan = [(rep, key) for key in p.protos for rep in range(reps)]
        try:
            if "amqp" in p.transports:
                self._start_broker()
            for rep, key in plan:
                proto = proto_for(key)
                t0 = time.monotonic()
                if rep < p.repeat:
                    log(f"===== {key} rep {rep + 1}/{p.repeat}: single worker "
                        f"{loadavg()} =====")
                    self.single_worker_phase(proto, rep)
                if rep < p.scale_repeat:
                    for n in p.scale:
                        log(f"===== {key} rep {rep + 1}/{p.scale_repeat}: {n} workers at once "
                            f"{loadavg()} =====")
                        self.many_workers_phase(proto, rep, n)
                self.load.setdefault(key, []).append(os.getloadavg()[0])
                log(f"===== {key} rep {rep + 1}: done in {time.monotonic() - t0:.0f}s =====")
        finally:
            self._stop_broker()

    def _start_broker(self) -> None:
        """Start the private RabbitMQ broker and import the AMQP users of the largest
        --scale at once. A failure is kept in self.broker_error: every amqp cell then
        reports it, the other transports run as usual."""
        broker = transports_cfg.BenchBroker(self.p.workdir)
        try:
            log(f"amqp: starting a private RabbitMQ broker on 127.0.0.1:{broker.port}")
            broker.start()
            self.broker = broker
            self.info["broker_start_seconds"] = round(broker.start_seconds or 0, 1)
            n = max(self.p.scale or [0])
            if n:
                dt = broker.ensure_users([f"mw{i:03d}" for i in range(1, n + 1)])
                self.info["broker_users_import"] = {
                    "users": n, "seconds": round(dt or 0, 2),
                    "how": "one `rabbitmqctl import_definitions` call, plaintext passwords",
                }
                log(f"amqp: broker up in {broker.start_seconds:.1f}s; {n} AMQP users with "
                    f"their permissions imported in {dt or 0:.1f}s (one import_definitions)")
        except Exception as e:
            self.broker_error = f"{type(e).__name__}: {e}"
            log(f"amqp: broker setup FAILED: {short(self.broker_error, 500)}")
            self.results.notes.append(f"amqp broker setup failed:\n{traceback.format_exc()}\n"
                                      + broker.log_tail())
            self.broker = None
            with contextlib.suppress(Exception):  # it may not even have started
                broker.stop()

    def _stop_broker(self) -> None:
        broker, self.broker = self.broker, None
        if broker is None:
            return
        try:
            broker.stop()
            log("amqp: broker stopped")
        except Exception as e:
            log(f"amqp: stopping the broker failed: {short(e, 300)}")
            self.results.notes.append(f"amqp broker stop failed: {e}")


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"(load avg {one:.2f}/{five:.2f}, {os.cpu_count()} cpus)"


def _read_events(path: str, offset: int) -> tuple[dict, dict, set]:
    """({worker: first connect time}, {worker: attach done time}, {attach failed}) of the
    event file written by the master (bench_cfg.recorder_py), from byte ``offset`` on."""
    connected: dict[str, float] = {}
    attached: dict[str, float] = {}
    failed: set[str] = set()
    try:
        with open(path, encoding="utf-8") as f:
            f.seek(offset)
            for line in f:
                parts = line.split()
                if len(parts) != 3 or not line.endswith("\n"):
                    continue
                t, event, name = float(parts[0]), parts[1], parts[2]
                if event == "connected":
                    connected.setdefault(name, t)
                elif event == "attached":
                    attached.setdefault(name, t)
                elif event == "attach-failed":
                    failed.add(name)
    except FileNotFoundError:
        pass
    return connected, attached, failed


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_value(m: Metric, v: float) -> str:
    if m.unit == "s/step":
        return f"{v * 1000:.2f} ms"
    if m.unit == "s":
        s = f"{v:.3f} s" if v < 100 else f"{v:.1f} s"
        if m.throughput_bytes and v > 0:
            s += f" ({m.throughput_bytes / MiB / v:.0f} MiB/s)"
        return s
    if m.unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v:.0f}"


def fmt_cell(m: Metric, c: Cell, footnotes: list[str], workers: int,
             shared_notes: bool = False) -> str:
    """The text of one cell; failures get a footnote (``shared_notes``: cells failing for
    the same reason share one footnote, which then does not name the metric)."""
    st = c.status
    workers = m.workers or workers
    if m.key.split("@")[0] == "attach_count" and c.samples:
        lo = min(c.samples)
        return f"{lo:.0f}/{workers}" if lo == max(c.samples) else (
            f"{lo:.0f}..{max(c.samples):.0f}/{workers}")
    if st == "ok":
        return fmt_value(m, c.median)
    if st == "n/a":
        return "n/a"
    reasons = c.broken or c.failed
    firsts = (r.strip().splitlines()[0] if r.strip() else r for r in reasons)
    text = " | ".join(dict.fromkeys(firsts))
    if shared_notes and text in footnotes:
        ref = f"[{footnotes.index(text) + 1}]"
    else:
        footnotes.append(text if shared_notes else f"{m.key}: {text}")
        ref = f"[{len(footnotes)}]"
    if st == "BROKEN":
        return f"BROKEN {ref}"
    if st == "PARTIAL":
        n = len(c.failed) + len(c.samples)
        return f"{fmt_value(m, c.median).split(' (')[0]}* ({len(c.failed)}/{n} FAILED {ref})"
    return f"FAILED {ref}"


def ratio(res: Results, m: Metric, a: str, b: str) -> float | None:
    if not m.ratio or a not in res.protos or b not in res.protos:
        return None
    va, vb = res.cell(m.key, a).median, res.cell(m.key, b).median
    if va is None or vb is None or vb == 0:
        return None
    return va / vb


def targets(res: Results, p: Params) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if p.transports:  # the targets compare msg with pb; see socket_scaling() instead
        return out

    def cmp(key: str, limit: float, what: str) -> None:
        m = next(x for x in res.metrics if x.key == key)
        r = ratio(res, m, "msg", "pb")
        if r is None:
            st = res.cell(key, "msg").status if "msg" in res.protos else "not run"
            verdict, detail = "UNKNOWN", f"msg: {st}; pb: " + (
                res.cell(key, "pb").status if "pb" in res.protos else "not run")
        else:
            verdict = "MET" if r <= limit else "NOT MET"
            detail = f"msg/pb = {r:.2f} (target <= {limit:g})"
            if "PARTIAL" in (res.cell(key, "msg").status, res.cell(key, "pb").status):
                detail += ", over the successful repetitions only"
            if verdict == "NOT MET" and r <= limit * 1.05:
                detail += ", within 5% (noise level)"
        out.append({"target": what, "verdict": verdict, "detail": detail})

    cmp("step_shell", 0.6, "per-step overhead <= 0.6 x pb")
    cmp("upload", 1.0, f"FileUpload {human_bytes(p.file_bytes)} no slower than pb")
    cmp("download", 1.0, f"FileDownload {human_bytes(p.file_bytes)} no slower than pb")
    cmp("bigout", 1.0, f"{human_bytes(p.log_bytes)} log no slower than pb")
    what = f"{p.workers} workers all attached (msg)"
    if "msg" in res.protos:
        c = res.cell("attach_count", "msg")
        ok = bool(c.samples) and min(c.samples) >= p.workers and not c.failed
        detail = (f"attached: {[int(x) for x in c.samples]} of {p.workers} per repetition"
                  if c.samples else "no result: " + "; ".join(c.failed)[:200])
        out.append({"target": what, "verdict": "MET" if ok else "NOT MET", "detail": detail})
    else:
        out.append({"target": what, "verdict": "UNKNOWN", "detail": "msg not run"})
    return out


def render(res: Results, p: Params) -> tuple[str, list[str]]:
    protos = res.protos
    ratio_cols = [(a, b) for a, b in (("msg", "pb"), ("msg", "msgpack"))
                  if a in protos and b in protos]
    header = ["metric", *protos, *[f"{a}/{b}" for a, b in ratio_cols]]
    footnotes: list[str] = []
    rows = []
    for m in res.metrics:
        row = [m.label]
        for pr in protos:
            row.append(fmt_cell(m, res.cell(m.key, pr), footnotes, p.workers))
        for a, b in ratio_cols:
            r = ratio(res, m, a, b)
            partial = "PARTIAL" in (res.cell(m.key, a).status, res.cell(m.key, b).status)
            row.append(f"{r:.2f}x{'*' if partial else ''}" if r is not None else "-")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out), footnotes


def to_json(res: Results, p: Params, meta: dict[str, Any]) -> dict[str, Any]:
    metrics = []
    for m in res.metrics:
        entry: dict[str, Any] = {"key": m.key, "label": m.label, "unit": m.unit, "values": {}}
        for pr in res.protos:
            c = res.cell(m.key, pr)
            entry["values"][pr] = {
                "status": c.status,
                "median": c.median,
                "samples": c.samples,
                "broken": c.broken,
                "failed": c.failed,
                **({"extra": c.extra} if c.extra else {}),
            }
        if p.transports:
            base = ratio_base(res)
            entry["ratios"] = {f"{pr}/{base}": ratio(res, m, pr, base)
                               for pr in res.protos if base and pr != base}
        else:
            entry["ratios"] = {
                f"{a}/{b}": ratio(res, m, a, b) for a, b in (("msg", "pb"), ("msg", "msgpack"))
            }
        metrics.append(entry)
    doc = {
        "meta": meta,
        "params": {k: v for k, v in dataclasses.asdict(p).items() if k != "workdir"},
        "metrics": metrics,
        "targets": targets(res, p),
        "notes": res.notes,
    }
    if p.transports:
        doc["ratio_base"] = ratio_base(res)
        doc["socket_scaling"] = socket_scaling(res, p)
        single, scale, footnotes = render_transports(res, p)
        doc["tables"] = {"single_worker": single, "scale": scale, "footnotes": footnotes}
    return doc


# --------------------------------------------------------------------------------------------
# Report of --per-transport
# --------------------------------------------------------------------------------------------


def ratio_base(res: Results) -> str | None:
    """The column ratios are relative to: pb if measured in this run, else msg/tcp."""
    for base in ("pb", "msg/tcp"):
        if base in res.protos:
            return base
    return None


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return " | ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "-+-".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def render_transports(res: Results, p: Params) -> tuple[str, str, list[str]]:
    """Two tables, one row per column of the run (pb, ..., msg/tcp, msg/amp, ...): the
    single-worker builds with ratios against ratio_base(), and the many-workers figures
    per --scale N."""
    base = ratio_base(res)
    by_key = {m.key: m for m in res.metrics}
    footnotes: list[str] = []

    def cell(key: str, pr: str) -> str:
        return fmt_cell(by_key[key], res.cell(key, pr), footnotes, p.workers, True)

    def rcell(key: str, pr: str) -> str:
        if base is None:
            return "-"
        if pr == base:
            return "base"
        r = ratio(res, by_key[key], pr, base)
        partial = "PARTIAL" in (res.cell(key, pr).status, res.cell(key, base).status)
        return f"{r:.2f}x{'*' if partial else ''}" if r is not None else "-"

    def short_s(key: str, pr: str) -> str:  # '0.512 s (125 MiB/s)' -> '0.512 s 125 MiB/s'
        return cell(key, pr).replace(" (", " ").rstrip(")") if res.cell(
            key, pr).status == "ok" else cell(key, pr)

    vs = f"vs {base}" if base else "ratio"
    single_keys = ["step_shell", "step_stat", "upload", "download", "bigout"]
    heads = {"step_shell": f"step: {p.steps}x true", "step_stat": f"step: {p.steps}x stat",
             "upload": f"upload {human_bytes(p.file_bytes)}",
             "download": f"download {human_bytes(p.file_bytes)}",
             "bigout": f"log {human_bytes(p.log_bytes)}"}
    header = ["transport"]
    for k in single_keys:
        header += [heads[k], vs]
    header += ["peak RSS up/down/log"]
    rows = []
    for pr in res.protos:
        row = [pr]
        for k in single_keys:
            row += [short_s(k, pr), rcell(k, pr)]
        rss = []
        for k in ("rss_upload", "rss_download", "rss_bigout"):
            c = res.cell(k, pr)
            rss.append(f"{c.median:.0f}" if c.median is not None else c.status)
        row.append("/".join(rss) + " MiB" if any(x[0].isdigit() for x in rss) else "-")
        rows.append(row)
    single = _table(header, rows)

    cols = [("attach_count", "attached"), ("attach_time", "all conn."),
            ("attach_full", "all attached"), ("attach_cpu", "master CPU"),
            ("workers_cpu", "workers CPU"), ("master_start", "master start"),
            ("attach_sockets", "master sockets"), ("attach_inbound", "inbound TCP"),
            ("attach_fds", "master fds"), ("idle_rss", "RSS idle"),
            ("attach_rss", "RSS attached"), ("broker_sockets", "broker sockets"),
            ("broker_rss", "broker RSS")]
    header = ["transport", "workers", *[h for _k, h in cols]]
    rows = []
    for pr in res.protos:
        for n in p.scale:
            row = [pr, str(n)]
            for k, _h in cols:
                c = res.cell(f"{k}@{n}", pr)
                if k.startswith("broker_") and c.status == "n/a":
                    row.append("-")
                else:
                    row.append(cell(f"{k}@{n}", pr))
            rows.append(row)
    scale = _table(header, rows, left=1) if p.scale else "(no --scale)"
    return single, scale, footnotes


def socket_scaling(res: Results, p: Params) -> list[dict[str, Any]]:
    """Per column: the master's open sockets at each --scale N and the extra sockets per
    extra worker between the smallest and the largest N (about 1: one socket per worker;
    about 0: a constant number)."""
    out = []
    if len(p.scale) < 1:
        return out
    lo, hi = min(p.scale), max(p.scale)
    for pr in res.protos:
        vals = {n: res.cell(f"attach_sockets@{n}", pr).median for n in p.scale}
        inbound = {n: res.cell(f"attach_inbound@{n}", pr).median for n in p.scale}
        slope = None
        if hi > lo and vals[lo] is not None and vals[hi] is not None:
            slope = (vals[hi] - vals[lo]) / (hi - lo)
        out.append({"column": pr, "sockets": vals, "inbound_tcp": inbound,
                    "per_extra_worker": slope})
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("buildbot", "buildbot_worker", "twisted", "buildbot_worker_msgproto"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:
            out[mod] = f"unavailable ({type(e).__name__})"
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; quick: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 20 steps, 8 MiB files, 5 MB log, 20 workers, 1 repetition")
    ap.add_argument("--protocols", default=None,
                    help="comma separated subset of pb,msgpack,msg (default: all three; with "
                         "--per-transport: none, i.e. only the msg transports)")
    ap.add_argument("--per-transport", action="store_true",
                    help="measure msg over each transport (--transports), each with its own "
                         "fresh master and worker, plus --scale workers at once")
    ap.add_argument("--transports", default=None,
                    help="comma separated subset of tcp,amp,websocket,zmq,amqp (default with "
                         "--per-transport: all five); implies --per-transport")
    ap.add_argument("--scale", default=None,
                    help="--per-transport: worker counts started at once, each against its "
                         "own fresh master (default 200,1000; quick: 20)")
    ap.add_argument("--scale-repeat", type=int, default=None,
                    help="--per-transport: repetitions of the scale part (default: --repeat)")
    ap.add_argument("--workers-per-proc", type=int, default=1000,
                    help="--per-transport: most workers one many_workers.py process runs "
                         "(default 1000: one process; e.g. 500 splits 1,000 workers over 2 "
                         "processes that start them at the same moment)")
    ap.add_argument("--order", choices=("rounds", "blocks"), default="rounds",
                    help="rounds: pb,msgpack,msg,pb,... (default); blocks: all repetitions of "
                         "one protocol, then the next")
    ap.add_argument("--steps", type=int, default=None, help="trivial steps per build (200)")
    ap.add_argument("--file-mib", type=float, default=None, help="transfer size in MiB (64)")
    ap.add_argument("--log-mb", type=float, default=None, help="log size in MB (50)")
    ap.add_argument("--workers", type=int, default=None, help="simultaneous workers (200)")
    ap.add_argument("--attach-limit", type=float, default=120.0,
                    help="seconds to wait for all workers to attach (120)")
    ap.add_argument("--pb-backlog", type=int, default=None,
                    help="listen backlog for the pb master port (default: none given, i.e. "
                         "Twisted's 50, as a stock master.cfg has it)")
    ap.add_argument("--workdir", default=None,
                    help="where masters/workers live (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work dir (kept anyway after a failure)")
    ap.add_argument("--render", metavar="JSON",
                    help="only print the report of an earlier run from its JSON file")
    ap.add_argument("--json", default=None,
                    help="JSON output file (default bench/results/latest.json; with "
                         "--per-transport bench/results/transports.json)")
    return ap.parse_args(argv)


def make_params(a: argparse.Namespace) -> Params:
    q = a.quick

    def pick(v: Any, full: Any, quick: Any) -> Any:
        return v if v is not None else (quick if q else full)

    per_transport = bool(a.per_transport or a.transports)
    if a.protocols is None:
        a.protocols = "" if per_transport else "pb,msgpack,msg"
    protos = []
    for name in a.protocols.split(","):
        name = ALIASES.get(name.strip(), name.strip())
        if not name:
            continue
        if name not in PROTOS:
            raise SystemExit(f"unknown protocol {name!r}; choose from {', '.join(PROTOS)}")
        if name not in protos:
            protos.append(name)
    protos.sort(key=list(PROTOS).index)
    transports: list[str] = []
    scale: list[int] = []
    if per_transport:
        names = (a.transports or ",".join(transports_cfg.TRANSPORTS)).split(",")
        for name in names:
            name = name.strip()
            if name and name not in transports_cfg.TRANSPORTS:
                raise SystemExit(f"unknown transport {name!r}; choose from "
                                 f"{', '.join(transports_cfg.TRANSPORTS)}")
            if name and name not in transports:
                transports.append(name)
        if "msg" in protos:  # msg (over tcp) is the msg/tcp column
            protos.remove("msg")
            if "tcp" not in transports:
                transports.insert(0, "tcp")
        if not transports:
            raise SystemExit("--per-transport needs at least one transport")
        scale_text = a.scale if a.scale is not None else ("20" if q else "200,1000")
        scale = sorted({int(x) for x in scale_text.split(",") if x.strip()})
        if any(x < 1 for x in scale):
            raise SystemExit("--scale takes positive worker counts")
        protos += [f"msg/{t}" for t in transports]
    elif a.scale is not None or a.scale_repeat is not None:
        raise SystemExit("--scale and --scale-repeat go with --per-transport")
    if a.pb_backlog:
        pb = PROTOS["pb"]
        portstr = f"'tcp:{{PORT}}:interface=127.0.0.1:backlog={int(a.pb_backlog)}'"
        PROTOS["pb"] = dataclasses.replace(pb, spec=dataclasses.replace(
            pb.spec, protocols_py="{'pb': {'port': " + portstr + "}}"))
    workdir = a.workdir or tempfile.mkdtemp(prefix="msgproto-bench-")
    return Params(
        repeat=max(1, pick(a.repeat, 3, 1)),
        steps=max(1, pick(a.steps, 200, 20)),
        file_bytes=int(pick(a.file_mib, 64, 8) * MiB),
        log_bytes=int(pick(a.log_mb, 50, 5) * 1_000_000),
        workers=max(1, pick(a.workers, 200, 20)),
        attach_limit=a.attach_limit,
        protos=protos,
        order=a.order,
        pb_backlog=a.pb_backlog,
        workdir=os.path.abspath(workdir),
        python=sys.executable,
        transports=transports,
        scale=scale,
        scale_repeat=(max(0, a.scale_repeat) if a.scale_repeat is not None
                      else max(1, pick(a.repeat, 3, 1))) if per_transport else 0,
        workers_per_proc=max(1, a.workers_per_proc),
    )


def remove_big_files(workdir: str, limit: int = MiB) -> int:
    """Delete the multi-MiB transfer files of a kept work dir (logs and configs stay)."""
    n = 0
    for dirpath, _dirs, files in os.walk(workdir):
        for name in files:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if name.endswith(".bin") and os.path.getsize(path) > limit:
                    os.remove(path)
                    n += 1
    return n


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def report(res: Results, p: Params, meta: dict[str, Any]) -> None:
    """Print the table, footnotes, samples, targets and failure details."""
    if p.transports:
        report_transports(res, p, meta)
        return
    table, footnotes = render(res, p)
    load = meta.get("loadavg_after_protocol") or {}
    cpus = (meta.get("host") or {}).get("cpus")
    print()
    print(f"Medians of {p.repeat} repetition(s); ratios < 1 mean msg is faster/smaller; "
          "* = over the successful repetitions only. "
          f"Total run time {meta.get('seconds', 0):.0f} s.")
    print("1-minute load average after each repetition: " + "; ".join(
        f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in load.items())
        + f" (host has {cpus} cpus; other processes on it add noise).")
    print(table)
    if footnotes:
        print()
        for i, fn in enumerate(footnotes, 1):
            print(f"[{i}] {short(fn, 600)}")
    print()
    print("Samples per repetition (in run order):")
    for m in res.metrics:
        parts = []
        for pr in res.protos:
            c = res.cell(m.key, pr)
            vals = " ".join(fmt_value(m, v).split(" (")[0] for v in c.samples) or "-"
            parts.append(f"{pr}: {vals}")
        print(f"  {m.key:13} " + " | ".join(parts))
    print()
    print("Targets:")
    for t in targets(res, p):
        print(f"  {t['verdict']:8} {t['target']}: {t['detail']}")
    if res.notes:
        print()
        print("Details of failures:")
        for n in res.notes:
            print("  " + n.replace("\n", "\n  "))


def report_transports(res: Results, p: Params, meta: dict[str, Any]) -> None:
    """--per-transport: the two tables, footnotes, socket scaling, samples, failures."""
    single, scale, footnotes = render_transports(res, p)
    base = ratio_base(res)
    load = meta.get("loadavg_after_protocol") or {}
    cpus = (meta.get("host") or {}).get("cpus")
    print()
    print(f"msg over each transport. Single-worker builds: medians of {p.repeat} "
          f"repetition(s); many workers: {p.scale_repeat} repetition(s). Ratios are against "
          f"{base or '(nothing: neither pb nor msg/tcp measured)'} from this run; < 1 means "
          "faster/smaller; * = over the successful repetitions only. "
          f"Total run time {meta.get('seconds', 0):.0f} s.")
    print("1-minute load average after each repetition: " + "; ".join(
        f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in load.items())
        + f" (host has {cpus} cpus).")
    print()
    print("Single worker (fresh master and worker per transport and repetition):")
    print(single)
    print()
    print(f"Workers at scale (all started at once; limit {p.attach_limit:.0f} s; master "
          "sockets/fds/RSS once all are attached; broker = the RabbitMQ node, amqp only):")
    print(scale)
    if footnotes:
        print()
        for i, fn in enumerate(footnotes, 1):
            print(f"[{i}] {short(fn, 600)}")
    scaling = socket_scaling(res, p)
    if len(p.scale) > 1:
        lo, hi = min(p.scale), max(p.scale)
        print()
        print(f"Master sockets from {lo} to {hi} workers (extra sockets per extra worker: "
              "~1 = one per worker, ~0 = constant):")
        for row in scaling:
            s_lo, s_hi = row["sockets"].get(lo), row["sockets"].get(hi)
            i_lo, i_hi = row["inbound_tcp"].get(lo), row["inbound_tcp"].get(hi)
            slope = row["per_extra_worker"]
            print(f"  {row['column']:14} {_num(s_lo)} -> {_num(s_hi)} sockets "
                  f"(inbound TCP {_num(i_lo)} -> {_num(i_hi)}): "
                  + (f"{slope:.3f} per extra worker" if slope is not None else "n/a"))
    info = meta.get("info") or {}
    if info:
        print()
        print("Run facts: " + json.dumps(info, sort_keys=True))
    extras = []
    for m in res.metrics:
        if not m.key.startswith("attach_time@"):
            continue
        for pr in res.protos:
            ex = res.cell(m.key, pr).extra
            if ex.get("worker_processes"):
                extras.append(f"{pr} {m.workers}: {ex['worker_processes']} worker processes, "
                              f"start spread {ex.get('start_spread_seconds')} s")
    if extras:
        print("Many-workers processes: " + "; ".join(extras))
    print()
    print("Samples per repetition (in run order):")
    for m in res.metrics:
        parts = []
        for pr in res.protos:
            c = res.cell(m.key, pr)
            if not c.samples and not c.failed and not c.broken:
                continue
            vals = " ".join(fmt_value(m, v).split(" (")[0] for v in c.samples) or "-"
            parts.append(f"{pr}: {vals}")
        if parts:
            print(f"  {m.key:20} " + " | ".join(parts))
    if res.notes:
        print()
        print("Details of failures:")
        for n in res.notes:
            print("  " + n.replace("\n", "\n  "))


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def load_json(path: str) -> tuple[Results, Params, dict[str, Any]]:
    """Results of an earlier run, from its JSON file (for --render)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    pd = dict(doc["params"])
    pd.setdefault("order", "rounds")
    pd.setdefault("pb_backlog", None)
    p = Params(**{**pd, "workdir": ""})
    res = Results(make_metrics(p), p.protos)
    for m in doc["metrics"]:
        for pr, v in m["values"].items():
            if (m["key"], pr) in res.cells:
                c = res.cell(m["key"], pr)
                c.samples, c.broken, c.failed = v["samples"], v["broken"], v["failed"]
                c.extra = v.get("extra", {})
    res.notes = doc.get("notes", [])
    return res, p, doc.get("meta", {})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        res, p, meta = load_json(args.render)
        print(f"Results of {meta.get('command')} started {meta.get('started')}")
        report(res, p, meta)
        return 0
    p = make_params(args)
    if args.json is None:
        args.json = os.path.join(HERE, "results",
                                 "transports.json" if p.transports else "latest.json")
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    t0 = time.monotonic()
    log(f"work dir {p.workdir}; protocols {','.join(p.protos)}; repeat {p.repeat}; "
        f"steps {p.steps}; files {human_bytes(p.file_bytes)}; log {human_bytes(p.log_bytes)}; "
        + (f"workers {p.workers}" if not p.transports else
           f"scale {','.join(map(str, p.scale))} (x{p.scale_repeat}, at most "
           f"{p.workers_per_proc} per worker process)"))
    bench = Bench(p)
    interrupted = False
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: reporting what was measured so far")
    elapsed = time.monotonic() - t0
    res = bench.results
    meta = {
        "command": " ".join([sys.executable, *sys.argv]),
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "seconds": round(elapsed, 1),
        "interrupted": interrupted,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "loadavg_after_protocol": bench.load,
        "versions": versions(),
        **({"info": bench.info} if bench.info else {}),
    }
    report(res, p, meta)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(to_json(res, p, meta), f, indent=2)
    print(f"\nJSON written to {args.json}")
    failed = any(c.failed for c in res.cells.values())
    if args.keep or failed or interrupted:
        removed = remove_big_files(p.workdir)
        print(f"work dir kept: {p.workdir} ({removed} big transfer files removed)")
    else:
        shutil.rmtree(p.workdir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
