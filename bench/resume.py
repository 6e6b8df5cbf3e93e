#!/usr/bin/env python3
"""What session resume costs: the time from a new connection to the stream flowing again,
and the memory a suspended session holds.

Two real session drivers (master and worker) over real framed TCP on 127.0.0.1, in one
process (the protocol's own cost, without Buildbot around it):

* **resume latency**: the worker streams ``update`` notifications; its TCP connection is
  aborted; it connects again at once and resumes.  Measured: from the new TCP connect to
  the first update sent *after* the cut arriving at the master, and how many frames were
  replayed.  Includes the TCP connect, the PBKDF2 of the new login (``auth_iterations``)
  and the replay.
* **memory per suspended session**: the Python memory (tracemalloc) of N suspended master
  sessions, each with K KiB of unacknowledged frames kept for the resume.

The overhead of acks and replay buffers on whole builds (64 MiB transfers, a 50 MB log)
is measured by ``bench/run_bench.py --protocols msg,msg-noresume``.

    .venv/bin/python bench/resume.py [--rounds 20] [--sessions 200] [--kept-kib 1024]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402
from twisted.internet import endpoints  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet import task  # noqa: E402

from buildbot_worker_msgproto.driver import MessageHandler  # noqa: E402
from buildbot_worker_msgproto.driver import SessionDriver  # noqa: E402
from buildbot_worker_msgproto.driver import listener  # noqa: E402
from buildbot_worker_msgproto.protocol import auth  # noqa: E402
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS  # noqa: E402
from buildbot_worker_msgproto.protocol.session import Role  # noqa: E402
from buildbot_worker_msgproto.protocol.session import Session  # noqa: E402
from buildbot_worker_msgproto.transports.base import ReceiverProtocolFactory  # noqa: E402
from buildbot_worker_msgproto.transports.tcp import FramedProtocol  # noqa: E402

LIMITS = DEFAULT_LIMITS
CREDENTIALS = auth.ScramCredentials.from_password("pw", LIMITS.auth_iterations)


class Master(MessageHandler):
    """Answers logins, keeps sessions by id, hands resumed connections over."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionDriver] = {}
        self.lines: list[str] = []
        self.waiting: tuple[str, defer.Deferred] | None = None

    def new_driver(self) -> SessionDriver:
        return SessionDriver(Session(Role.MASTER, LIMITS, now=reactor.seconds()), self, reactor)

    def hello_received(self, driver: SessionDriver, event: Any) -> None:
        target = self.sessions.get(event.resume or "")
        driver.answer_hello(CREDENTIALS, resume=target.session if target else None)

    def authenticated(self, driver: SessionDriver, event: Any) -> None:
        self.sessions[event.session_id] = driver

    def resumed(self, driver: SessionDriver, event: Any) -> None:
        if event.session is not driver.session:
            self.sessions[event.session_id].adopt(driver, event)

    @listener("update")
    def on_update(self, message: dict[str, Any]) -> None:
        text = message["updates"][0][1]
        self.lines.append(text)
        if self.waiting is not None and text == self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(None)


class Worker(MessageHandler):
    def __init__(self) -> None:
        self.opened: defer.Deferred = defer.Deferred()

    def authenticated(self, driver: SessionDriver, event: Any) -> None:
        self.opened.callback(None)


@defer.inlineCallbacks
def resume_latency(rounds: int) -> Any:
    master = Master()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ReceiverProtocolFactory(FramedProtocol, master.new_driver))
    client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    handler = Worker()
    worker = SessionDriver(Session(Role.WORKER, LIMITS, now=reactor.seconds(),
                                   worker_name="w1", password="pw"), handler, reactor)
    proto = yield client.connect(ReceiverProtocolFactory(FramedProtocol, lambda: worker))
    yield handler.opened
    latencies, replayed = [], []
    counter = 0
    for _ in range(rounds):
        for _ in range(50):  # some traffic, some of it unacknowledged at the cut
            counter += 1
            worker.notify("update", command_id=1, updates=[["stdout", f"{counter}\n"]])
        yield task.deferLater(reactor, 0.01, lambda: None)
        proto.transport.abortConnection()
        yield task.deferLater(reactor, 0.05, lambda: None)  # both sides noticed
        counter += 1
        first_new = f"{counter}\n"
        worker.notify("update", command_id=1, updates=[["stdout", first_new]])
        arrived: defer.Deferred = defer.Deferred()
        master.waiting = (first_new, arrived)
        began = time.perf_counter()
        proto = yield client.connect(ReceiverProtocolFactory(FramedProtocol, worker.new_port))
        yield arrived
        latencies.append(time.perf_counter() - began)
        replayed.append(worker.session.stream.unacked_frames)
    assert master.lines == [f"{i}\n" for i in range(1, counter + 1)], "lost or repeated"
    proto.transport.abortConnection()
    yield port.stopListening()
    return latencies, worker.session.resumes


@defer.inlineCallbacks
def suspended_memory(sessions: int, kept_kib: int) -> Any:
    """Python memory (tracemalloc) per suspended master session with ``kept_kib`` KiB of
    kept frames."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept: list[Session] = []
    line = "x" * 1023 + "\n"
    for i in range(sessions):
        master = Session(Role.MASTER, LIMITS, now=0)
        worker = Session(Role.WORKER, LIMITS, now=0, worker_name=f"w{i}", password="pw")
        worker.start(0)
        for _ in range(4):  # hello, challenge, authenticate, welcome
            for frame in worker.frames_to_send():
                for event in master.receive_frame(frame, 0):
                    if type(event).__name__ == "HelloReceived":
                        master.answer_hello(CREDENTIALS, 0)
            for frame in master.frames_to_send():
                worker.receive_frame(frame, 0)
        for _ in range(kept_kib):  # the master's calls meanwhile, never acknowledged
            master.send_request("print", {"message": line}, 0)
        master.frames_to_send()
        master.link_lost(master.link, "cut", 0)
        assert master.is_suspended
        kept.append(master)
    gc.collect()
    yield task.deferLater(reactor, 0, lambda: None)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / 1024 / sessions, kept


@defer.inlineCallbacks
def main(args: argparse.Namespace) -> Any:
    latencies, resumes = yield resume_latency(args.rounds)
    ms = sorted(x * 1000 for x in latencies)
    print(f"resume latency over {args.rounds} cuts (auth_iterations "
          f"{LIMITS.auth_iterations}): median {statistics.median(ms):.1f} ms, "
          f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms; resumes {resumes}; "
          "every update delivered once, in order")
    for kib in (0, args.kept_kib):
        per, _ = yield suspended_memory(args.sessions, kib)
        print(f"memory per suspended session with {kib} KiB kept: {per:.1f} KiB "
              f"({args.sessions} sessions)")


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--kept-kib", type=int, default=1024)
    args = ap.parse_args()
    outcome: list[Any] = []
    d = main(args)
    d.addBoth(outcome.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if outcome and hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()


if __name__ == "__main__":
    run()
