#!/usr/bin/env python3
"""The raw link: a 64 MiB TCP transfer through the fault proxy at 0/20/100/200 ms RTT.

The baseline for transfer benchmarks over a delayed link: what plain sockets get through
``master_tests/faultproxy.py`` (no Buildbot, no protocol), both directions, medians of
``--repeat`` runs, each on a fresh connection.  A sink/source server and the client run in
this process (threads, blocking sockets, 4 MiB buffers); the proxy is its own process.

* upload: the client sends the size and the bytes, the server answers one byte when it
  has them all;
* download: the client asks for the size, the server sends the bytes.

Both are timed from the client's first byte to its last, so each includes one round trip.
Printed per RTT and direction: seconds, MiB/s, MiB/s once that round trip is taken off
(what the proxy streams), and the proxy's CPU seconds (user + system) per transfer.
``--rate-mbit N`` caps the proxy at N Mbit/s (10**6 bits) in each direction
(``FaultProxy.set_rate``; 0, the default: no cap); the ``direct`` row is never capped.

Run from the repository root:
``.venv/bin/python bench/raw_link.py [--mib 64] [--repeat 3] [--rtt 0,20,100,200] [--rate-mbit N]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from master_tests.faultproxy import FaultProxy  # noqa: E402

BLOCK = 4 << 20
TIMEOUT = 120.0  # seconds any single transfer may take


def recv_exactly(sock: socket.socket, size: int, buffer: bytearray) -> None:
    """Receive ``size`` bytes into ``buffer`` (reused, contents discarded)."""
    view = memoryview(buffer)
    while size:
        got = sock.recv_into(view[:min(size, len(view))])
        if not got:
            raise ConnectionError(f"end of stream with {size} bytes missing")
        size -= got


def send_zeros(sock: socket.socket, size: int, block: memoryview) -> None:
    while size:
        chunk = block[:min(size, len(block))]
        sock.sendall(chunk)
        size -= len(chunk)


class Server:
    """Loopback server: ``u`` + size: sink, answers ``k``; ``d`` + size: sends size bytes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        buffer, block = bytearray(BLOCK), memoryview(bytes(BLOCK))
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(TIMEOUT)
                header = bytearray(9)
                recv_exactly(sock, 9, header)
                op, size = header[:1], int.from_bytes(header[1:], "big")
                if op == b"u":
                    recv_exactly(sock, size, buffer)
                    sock.sendall(b"k")
                else:
                    send_zeros(sock, size, block)


def transfer(address: tuple[str, int], direction: str, size: int) -> float:
    """Seconds for one upload or download of ``size`` bytes on a new connection."""
    buffer, block = bytearray(BLOCK), memoryview(bytes(BLOCK))
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        header = (b"u" if direction == "upload" else b"d") + size.to_bytes(8, "big")
        started = time.monotonic()
        sock.sendall(header)
        if direction == "upload":
            send_zeros(sock, size, block)
            recv_exactly(sock, 1, buffer)
        else:
            recv_exactly(sock, size, buffer)
        return time.monotonic() - started


def rate_bytes(rate_mbit: float) -> float | None:
    """Bytes per second for ``--rate-mbit`` (0: None, no cap)."""
    return rate_mbit * 1e6 / 8 if rate_mbit > 0 else None


def rate_label(rate_mbit: float) -> str:
    return f"{rate_mbit:g} Mbit/s each way" if rate_mbit > 0 else "no bandwidth cap"


def measure(server: Server, rtt_ms: float | None, size: int, repeat: int,
            rate_mbit: float = 0) -> dict:
    """Samples per direction: ``rtt_ms`` None = direct, without the proxy; ``rate_mbit``
    > 0 caps the proxy at that many Mbit/s each way."""
    results: dict = {}
    if rtt_ms is None:
        for direction in ("upload", "download"):
            results[direction] = ([transfer(("127.0.0.1", server.port), direction, size)
                                   for _ in range(repeat)], [])
        return results
    with FaultProxy.start("127.0.0.1", server.port, delay=rtt_ms / 2000,
                          rate=rate_bytes(rate_mbit)) as proxy:
        for direction in ("upload", "download"):
            times, cpu = [], []
            for _ in range(repeat):
                before = proxy.stats().cpu_seconds
                times.append(transfer(proxy.address, direction, size))
                cpu.append(proxy.stats().cpu_seconds - before)
            results[direction] = (times, cpu)
        stats = proxy.stats()
        if stats.bytes_up < repeat * (size + 18) or stats.bytes_down < repeat * (size + 1):
            raise AssertionError(f"the transfers did not all go through the proxy: {stats}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="transfer size (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--rtt", default="0,20,100,200",
                        help="comma separated RTTs in ms (default 0,20,100,200)")
    parser.add_argument("--rate-mbit", type=float, default=0,
                        help="bandwidth cap of the proxy, Mbit/s each way (default 0: none)")
    args = parser.parse_args()
    size = args.mib << 20
    server = Server()
    rows = [("direct", None)] + [(f"{float(r):g} ms", float(r)) for r in args.rtt.split(",")]
    print(f"raw link: {args.mib} MiB per transfer, {rate_label(args.rate_mbit)}, "
          f"medians of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'RTT':>8}  {'direction':<9} {'seconds':>8} {'MiB/s':>7} "
              f"{'MiB/s-RTT':>9} {'proxy CPU s':>11}  samples (s)")
    print(header)
    print("-" * len(header))
    for label, rtt_ms in rows:
        for direction, (times, cpu) in measure(server, rtt_ms, size, args.repeat,
                                                    args.rate_mbit).items():
            seconds = statistics.median(times)
            streaming = seconds - (rtt_ms or 0) / 1000
            print(f"{label:>8}  {direction:<9} {seconds:8.3f} {args.mib / seconds:7.0f} "
                  f"{args.mib / streaming if streaming > 0 else float('inf'):9.0f} "
                  f"{statistics.median(cpu) if cpu else float('nan'):11.3f}  "
                  + " ".join(f"{t:.3f}" for t in times), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    server.listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
