"""The worker's download read-ahead: big chunks from the master, the command's blocks out."""

from __future__ import annotations

import types

from twisted.internet import defer
from twisted.internet import task

from buildbot_worker_msgproto.bot import READ_AHEAD_CHUNK
from buildbot_worker_msgproto.bot import CommandChannel


class FakeMaster:
    """Answers ``read_file`` from ``data`` when the test says so (in request order)."""

    def __init__(self, data: bytes, frame_limit: int = 16 << 20) -> None:
        self.data = data
        self.offset = 0
        self.pending: list[tuple[int, defer.Deferred]] = []
        self.session = types.SimpleNamespace(max_incoming_frame_size=frame_limit)
        self.reactor = task.Clock()

    def request(self, message_type, blob, command_id, length):
        assert message_type == "read_file"
        d = defer.Deferred()
        self.pending.append((length, d))
        return d

    def answer_all(self) -> None:
        while self.pending:
            length, d = self.pending.pop(0)
            chunk = self.data[self.offset:self.offset + length]
            self.offset += len(chunk)
            d.callback(chunk)


def read_all(channel: CommandChannel, master: FakeMaster, block: int) -> tuple[bytes, int]:
    out, reads = bytearray(), 0
    while True:
        d = channel.read(block)
        master.answer_all()
        got = []
        d.addCallback(got.append)
        assert got, "read did not complete once the master answered"
        assert len(got[0]) <= block
        reads += 1
        if not got[0]:
            return bytes(out), reads
        out += got[0]


def test_blocks_come_out_in_order_and_complete():
    data = bytes(range(256)) * 5000 + b"tail"  # 1,280,004 bytes: not a multiple of anything
    master = FakeMaster(data)
    channel = CommandChannel(master, "c1", window=4)
    out, reads = read_all(channel, master, 16 * 1024)
    assert out == data
    assert reads == -(-len(data) // (16 * 1024)) + 1  # every block, then b''


def test_master_is_asked_for_big_chunks_within_the_window():
    master = FakeMaster(b"x" * (10 << 20))
    channel = CommandChannel(master, "c1", window=4)
    channel.read(16 * 1024)
    assert [length for length, _ in master.pending] == [READ_AHEAD_CHUNK] * 4


def test_chunks_fit_a_small_frame_limit_as_base64():
    master = FakeMaster(b"x" * 100_000, frame_limit=64 * 1024)
    channel = CommandChannel(master, "c1", window=2)
    channel.read(1024)
    chunk = master.pending[0][0]
    assert chunk >= 1024 and chunk * 4 // 3 + 4096 <= 64 * 1024


def test_a_block_larger_than_the_chunk_is_asked_for_as_is():
    master = FakeMaster(b"y" * (2 * READ_AHEAD_CHUNK))
    channel = CommandChannel(master, "c1", window=2)
    channel.read(READ_AHEAD_CHUNK * 2)
    assert master.pending[0][0] == READ_AHEAD_CHUNK * 2


def test_empty_file():
    master = FakeMaster(b"")
    channel = CommandChannel(master, "c1", window=3)
    assert read_all(channel, master, 4096) == (b"", 1)
