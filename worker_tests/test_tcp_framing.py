"""Framed TCP's receiving side: frames cut anywhere, many per read, oversized ones refused."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.transports.tcp import FramedProtocol


class Receiver:
    def __init__(self, limit: int = 1 << 20) -> None:
        self.frames: list[bytes] = []
        self.rejected: list[int] = []
        self.limit = limit

    def frame_received(self, frame: bytes) -> None:
        self.frames.append(frame)

    def frame_rejected(self, size: int) -> None:
        self.rejected.append(size)

    def max_incoming_frame_size(self) -> int:
        return self.limit


class Transport:
    paused = False

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.paused = True


def framed(frames: list[bytes]) -> bytes:
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


def feed(frames: list[bytes], cuts: list[int], limit: int = 1 << 20) -> tuple[Receiver, Any]:
    receiver = Receiver(limit)
    proto = FramedProtocol(receiver)
    proto.transport = Transport()
    data = framed(frames)
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        if cut > start:
            proto.dataReceived(data[start:cut])
            start = cut
    return receiver, proto


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(max_size=3000), max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=30))
def test_frames_come_out_whole_and_in_order_however_the_bytes_arrive(frames, cuts):
    receiver, proto = feed(frames, cuts)
    assert receiver.frames == frames and not receiver.rejected
    assert proto._buffer == b""


def test_a_big_frame_in_many_reads():
    frame = bytes(range(256)) * 4096  # 1 MiB
    receiver, _ = feed([frame, b"next"], list(range(0, 2 << 20, 65536)))
    assert receiver.frames == [frame, b"next"]


def test_an_oversized_frame_is_refused_before_it_is_buffered():
    receiver, proto = feed([b"ok", b"x" * 5000], [7], limit=4096)
    assert receiver.frames == [b"ok"] and receiver.rejected == [5000]
    assert proto.transport.paused and proto._buffer == b""
    proto.dataReceived(b"more")  # nothing after the refusal
    assert receiver.frames == [b"ok"]
