#!/usr/bin/env python3
"""What the worker's SSH tunnel (twisted.conch) costs: throughput and round trips.

Starts a private OpenSSH sshd on 127.0.0.1 (as the tests do, master_tests/sshd.py) and a
sink/echo server, then measures the same client code over a direct TCP connection and
over ``SSHTunnelEndpoint`` (a ``direct-tcpip`` channel through the sshd):

* one-way throughput: MiB written until the server has them all (answered by one byte);
* round trips: N x (100 bytes out, 100 bytes back), sequential.

Run from the repository root: ``.venv/bin/python bench/ssh_tunnel.py [--mib 64]``.
It prints medians of ``--repeat`` runs and the tunnel/direct ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer  # noqa: E402
from twisted.internet import protocol  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402

from buildbot_worker_msgproto.reach.ssh import SSHSettings  # noqa: E402
from buildbot_worker_msgproto.reach.ssh import SSHTunnelEndpoint  # noqa: E402
from master_tests.sshd import Sshd  # noqa: E402

CHUNK = 64 * 1024
PING = b"p" * 100


class Server(protocol.Protocol):
    """First byte 's' + 8-byte size: sink that answers b'k' after size bytes; 'e': echo."""

    def connectionMade(self) -> None:  # noqa: N802
        self.mode, self.buffer, self.left = None, b"", 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.mode is None:
            self.buffer += data
            if self.buffer[:1] == b"e":
                self.mode, data = "e", self.buffer[1:]
            elif len(self.buffer) >= 9:
                self.mode, self.left = "s", int.from_bytes(self.buffer[1:9], "big")
                data = self.buffer[9:]
            else:
                return
        if self.mode == "e":
            if data:
                self.transport.write(data)
            return
        self.left -= len(data)
        if self.left <= 0:
            self.transport.write(b"k")


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.waiter: defer.Deferred | None = None
        self.want = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += len(data)
        if self.waiter is not None and self.received >= self.want:
            waiter, self.waiter = self.waiter, None
            waiter.callback(None)

    def wait_for(self, total: int) -> defer.Deferred:
        self.want = total
        self.waiter = defer.Deferred()
        if self.received >= total:
            self.waiter, d = None, self.waiter
            d.callback(None)
        return self.waiter


async def throughput(endpoint, size: int) -> float:
    client = await endpoint.connect(protocol.Factory.forProtocol(Client))
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    client.transport.write(b"s" + size.to_bytes(8, "big"))
    for _ in range(size // CHUNK):
        client.transport.write(block)
    await client.wait_for(1)
    elapsed = time.perf_counter() - started
    client.transport.loseConnection()
    return elapsed


async def round_trips(endpoint, count: int) -> float:
    client = await endpoint.connect(protocol.Factory.forProtocol(Client))
    client.transport.write(b"e")
    started = time.perf_counter()
    for i in range(count):
        client.transport.write(PING)
        await client.wait_for((i + 1) * len(PING))
    elapsed = time.perf_counter() - started
    client.transport.loseConnection()
    return elapsed / count


async def main(args: argparse.Namespace) -> None:
    root = tempfile.mkdtemp(prefix="ssh-bench-")
    sshd = Sshd(root).start()
    try:
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
        dest = port.getHost().port
        settings = SSHSettings.create(sshd.tunnel, [sshd.client_key], sshd.known_hosts)
        endpoints = {"direct": TCP4ClientEndpoint(reactor, "127.0.0.1", dest),
                     "ssh tunnel": SSHTunnelEndpoint(reactor, settings, "127.0.0.1", dest)}
        size = args.mib * 1024 * 1024
        results: dict[str, dict[str, list[float]]] = {k: {"tp": [], "rtt": []} for k in endpoints}
        for rep in range(args.repeat):
            for name, endpoint in endpoints.items():
                seconds = await throughput(endpoint, size)
                rtt = await round_trips(endpoint, args.pings)
                results[name]["tp"].append(seconds)
                results[name]["rtt"].append(rtt)
                print(f"rep {rep + 1} {name:10s}: {args.mib} MiB in {seconds:.3f} s "
                      f"({args.mib / seconds:.0f} MiB/s), round trip {rtt * 1e6:.0f} us",
                      flush=True)
        print(f"\nmedians of {args.repeat} (loopback, sshd {sshd.port}):")
        base = {k: statistics.median(v) for k, v in results["direct"].items()}
        for name, r in results.items():
            tp, rtt = statistics.median(r["tp"]), statistics.median(r["rtt"])
            print(f"  {name:10s}: {args.mib / tp:7.0f} MiB/s ({tp / base['tp']:.1f}x the time), "
                  f"round trip {rtt * 1e6:6.0f} us ({rtt / base['rtt']:.1f}x)")
        await port.stopListening()
    finally:
        sshd.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--pings", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    failure: list = []
    d = defer.ensureDeferred(main(a))
    d.addErrback(failure.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].printTraceback()
        sys.exit(1)
