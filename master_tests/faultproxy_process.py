"""The fault proxy's own process: one thread, one ``selectors`` loop, standard library only.

Started by :class:`master_tests.faultproxy.FaultProxy`, which documents what the proxy does
(blackhole, cut, delay, rate).  This module is the mechanism::

    python faultproxy_process.py --target HOST PORT [--listen HOST PORT] [--delay SECONDS]
                                 [--rate BYTES_PER_SECOND] [--max-in-flight BYTES]
                                 [--window BYTES]

Once listening it prints one JSON line ``{"ok": true, "port": P, "pid": PID}`` on stdout.
Then it reads one JSON command per line on stdin (``{"cmd": NAME, "id": N, ...}``) and
answers each with one JSON line on stdout (``{"ok": ..., "id": N, ...}``), *after* the
command has taken effect.  End of stdin (the controller is gone) ends
the process, so a crashed test run leaves no proxy behind.

Each accepted connection has two :class:`Flow` objects, client->target ("up") and
target->client ("down").  A flow stamps every chunk it reads with ``now + delay`` and keeps
it ``in_flight`` until then; due chunks move to ``arrived`` and are written as fast as the
receiving socket takes them.  End of stream (FIN) and reset (RST) travel through the same
queue as markers, so they keep their place behind the data and get the same delay.

With a rate, each direction of the proxy is one :class:`Link` (a bottleneck shared by all
connections in that direction): a chunk read at ``now`` leaves at ``max(now, previous
departure + size / rate)`` and is due ``delay`` after that (a chunk on an idle link is not
held for its own size: the proxy's timers have a granularity of about a millisecond, which
would otherwise be added to every small message).  Reads are then cut to about
``RATE_CHUNK_SECONDS`` of the rate, and a flow is not read while its link has more than
``RATE_QUEUE_SECONDS`` of data waiting (the bottleneck's queue), so senders block as on a
slow path instead of parking the whole transfer in the proxy.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import selectors
import socket
import struct
import sys
import time
from typing import Callable
from typing import Union

#: Bytes asked for per recv(): large reads keep the per-byte cost of Python low.
READ_CHUNK = 1 << 20
#: recv() calls per readiness event on one socket before the loop serves the others.
READS_PER_EVENT = 8
#: Bytes a flow may hold that are not yet due (the "wire"): the delay line's capacity.
DEFAULT_MAX_IN_FLIGHT = 256 << 20
#: Bytes a flow may hold that are due but not yet taken by the receiving socket (its
#: "receive window"): past this the proxy stops reading from the sender.
DEFAULT_WINDOW = 4 << 20
#: With a rate: the largest read, in seconds of the rate (at least ``MIN_RATE_CHUNK`` bytes),
#: so that the link hands out data in small, evenly paced chunks.
RATE_CHUNK_SECONDS = 0.002
MIN_RATE_CHUNK = 16 << 10
#: With a rate: the bottleneck's queue, in seconds of the rate.  While more than this
#: waits to leave the link, no flow in that direction is read.
RATE_QUEUE_SECONDS = 0.01
LISTEN_BACKLOG = 128

EOF = "eof"  # queue marker: the sender shut down its side (FIN)
RESET = "reset"  # queue marker: the sender's connection was reset (RST) or failed
Item = Union[bytes, str]

_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset_socket(sock: socket.socket) -> None:
    """Close ``sock`` with SO_LINGER 0: the peer gets an RST (ECONNRESET), not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


class Side:
    """One socket of a proxied connection (the client's or the target's)."""

    def __init__(self, sock: socket.socket | None, name: str) -> None:
        self.sock = sock
        self.name = name
        self.writable = True  # False after EAGAIN, until the selector says otherwise
        self.connecting = False  # target side: non-blocking connect() in progress
        self.mask = 0  # events registered with the selector

    @property
    def ready(self) -> bool:
        """Connected and open: data may be written to it."""
        return self.sock is not None and not self.connecting


class Flow:
    """One direction of a connection: chunks read from ``src``, delayed, written to ``dst``."""

    def __init__(self, src: Side, dst: Side) -> None:
        self.src = src
        self.dst = dst
        self.in_flight: collections.deque[tuple[float, Item]] = collections.deque()
        self.in_flight_bytes = 0
        self.arrived: collections.deque[Item] = collections.deque()
        self.arrived_bytes = 0
        self.offset = 0  # bytes of arrived[0] already written
        self.reading = True  # src may still be read (no EOF/RESET seen yet)
        self.finished = False  # EOF delivered to dst
        self.forwarded = 0

    def push(self, due: float, item: Item) -> None:
        self.in_flight.append((due, item))
        if isinstance(item, bytes):
            self.in_flight_bytes += len(item)

    def advance(self, now: float) -> None:
        """Move the chunks whose time has come from the wire to the receiver's window."""
        while self.in_flight and self.in_flight[0][0] <= now:
            _, item = self.in_flight.popleft()
            self.arrived.append(item)
            if isinstance(item, bytes):
                self.in_flight_bytes -= len(item)
                self.arrived_bytes += len(item)

    def next_due(self) -> float | None:
        return self.in_flight[0][0] if self.in_flight else None

    def drop(self) -> None:
        """Forget everything queued (its receiver is gone)."""
        self.in_flight.clear()
        self.arrived.clear()
        self.in_flight_bytes = self.arrived_bytes = self.offset = 0
        self.reading = False

    @property
    def buffered(self) -> int:
        return self.in_flight_bytes + self.arrived_bytes


class Link:
    """One direction of the proxy's path: a bottleneck of ``rate`` bytes per second (None:
    no cap) shared by every connection's flow in that direction."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self.busy_until = 0.0  # when the last chunk put on the link left (or will leave) it

    def send(self, now: float, size: int) -> float:
        """Put ``size`` bytes on the link at ``now``; returns when they leave it."""
        if self.rate is None:
            return now
        self.busy_until = max(now, self.busy_until + size / self.rate)
        return self.busy_until

    def read_size(self) -> int:
        if self.rate is None:
            return READ_CHUNK
        return max(MIN_RATE_CHUNK, min(READ_CHUNK, int(self.rate * RATE_CHUNK_SECONDS)))

    def congested_until(self) -> float:
        """Until when the link's queue is full (readers must wait); 0.0 without a cap."""
        if self.rate is None:
            return 0.0
        return self.busy_until - RATE_QUEUE_SECONDS


class Connection:
    """An accepted client and its connection to the target."""

    def __init__(self, client: socket.socket) -> None:
        self.client = Side(client, "client")
        self.target = Side(None, "target")
        self.target_started = False  # connect() to the target is deferred while blackholed
        self.up = Flow(self.client, self.target)
        self.down = Flow(self.target, self.client)

    def sides(self) -> tuple[Side, Side]:
        return self.client, self.target

    def flow_from(self, side: Side) -> Flow:
        return self.up if side is self.client else self.down

    def flow_to(self, side: Side) -> Flow:
        return self.down if side is self.client else self.up


class Proxy:
    """The event loop: listener, connections, control commands on stdin, timers."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float,
                 max_in_flight: int, window: int, rate: float | None = None) -> None:
        self.selector = selectors.DefaultSelector()
        self.listen_host = listen[0]
        self.port = listen[1]
        family, _, _, _, self.target_address = socket.getaddrinfo(
            target[0], target[1], type=socket.SOCK_STREAM)[0]
        self.target_family = family
        self.delay = delay
        self.links = {"up": Link(rate), "down": Link(rate)}
        self.max_in_flight = max_in_flight
        self.window = window
        self.blackholed = False
        self.listener: socket.socket | None = None
        self.connections: list[Connection] = []
        self.timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self.running = True
        self.control_buffer = b""
        self.counters = dict(accepted=0, closed=0, reset=0, cut=0, connect_failed=0,
                             bytes_up=0, bytes_down=0)

    # ------------------------------------------------------------------ listening
    def listen(self) -> None:
        family = socket.getaddrinfo(self.listen_host, self.port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, self.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.listener = sock
        self.selector.register(sock, selectors.EVENT_READ, self.on_accept)

    def stop_listening(self) -> None:
        if self.listener is not None:
            self.selector.unregister(self.listener)
            self.listener.close()  # the kernel resets connections still in the backlog
            self.listener = None

    def on_accept(self, _sock: socket.socket, _mask: int) -> None:
        while self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED, EMFILE: try again on the next event
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections.append(Connection(sock))
            self.counters["accepted"] += 1

    def connect_target(self, conn: Connection) -> None:
        sock = socket.socket(self.target_family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.target.sock = sock
        err = sock.connect_ex(self.target_address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            conn.target.connecting = True
        elif err:
            self.connect_failed(conn)

    def connect_done(self, conn: Connection) -> None:
        conn.target.connecting = False
        err = conn.target.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == errno.ECONNRESET:  # connected, then reset before the proxy looked
            self.side_failed(conn, conn.target)
        elif err:
            self.connect_failed(conn)

    def connect_failed(self, conn: Connection) -> None:
        """The target refused (or could not be reached): the client gets an RST."""
        self.counters["connect_failed"] += 1
        self.finish(conn, reset=True)

    # ------------------------------------------------------------------ data
    def link(self, conn: Connection, flow: Flow) -> Link:
        return self.links["up" if flow is conn.up else "down"]

    def may_read(self, conn: Connection, flow: Flow, now: float) -> bool:
        return (not self.blackholed and flow.reading and flow.src.ready
                and flow.buffered < self.max_in_flight and flow.arrived_bytes < self.window
                and self.link(conn, flow).congested_until() <= now)

    def due(self, conn: Connection, flow: Flow, size: int) -> float:
        """When ``size`` bytes (0: a marker) read now for ``flow`` reach its receiver."""
        return self.link(conn, flow).send(time.monotonic(), size) + self.delay

    def on_socket(self, conn: Connection, side: Side, mask: int) -> None:
        if conn not in self.connections:  # finished by an earlier event of this batch
            return
        if self.blackholed:  # an event of the batch that also brought the blackhole command
            return
        if mask & selectors.EVENT_WRITE:
            if side.connecting:
                self.connect_done(conn)
                return
            side.writable = True
        if mask & selectors.EVENT_READ:
            self.read(conn, side)
        if conn in self.connections:
            self.pump(conn, time.monotonic())

    def read(self, conn: Connection, side: Side) -> None:
        flow = conn.flow_from(side)
        read_size = self.link(conn, flow).read_size()
        for _ in range(READS_PER_EVENT):
            if not self.may_read(conn, flow, time.monotonic()):
                return
            try:
                data = side.sock.recv(read_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.side_failed(conn, side)
                return
            if not data:
                flow.reading = False
                flow.push(self.due(conn, flow, 0), EOF)
                return
            flow.push(self.due(conn, flow, len(data)), data)

    def side_failed(self, conn: Connection, side: Side) -> None:
        """``side`` was reset (or a write to it failed): reset the other side in turn,
        after what was already on its way to it."""
        if side.sock is not None:
            if side.mask:
                self.selector.unregister(side.sock)
                side.mask = 0
            reset_socket(side.sock)
            side.sock = None
        conn.flow_to(side).drop()
        outgoing = conn.flow_from(side)
        outgoing.reading = False
        outgoing.push(self.due(conn, outgoing, 0), RESET)

    def write(self, conn: Connection, flow: Flow) -> None:
        dst = flow.dst
        while flow.arrived and dst.writable:
            item = flow.arrived[0]
            if item is RESET:
                self.finish(conn, reset=True)
                return
            if item is EOF:
                flow.arrived.popleft()
                flow.finished = True
                try:
                    dst.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self.side_failed(conn, dst)
                return
            try:
                sent = dst.sock.send(memoryview(item)[flow.offset:])
            except (BlockingIOError, InterruptedError):
                dst.writable = False
                return
            except OSError:
                self.side_failed(conn, dst)
                return
            flow.offset += sent
            flow.forwarded += sent
            self.counters["bytes_up" if flow is conn.up else "bytes_down"] += sent
            if flow.offset == len(item):
                flow.arrived.popleft()
                flow.arrived_bytes -= len(item)
                flow.offset = 0

    def pump(self, conn: Connection, now: float) -> None:
        """Start the target connection and write what is due, unless blackholed."""
        if self.blackholed:
            return
        if not conn.target_started:
            conn.target_started = True
            self.connect_target(conn)
            if conn not in self.connections:
                return
        for flow in (conn.up, conn.down):
            flow.advance(now)
            if flow.dst.ready:
                self.write(conn, flow)
                if conn not in self.connections:
                    return
        if conn.up.finished and conn.down.finished:
            self.finish(conn, reset=False)
        elif conn.client.sock is None and conn.target.sock is None:  # both were reset
            self.finish(conn, reset=True)

    def finish(self, conn: Connection, reset: bool) -> None:
        """Close both sides (RST if ``reset``) and forget the connection."""
        for side in conn.sides():
            if side.sock is not None:
                if side.mask:
                    self.selector.unregister(side.sock)
                    side.mask = 0
                if reset:
                    reset_socket(side.sock)
                else:
                    side.sock.close()
                side.sock = None
        self.connections.remove(conn)
        self.counters["reset" if reset else "closed"] += 1

    # ------------------------------------------------------------------ the loop
    def update_interest(self) -> None:
        now = time.monotonic()
        for conn in self.connections:
            for side in conn.sides():
                mask = 0
                if side.sock is not None and not self.blackholed:
                    if side.connecting:
                        mask = selectors.EVENT_WRITE
                    else:
                        if self.may_read(conn, conn.flow_from(side), now):
                            mask |= selectors.EVENT_READ
                        if conn.flow_to(side).arrived and not side.writable:
                            mask |= selectors.EVENT_WRITE
                if mask == side.mask:
                    continue
                if side.mask == 0:
                    self.selector.register(side.sock, mask,
                                           lambda s, m, c=conn, d=side: self.on_socket(c, d, m))
                elif mask == 0:
                    self.selector.unregister(side.sock)
                else:
                    self.selector.modify(side.sock, mask, self.selector.get_key(side.sock).data)
                side.mask = mask

    def next_wakeup(self, now: float) -> float | None:
        times = [when for when, _ in self.timers.values()]
        if not self.blackholed:
            for conn in self.connections:
                for flow in (conn.up, conn.down):
                    due = flow.next_due()
                    if due is not None and flow.dst.ready:
                        times.append(due)
            if self.connections:  # a full link queue: read again once it has drained
                times.extend(until for until in (link.congested_until()
                                                 for link in self.links.values())
                             if until > now)
        return max(0.0, min(times) - now) if times else None

    def run_timers(self, now: float) -> None:
        for name, (when, action) in list(self.timers.items()):
            if when <= now:
                del self.timers[name]
                action()

    def run(self) -> None:
        os.set_blocking(sys.stdin.fileno(), False)
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, self.on_control)
        while self.running:
            now = time.monotonic()
            self.run_timers(now)
            for conn in list(self.connections):
                if conn in self.connections:
                    self.pump(conn, now)
            self.update_interest()
            for key, mask in self.selector.select(self.next_wakeup(time.monotonic())):
                key.data(key.fileobj, mask)
                if not self.running:
                    break

    # ------------------------------------------------------------------ control
    def on_control(self, fd: int, _mask: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            self.running = False
            return
        self.control_buffer += data
        while b"\n" in self.control_buffer:
            line, self.control_buffer = self.control_buffer.split(b"\n", 1)
            command: dict = {}
            try:
                command = json.loads(line)
                reply = {"ok": True, **(self.execute(command) or {})}
            except Exception as exc:  # a bad command is answered, never fatal
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if isinstance(command, dict) and "id" in command:
                reply["id"] = command["id"]
            send_line(reply)

    def execute(self, command: dict) -> dict | None:
        name = command["cmd"]
        if name == "blackhole":
            self.blackholed = True
            self.schedule("heal", command.get("seconds"), self.heal)
        elif name == "heal":
            self.heal()
        elif name == "cut":
            refuse, seconds = bool(command.get("refuse", True)), command.get("seconds")
            if seconds is not None and not refuse:
                raise ValueError("cut: seconds (until restore) needs refuse")
            self.cut(refuse)
            self.schedule("restore", seconds, self.restore)
        elif name == "restore":
            self.restore()
        elif name == "delay":
            seconds = float(command["seconds"])
            if not seconds >= 0:
                raise ValueError(f"delay must be >= 0, not {seconds!r}")
            self.delay = seconds
        elif name == "rate":
            for direction in ("up", "down"):
                rate = command.get(direction)
                if rate is not None and not (float(rate) > 0 and float(rate) < float("inf")):
                    raise ValueError(f"rate must be > 0 or null, not {rate!r}")
            for direction in ("up", "down"):
                rate = command.get(direction)
                self.links[direction].rate = None if rate is None else float(rate)
        elif name == "stats":
            return self.stats()
        elif name != "ping":
            raise ValueError(f"unknown command {name!r}")
        return None

    def schedule(self, name: str, seconds: float | None, action: Callable[[], None]) -> None:
        self.timers.pop(name, None)
        if seconds is not None:
            self.timers[name] = (time.monotonic() + float(seconds), action)

    def heal(self) -> None:
        self.timers.pop("heal", None)
        self.blackholed = False

    def cut(self, refuse: bool) -> None:
        for conn in list(self.connections):
            self.counters["cut"] += 1
            self.finish(conn, reset=True)
        for link in self.links.values():  # what was on the links is dropped
            link.busy_until = 0.0
        if refuse:
            self.stop_listening()

    def restore(self) -> None:
        self.timers.pop("restore", None)
        if self.listener is None:
            self.listen()

    def stats(self) -> dict:
        return dict(self.counters, active=len(self.connections),
                    buffered_up=sum(c.up.buffered for c in self.connections),
                    buffered_down=sum(c.down.buffered for c in self.connections),
                    blackholed=self.blackholed, listening=self.listener is not None,
                    delay=self.delay, rate_up=self.links["up"].rate,
                    rate_down=self.links["down"].rate, port=self.port,
                    cpu_seconds=time.process_time())


def send_line(obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        written = os.write(sys.stdout.fileno(), data)
        data = data[written:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", nargs=2, metavar=("HOST", "PORT"), required=True)
    parser.add_argument("--listen", nargs=2, metavar=("HOST", "PORT"),
                        default=("127.0.0.1", "0"))
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=None,
                        help="bytes per second in each direction (default: no cap)")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    args = parser.parse_args(argv)
    proxy = Proxy((args.listen[0], int(args.listen[1])), (args.target[0], int(args.target[1])),
                  args.delay, args.max_in_flight, args.window, args.rate)
    proxy.listen()
    send_line({"ok": True, "port": proxy.port, "pid": os.getpid()})
    try:
        proxy.run()
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
