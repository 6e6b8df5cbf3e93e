"""A loopback TCP proxy that tests own, to cut, partition and delay a real connection.

There is no netem on the test machines, so network faults between a real worker and a real
master (or a worker and the RabbitMQ broker) are made by putting this proxy in between::

    with FaultProxy.start("127.0.0.1", master_port) as proxy:
        worker connects to 127.0.0.1:proxy.port
        proxy.blackhole(); ...; proxy.heal()          # silent partition
        proxy.cut(); ...; proxy.restore()             # reset, then refuse, then accept again
        proxy.set_delay(0.05)                         # 100 ms round-trip time
        proxy.set_rate(125_000_000)                   # 1 Gbit/s each way

The proxy is its own process (``faultproxy_process.py``, standard library only), so it
never competes with a test's reactor.  It listens on one port (127.0.0.1 or ::1) and
forwards every accepted connection to one target ``host:port``.  Every method below waits
for the proxy's acknowledgement (at most ``CONTROL_TIMEOUT`` seconds): when it returns,
the fault is in place.  Closing the controller's pipe (the test process dies) ends the
proxy; :meth:`FaultProxy.stop` ends it by its PID.  In pytest tests use the fixture
``fault_proxy_factory`` (import it from here); in trial TestCases call
``FaultProxy.start(...)`` and ``self.addCleanup(proxy.stop)``.  The control calls block
for a few milliseconds, which a test's reactor thread can afford.

Semantics
---------

Normal operation
    Each accepted client gets its own connection to the target.  Bytes, end of stream
    (FIN, half-close kept) and resets (RST) are forwarded in order, each after the
    configured delay.  If the target refuses, the client's connection is reset.
    ``TCP_NODELAY`` is set on both proxy sockets (the proxy adds no Nagle delay).

``blackhole(seconds=None)``: a silent partition
    The proxy stops reading and writing on every connection, in both directions, and
    closes or resets nothing.  Senders' kernel buffers fill and their writes block, as on
    a dead path.  A side that closes (FIN) or resets meanwhile is not noticed, so the other
    side is not told.  New connections are accepted (the kernel completes the handshake,
    so the client's ``connect()`` succeeds) but the proxy connects them to the target only
    on heal; nothing gets through until then.  Unlike a real dead path, the TCP peer of
    each side is the live proxy, so kernel TCP keepalives do not detect the partition
    (application heartbeats do), and nothing ever times out at the TCP level.
    With ``seconds`` the proxy heals by itself after that time (timed in the proxy).

``heal()``
    Reading and writing resume: bytes buffered in the kernels and in the proxy flow
    again, due immediately if their delay passed during the partition, and closes and
    resets made during the partition propagate then.  A connection that both ends kept
    open survives the partition, as with real TCP; one that an end gave up on is closed
    (FIN) or reset (RST) as that end did it.

``cut(refuse=True, seconds=None)``
    Every current connection is reset on both sides at once (``SO_LINGER`` 0: both ends
    get ECONNRESET); data in the proxy is dropped.  With ``refuse`` the listening socket
    is closed too, so new connections get ECONNREFUSED until :meth:`restore` listens
    again on the same port (with ``seconds``: automatically after that time).  With
    ``refuse=False`` new connections are accepted right away.  A cut is independent of
    a blackhole: ``restore()`` does not heal.

``set_delay(one_way_seconds)``
    Every chunk read from either side is stamped ``now + delay`` and written when due,
    so the round-trip time grows by twice the delay; without :meth:`set_rate` there is no
    bandwidth cap (reads are up to 1 MiB; the proxy does not throttle to the delay).  The
    delay applies to data
    read after the call; FIFO order is kept, so a chunk never overtakes an earlier one.
    Connection set-up is not delayed (the client's ``connect()`` completes at once), the
    first bytes are.  Buffer limits per direction of a connection (documented defaults):
    at most ``DEFAULT_MAX_IN_FLIGHT`` (256 MiB) on the "wire" (read, not yet due) and
    ``DEFAULT_WINDOW`` (4 MiB) due but not yet taken by a slow receiver; past either the
    proxy stops reading from the sender, which then blocks.

``set_rate(bytes_per_second, down=...)``: a bandwidth cap (default: none)
    Each direction of the proxy becomes a bottleneck link of that many bytes per second
    (``down`` sets target-to-client apart; ``None`` removes the cap), shared by all
    connections in that direction, in front of the delay: a chunk read at ``now`` is due
    at ``max(now, previous chunk's departure + size / rate) + delay``.  Reads are cut to
    about 2 ms of the rate (at least 16 KiB), and the proxy stops reading a direction while
    more than 10 ms of data wait for its link (the bottleneck's queue), so a sender blocks
    as on a real slow path; it then has at most the bandwidth-delay product plus that
    queue in the proxy, as a well-tuned TCP would have in flight.  Not modelled: loss,
    congestion control, slow start.  The cap applies to data read after the call.

``stats()``
    Counters since start: connections accepted / active / closed (by FIN on both sides) /
    reset / cut / connect_failed, bytes forwarded up (client to target) and down, bytes
    buffered in the proxy now, state flags, and the proxy's CPU seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
from typing import Callable

import pytest

from master_tests.faultproxy_process import DEFAULT_MAX_IN_FLIGHT
from master_tests.faultproxy_process import DEFAULT_WINDOW

#: Seconds the proxy may take to start and listen.
START_TIMEOUT = 15.0
#: Seconds a control command may take to be acknowledged.
CONTROL_TIMEOUT = 10.0
#: Seconds :meth:`FaultProxy.stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0

PROCESS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "faultproxy_process.py")


_SAME = object()  # set_rate(): down as up


def _rate_arg(rate: Any) -> float | None:
    return None if rate is None else float(rate)


class FaultProxyError(RuntimeError):
    """The proxy process did not start, did not answer in time, or refused a command."""


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters (see the module docstring)."""

    accepted: int
    active: int
    closed: int
    reset: int
    cut: int
    connect_failed: int
    bytes_up: int
    bytes_down: int
    buffered_up: int
    buffered_down: int
    blackholed: bool
    listening: bool
    delay: float
    rate_up: float | None
    rate_down: float | None
    port: int
    cpu_seconds: float


class FaultProxy:
    """Controller of one proxy process; use :meth:`start`."""

    def __init__(self, process: subprocess.Popen, listen_host: str, port: int,
                 target: tuple[str, int], stderr_file: Any) -> None:
        self.process = process
        self.host = listen_host
        self.port = port
        self.target = target
        self._stderr_file = stderr_file
        self._buffer = b""
        self._lock = threading.Lock()
        self._next_id = 0

    @classmethod
    def start(cls, target_host: str, target_port: int, listen_port: int = 0, *,
              listen_host: str = "127.0.0.1", delay: float = 0.0,
              rate: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
              window: int = DEFAULT_WINDOW) -> FaultProxy:
        """Start a proxy to ``target_host:target_port`` listening on ``listen_host`` and
        ``listen_port`` (0: a free port, see :attr:`port`); ``delay`` and ``rate`` as
        :meth:`set_delay` and :meth:`set_rate` (both directions)."""
        stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        process = subprocess.Popen(
            [sys.executable, PROCESS_SCRIPT, "--target", target_host, str(target_port),
             "--listen", listen_host, str(listen_port), "--delay", repr(float(delay)),
             "--max-in-flight", str(max_in_flight), "--window", str(window)]
            + ([] if rate is None else ["--rate", repr(float(rate))]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file, bufsize=0)
        proxy = cls(process, listen_host, 0, (target_host, target_port), stderr_file)
        try:
            hello = proxy._read_reply(START_TIMEOUT, "start")
        except BaseException:
            proxy.stop()
            raise
        proxy.port = int(hello["port"])
        return proxy

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        return self.host, self.port

    # ------------------------------------------------------------------ faults
    def blackhole(self, seconds: float | None = None) -> None:
        """Silent partition (see the module docstring); with ``seconds``, heal after that."""
        self._call("blackhole", seconds=seconds)

    def heal(self) -> None:
        """End a partition: buffered bytes and pending closes flow again."""
        self._call("heal")

    def cut(self, refuse: bool = True, seconds: float | None = None) -> None:
        """Reset every connection on both sides; with ``refuse``, refuse new connections
        until :meth:`restore` (or, with ``seconds``, until that much time has passed)."""
        self._call("cut", refuse=refuse, seconds=seconds)

    def restore(self) -> None:
        """Listen again on the same port after ``cut(refuse=True)``."""
        self._call("restore")

    def set_delay(self, one_way_seconds: float) -> None:
        """Delay every byte by ``one_way_seconds`` in each direction (RTT + 2x)."""
        self._call("delay", seconds=float(one_way_seconds))

    def set_rate(self, bytes_per_second: float | None,
                 down: float | None | object = _SAME) -> None:
        """Cap each direction at ``bytes_per_second`` (``down``: target to client, if it
        differs); ``None``: no cap.  See the module docstring."""
        down_rate = bytes_per_second if down is _SAME else down
        self._call("rate", up=_rate_arg(bytes_per_second), down=_rate_arg(down_rate))

    def stats(self) -> ProxyStats:
        reply = self._call("stats")
        return ProxyStats(**{f.name: reply[f.name] for f in dataclasses.fields(ProxyStats)})

    def wait_until(self, predicate: Callable[[ProxyStats], bool], timeout: float = 10.0,
                   what: str = "condition") -> ProxyStats:
        """Poll :meth:`stats` (every 20 ms, at most ``timeout`` s) until ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise FaultProxyError(f"proxy: {what} not reached within {timeout:g} s: "
                                      f"{stats}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ lifetime
    def stop(self) -> None:
        """End the proxy process by its PID (SIGTERM, then SIGKILL); idempotent."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        if not self._stderr_file.closed:
            self._stderr_file.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control channel
    def _call(self, cmd: str, **args: Any) -> dict:
        with self._lock:
            self._next_id += 1
            line = json.dumps({"cmd": cmd, "id": self._next_id, **args}).encode() + b"\n"
            if self.process.poll() is not None:
                raise FaultProxyError(f"proxy exited with {self.process.returncode} "
                                      f"before {cmd!r}:\n{self._stderr_text()}")
            try:
                self.process.stdin.write(line)
            except OSError as exc:
                raise FaultProxyError(f"proxy control pipe: {exc}:\n{self._stderr_text()}")
            reply = self._read_reply(CONTROL_TIMEOUT, cmd)
            while reply.get("id") != self._next_id:  # the late answer to a timed-out call
                reply = self._read_reply(CONTROL_TIMEOUT, cmd)
        if not reply.get("ok"):
            raise FaultProxyError(f"proxy refused {cmd!r}: {reply.get('error')}")
        return reply

    def _read_reply(self, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise FaultProxyError(f"proxy did not answer {what!r} within "
                                          f"{timeout:g} s:\n{self._stderr_text()}")
                data = os.read(self.process.stdout.fileno(), 65536)
                if not data:
                    self.process.wait(STOP_TIMEOUT)
                    raise FaultProxyError(f"proxy exited ({self.process.returncode}) "
                                          f"during {what!r}:\n{self._stderr_text()}")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _stderr_text(self) -> str:
        if self._stderr_file.closed:
            return ""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")


@pytest.fixture
def fault_proxy_factory():
    """``start(target_host, target_port, **options) -> FaultProxy``; every proxy started
    is stopped when the test ends."""
    proxies: list[FaultProxy] = []

    def start(target_host: str, target_port: int, **options: Any) -> FaultProxy:
        proxy = FaultProxy.start(target_host, target_port, **options)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
