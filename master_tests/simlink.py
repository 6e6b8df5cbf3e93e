"""A simulated network link between two frame receivers, on a fake clock.

There is no netem on the test machines and ``faultproxy.py`` (even with ``set_rate``)
runs in real time, so a slow, long link is simulated here: each direction is a
bottleneck of ``rate`` bytes per second followed by a one-way ``delay``, in order, like
one TCP connection over such a path.  Each end reports itself not writable while more
than ``send_buffer`` bytes wait for the bottleneck (a kernel send buffer), and writable
again once half of it has left.  Everything runs on a
:class:`twisted.internet.task.Clock`, so a minute of a 1 MB/s link
takes milliseconds and every run is the same.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import TransportGuarantees


class SimulatedEnd(FrameTransport):
    """One end of a :class:`SimulatedLink`: frames sent here arrive at the other end."""

    guarantees = TransportGuarantees(ordered=True, reliable=True, max_frame_size=None,
                                     encrypted=False)

    def __init__(self, link: SimulatedLink, name: str) -> None:
        self.link = link
        self.name = name
        self.receiver: Any = None
        self.other: SimulatedEnd | None = None
        self.waiting = 0  # bytes not yet through the bottleneck
        self.free_at = 0.0
        self.writable = True
        self.closed = False
        #: (time sent, time delivered, frame) of every frame, for the test to inspect
        self.sent_log: list[tuple[float, float, bytes]] = []

    def send_frames(self, frames: list[bytes]) -> None:
        if self.closed:
            return
        clock = self.link.clock
        for frame in frames:
            now = clock.seconds()
            self.free_at = max(now, self.free_at) + len(frame) / self.link.rate
            arrives = self.free_at + self.link.delay
            self.waiting += len(frame)
            self.sent_log.append((now, arrives, frame))
            clock.callLater(self.free_at - now, self._left, len(frame))
            clock.callLater(arrives - now, self.other._arrive, frame)
        if self.writable and self.waiting > self.link.send_buffer:
            self.writable = False
            self.receiver.writable_changed(False)

    def _left(self, size: int) -> None:
        self.waiting -= size
        if not self.writable and self.waiting <= self.link.send_buffer // 2 and not self.closed:
            self.writable = True
            self.receiver.writable_changed(True)

    def _arrive(self, frame: bytes) -> None:
        if not self.closed:
            self.receiver.frame_received(frame)

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        for end in (self, self.other):
            if not end.closed:
                end.closed = True
                end.receiver.transport_closed("closed")

    def peer(self) -> str:
        return f"simulated:{self.other.name}"


class SimulatedLink:
    """A link of ``rate`` bytes/s each way with a one-way ``delay`` (seconds)."""

    def __init__(self, clock: task.Clock, rate: float, delay: float,
                 send_buffer: int = 256 * 1024) -> None:
        self.clock = clock
        self.rate = rate
        self.delay = delay
        self.send_buffer = send_buffer
        self.master = SimulatedEnd(self, "master")
        self.worker = SimulatedEnd(self, "worker")
        self.master.other, self.worker.other = self.worker, self.master

    def connect(self, master_receiver: Any, worker_receiver: Any) -> None:
        """Open both ends (the master's first: it is listening)."""
        self.master.receiver = master_receiver
        self.worker.receiver = worker_receiver
        master_receiver.transport_opened(self.master)
        worker_receiver.transport_opened(self.worker)
