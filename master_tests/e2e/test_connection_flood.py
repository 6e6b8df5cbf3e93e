"""A flood of idle and half-open connections against a real master while a build runs.

300 TCP connections are opened at once to the master's negotiated msg/PB port (127.0.0.1)
from this process, a third each that

(i)   say nothing at all (not even a dialect choice),
(ii)  choose the msg dialect and then say nothing,
(iii) choose msg and send a partial frame (a length prefix announcing 100 bytes, then 8).

With ``handshake_timeout`` = 3 the master must close every one of them within the
timeout plus a margin, its memory must stay bounded (VmRSS sampled from /proc while the
flood lasts), its open file descriptors must return to about the baseline, and the real
worker's build running meanwhile must complete with every line, the worker staying
attached; a new build works afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import struct
import threading
import time

import pytest

from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT

from . import harness
from .single_worker_env import WORKER
from .single_worker_env import SingleWorkerEnv
from .single_worker_env import long_and_quick_builders_py

HANDSHAKE_TIMEOUT = 3
CLOSE_MARGIN = 5.0  # seconds beyond handshake_timeout a flood connection may stay open
PER_KIND = 100
KINDS = ("silent", "msg-silent", "partial-frame")
RSS_LIMIT_KIB = 100 * 1024
FD_SLACK = 8
LONG_LINES = 60  # 60 x 0.25 s = 15 s, long enough to overlap the whole flood

# --------------------------------------------------------------------------------------------
# /proc sampling of the master process
# --------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """Samples the master's VmRSS and open fds every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_rss = 0
        self.max_fds = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.max_rss = max(self.max_rss, rss_kib(self.pid))
                self.max_fds = max(self.max_fds, fd_count(self.pid))
                self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# the flood
# --------------------------------------------------------------------------------------------


class FloodConn:
    def __init__(self, kind: str, sock: socket.socket) -> None:
        self.kind = kind
        self.sock = sock
        self.buffer = b""
        self.connected_at: float | None = None
        self.offer_at: float | None = None
        self.sent_at: float | None = None
        self.closed_at: float | None = None
        self.how = ""
        self.error = ""

    @property
    def reference(self) -> float | None:
        """When the master's timer for this connection (re)started, as seen from here."""
        return self.sent_at or self.offer_at or self.connected_at

    @property
    def open_for(self) -> float | None:
        if self.closed_at is None or self.reference is None:
            return None
        return self.closed_at - self.reference


def flood(port: int, deadline_s: float) -> list[FloodConn]:
    """Open PER_KIND connections of each kind at once; play each kind's part; wait
    (bounded by ``deadline_s``) until the master has closed them all."""
    sel = selectors.DefaultSelector()
    conns: list[FloodConn] = []
    try:
        for i in range(PER_KIND * len(KINDS)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            conn = FloodConn(KINDS[i % len(KINDS)], s)
            conns.append(conn)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                conn.error = f"connect: {errno.errorcode.get(rc, rc)}"
                conn.closed_at = time.monotonic()
                s.close()
                continue
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        choice = negotiation.encode_string(MSG_DIALECT)
        partial = struct.pack("!I", 100) + b'{"type":'
        end = time.monotonic() + deadline_s
        while sel.get_map() and time.monotonic() < end:
            for key, events in sel.select(timeout=0.2):
                conn = key.data
                now = time.monotonic()
                if conn.connected_at is None and events & selectors.EVENT_WRITE:
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        conn.error = f"connect: {errno.errorcode.get(err, err)}"
                        conn.closed_at = now
                        sel.unregister(conn.sock)
                        conn.sock.close()
                        continue
                    conn.connected_at = now
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    data = conn.sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data, conn.how = b"", "reset"
                except BlockingIOError:
                    continue
                if not data:
                    if conn.connected_at is None:
                        conn.connected_at = now
                    conn.closed_at = now
                    conn.how = conn.how or "eof"
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    continue
                conn.buffer += data
                if conn.offer_at is None and negotiation.parse_offer(conn.buffer) is not None:
                    conn.offer_at = now
                    if conn.kind != "silent":
                        out = choice if conn.kind == "msg-silent" else choice + partial
                        conn.sock.send(out)  # a few bytes into an empty socket buffer
                        conn.sent_at = time.monotonic()
    finally:
        for key in list(sel.get_map().values()):
            key.data.sock.close()  # still open at the deadline: reported by the test
        sel.close()
    return conns


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


class FloodEnv(SingleWorkerEnv):
    def __init__(self, root: str) -> None:
        super().__init__(root, {"handshake_timeout": HANDSHAKE_TIMEOUT},
                         long_and_quick_builders_py(LONG_LINES))


@pytest.fixture
def flood_env(tmp_path):
    yield from harness.started(FloodEnv(str(tmp_path)))


def _close_code(received: bytes) -> str | None:
    """Code of the last 'close' frame in what the master sent after its dialect offer."""
    parsed = negotiation.parse_offer(received)
    rest = parsed[1] if parsed else b""
    code = None
    while len(rest) >= 4:
        (length,) = struct.unpack("!I", rest[:4])
        frame, rest = rest[4:4 + length], rest[4 + length:]
        with contextlib.suppress(ValueError):
            message = json.loads(frame)
            if isinstance(message, dict) and message.get("type") == "close":
                code = message.get("code")
    return code


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"min {min(values):.2f} s, max {max(values):.2f} s"


def test_connection_flood_is_shed_while_a_build_runs(flood_env):
    m = flood_env.master
    pid = m.pid
    long_request = m.force_build("long")
    build = m.wait_build_started(long_request, 30)
    time.sleep(1.0)  # let the build settle into streaming output
    base_rss = rss_kib(pid)
    base_fds = fd_count(pid)

    started = time.monotonic()
    with Sampler(pid) as sampler:
        conns = flood(flood_env.port, deadline_s=HANDSHAKE_TIMEOUT + CLOSE_MARGIN + 10)
    flood_secs = time.monotonic() - started
    build_running_after_flood = not m.get_build(build["buildid"])["complete"]

    def fds_settled():
        n = fd_count(pid)
        return n if n <= base_fds + FD_SLACK else None

    with contextlib.suppress(harness.HarnessError):
        harness.wait_for(fds_settled, 15, "master fds to return to the baseline")
    after_fds = fd_count(pid)
    after_rss = rss_kib(pid)

    # ---- report -----------------------------------------------------------------------
    print(f"\nflood: {len(conns)} connections in {flood_secs:.1f} s; "
          f"build still running after the flood: {build_running_after_flood}")
    print(f"master VmRSS: before {base_rss} KiB, max during {sampler.max_rss} KiB "
          f"(+{sampler.max_rss - base_rss} KiB), after {after_rss} KiB "
          f"({sampler.samples} samples)")
    print(f"master fds: before {base_fds}, max during {sampler.max_fds}, after {after_fds}")
    for kind in KINDS:
        mine = [c for c in conns if c.kind == kind]
        closed = [c.open_for for c in mine if c.open_for is not None]
        hows = {h: sum(1 for c in mine if c.how == h) for h in {c.how for c in mine}}
        print(f"  {kind:14s}: {len(closed)}/{len(mine)} closed by the master "
              f"({_stats(closed)} after its timer started), {hows}, "
              f"offers received {sum(1 for c in mine if c.offer_at)}")

    # ---- the flood was shed ---------------------------------------------------------------
    errors = [(c.kind, c.error) for c in conns if c.error]
    assert errors == [], errors[:10]
    still_open = [c.kind for c in conns if c.closed_at is None]
    assert still_open == [], f"{len(still_open)} flood connections were never closed"
    assert all(c.offer_at is not None for c in conns), "some connections got no dialect offer"
    late = [(c.kind, round(c.open_for, 2)) for c in conns
            if c.open_for > HANDSHAKE_TIMEOUT + CLOSE_MARGIN]
    assert late == [], late[:10]
    early = [(c.kind, round(c.open_for, 2)) for c in conns if c.open_for < HANDSHAKE_TIMEOUT - 1]
    assert early == [], f"closed before the timeout, so not by the timeout: {early[:10]}"
    # the ones that chose msg were told why: a 'close' frame with code handshake_timeout
    codes = {}
    for c in conns:
        if c.kind != "silent":
            code = _close_code(c.buffer)
            codes[code] = codes.get(code, 0) + 1
    assert codes == {"handshake_timeout": 2 * PER_KIND}, codes
    log = m.log_text()
    assert log.count("chose no dialect within") >= PER_KIND

    # ---- bounded resources --------------------------------------------------------------
    assert sampler.samples > 10
    assert sampler.max_fds >= base_fds + 50, "the flood never reached the master?"
    assert sampler.max_rss - base_rss < RSS_LIMIT_KIB
    assert after_fds <= base_fds + FD_SLACK, (base_fds, after_fds)

    # ---- the master kept serving ------------------------------------------------------------
    done = m.wait_build(long_request, 90)
    assert done["results"] == harness.SUCCESS, m.build_summary(done["buildid"])
    text = m.step_log_text(m.step(done["buildid"], "count")["stepid"])
    lines = [line for line in text.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(LONG_LINES)]
    assert m.worker_data(WORKER)["connected_to"], "real worker was disconnected"
    log = m.log_text()
    assert log.count(f"worker '{WORKER}' attaching over msgproto") == 1, "worker reattached"
    quick = m.run_build("quick", timeout=60)
    assert quick["results"] == harness.SUCCESS, m.build_summary(quick["buildid"])
    assert "Traceback" not in m.log_text(), harness.tail(m.log_text(), 80)
