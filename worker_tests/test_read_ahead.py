"""The worker's transfer channel: downloads read ahead in big chunks, uploads joined into
big blocks, both through the session's transfer windows (fake driver, fake clock)."""

from __future__ import annotations

import types

import pytest
from twisted.internet import defer
from twisted.internet import task

from buildbot_worker_msgproto.bot import READ_AHEAD_CHUNK
from buildbot_worker_msgproto.bot import WRITE_CHUNK
from buildbot_worker_msgproto.bot import CommandChannel
from buildbot_worker_msgproto.driver import RemoteError
from buildbot_worker_msgproto.flow import TransferFlow
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import Limits

MIB = 1 << 20


class FakeDriver:
    """Records requests; the test answers them (``read_file`` from ``data``, in order)."""

    def __init__(self, data: bytes = b"", frame_limit: int = 16 << 20,
                 pipelined_close: bool = False, pushed_download: bool = False) -> None:
        self.data = data
        self.offset = 0
        self.pending: list[tuple[str, dict, defer.Deferred]] = []
        self.log: list[tuple[str, dict]] = []
        self.written = bytearray()
        self.session = types.SimpleNamespace(max_incoming_frame_size=frame_limit,
                                             max_outgoing_frame_size=frame_limit,
                                             blobs_enabled=True, buffer_full=False,
                                             pipelined_close=pipelined_close,
                                             pushed_download=pushed_download)
        self.reactor = task.Clock()
        self.writable = True
        self._writable_waiters: list[defer.Deferred] = []
        #: framed TCP's: one read delivers a whole block (bot.LOCAL_BLOCK_COMMANDS)
        self.transport = types.SimpleNamespace(large_reads=True)

    def request(self, message_type, blob=None, command_id=None, **body):
        d = defer.Deferred()
        if blob is not None:
            body["blob"] = blob
        self.pending.append((message_type, body, d))
        self.log.append((message_type, body))
        return d

    def wait_writable(self):
        if self.writable:
            return defer.succeed(None)
        d = defer.Deferred()
        self._writable_waiters.append(d)
        return d

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            waiters, self._writable_waiters = self._writable_waiters, []
            for d in waiters:
                d.callback(None)

    def answer(self, count: int | None = None, fail: str | None = None) -> None:
        """Answer the oldest ``count`` requests (all by default)."""
        todo = self.pending if count is None else self.pending[:count]
        self.pending = self.pending[len(todo):]
        for message_type, body, d in todo:
            if fail is not None:
                d.errback(RemoteError("failed", fail))
            elif message_type == "read_file":
                chunk = self.data[self.offset:self.offset + body["length"]]
                self.offset += len(chunk)
                d.callback(chunk)
            else:
                if message_type == "write_file":
                    self.written += body["blob"]
                d.callback(None)

    def types(self) -> list[str]:
        return [t for t, _ in self.log]


def channel_for(driver: FakeDriver, limits: Limits | None = None,
                pushed: bool = False) -> CommandChannel:
    flow = TransferFlow(driver, limits or Limits())
    return CommandChannel(driver, "c1", flow, pushed=pushed)


def read_all(channel: CommandChannel, driver: FakeDriver, block: int) -> tuple[bytes, int]:
    out, reads = bytearray(), 0
    while True:
        d = channel.read(block)
        driver.answer()
        got = []
        d.addCallback(got.append)
        assert got, "read did not complete once the master answered"
        assert len(got[0]) <= block
        reads += 1
        if not got[0]:
            return bytes(out), reads
        out += got[0]


# ---------------------------------------------------------------------- downloads
def test_blocks_come_out_in_order_and_complete():
    data = bytes(range(256)) * 5000 + b"tail"  # 1,280,004 bytes: not a multiple of anything
    driver = FakeDriver(data)
    out, reads = read_all(channel_for(driver), driver, 16 * 1024)
    assert out == data
    assert reads == -(-len(data) // (16 * 1024)) + 1  # every block, then b''


def test_the_first_requests_fill_the_initial_window_in_big_chunks():
    driver = FakeDriver(b"x" * (10 << 20))
    channel_for(driver, Limits(initial_transfer_window=1 * MIB)).read(16 * 1024)
    assert [body["length"] for _, body, _ in driver.pending] == [READ_AHEAD_CHUNK] * 4


def test_chunks_fit_a_small_frame_limit_as_base64():
    driver = FakeDriver(b"x" * 100_000, frame_limit=64 * 1024)
    channel_for(driver).read(1024)
    chunk = driver.pending[0][1]["length"]
    assert chunk >= 1024 and chunk * 4 // 3 + 4096 <= 64 * 1024


def test_a_block_larger_than_the_chunk_is_asked_for_as_is():
    driver = FakeDriver(b"y" * (2 * READ_AHEAD_CHUNK))
    channel_for(driver).read(READ_AHEAD_CHUNK * 2)
    assert driver.pending[0][1]["length"] == READ_AHEAD_CHUNK * 2


def test_reads_announce_the_download_window_only_with_pushed_download():
    for pushed_download in (True, False):
        driver = FakeDriver(b"w" * (4 * MIB), pushed_download=pushed_download)
        channel = channel_for(driver, Limits(initial_transfer_window=1 * MIB))
        channel.read(16 * 1024)
        windows = [body.get("window") for _, body, _ in driver.pending]
        expected = channel.flow.download.size if pushed_download else None
        assert windows == [expected] * len(windows) and len(windows) == 4, windows
        assert expected is None or expected == 1 * MIB


def test_empty_file():
    driver = FakeDriver(b"")
    assert read_all(channel_for(driver), driver, 4096) == (b"", 1)


# ---------------------------------------------------------------------- pushed downloads
def push(channel: CommandChannel, driver: FakeDriver, size: int, chunk: int) -> None:
    """Play the master of ``pushed_download``: the first ``size`` bytes of the file as
    ``file_data`` blocks; the reads go on after them."""
    end = min(size, len(driver.data))
    eof = end == len(driver.data)
    for offset in range(0, end, chunk):
        final = offset + chunk >= end
        channel.pushed(driver.data[offset:min(offset + chunk, end)], last=final,
                       eof=final and eof)
    driver.offset = end


def test_pushed_bytes_come_first_and_the_reads_go_on_after_them():
    data = bytes(range(256)) * 20000  # 5,120,000 bytes
    driver = FakeDriver(data)
    channel = channel_for(driver, Limits(initial_transfer_window=1 * MIB), pushed=True)
    first = channel.read(16 * 1024)
    assert not first.called and driver.pending == []  # nothing asked before the push
    push(channel, driver, 1 * MIB, READ_AHEAD_CHUNK)
    assert first.called and first.result == data[:16 * 1024]
    out = bytearray(first.result)
    rest, _ = read_all(channel, driver, 16 * 1024)
    assert bytes(out + rest) == data


def test_a_pushed_small_file_needs_no_read_at_all():
    driver = FakeDriver(b"small file\n")
    channel = channel_for(driver, pushed=True)
    waiting = channel.read(16 * 1024)
    push(channel, driver, 4 * MIB, READ_AHEAD_CHUNK)
    assert waiting.result == b"small file\n"
    assert channel.read(16 * 1024).result == b""
    assert driver.log == []


def test_reads_asked_during_the_push_are_answered_after_it():
    data = b"p" * READ_AHEAD_CHUNK + b"r" * (2 * READ_AHEAD_CHUNK)
    driver = FakeDriver(data)
    channel = channel_for(driver, pushed=True)
    channel.pushed(data[:1000], last=False, eof=False)  # the push is flowing
    assert channel.read(1000).result == data[:1000]
    assert driver.types() and set(driver.types()) == {"read_file"}  # read-ahead began
    waiting = channel.read(1000)
    assert not waiting.called
    channel.pushed(data[1000:READ_AHEAD_CHUNK], last=True, eof=False)
    driver.offset = READ_AHEAD_CHUNK
    assert waiting.result == data[1000:2000]
    rest, _ = read_all(channel, driver, 64 * 1024)
    assert data[:2000] + rest == data


def test_pushed_bytes_after_the_command_stopped_reading_are_ignored():
    driver = FakeDriver(b"m" * (2 * READ_AHEAD_CHUNK))
    channel = channel_for(driver, Limits(initial_transfer_window=1 * MIB), pushed=True)
    channel.pushed(b"m" * 1000, last=False, eof=False)
    assert channel.read(1000).result == b"m" * 1000  # maxsize reached: close_reader
    channel.discard_reads()
    channel.pushed(b"m" * 1000, last=True, eof=True)  # was already on its way
    assert channel._read_buffer == b""


def test_unexpected_pushed_bytes_are_a_protocol_error():
    channel = channel_for(FakeDriver(b"x"))
    with pytest.raises(ProtocolError, match="expects none"):
        channel.pushed(b"x", last=True, eof=True)


def test_read_ahead_grows_with_the_window_on_a_long_path():
    """Answers come 100 ms after the requests: every round trip asks for about twice as
    much as the one before, up to the window's maximum."""
    driver = FakeDriver(b"z" * (200 << 20))
    limits = Limits(initial_transfer_window=1 * MIB, max_transfer_window=16 * MIB)
    channel = channel_for(driver, limits)
    per_round = []
    channel.read(16 * 1024)
    for _ in range(8):
        per_round.append(len(driver.pending))
        driver.reactor.advance(0.1)
        driver.answer()
        while channel.read(16 * 1024).called:  # the command takes what arrived
            pass
    assert per_round[0] == 4
    assert per_round[1] >= 2 * per_round[0] - 1
    assert max(per_round) == 16 * MIB // READ_AHEAD_CHUNK
    assert channel.flow.download.in_flight <= 16 * MIB


def test_the_buffer_counts_against_the_window():
    """A command that does not take its blocks (a slow disk) stops the read-ahead."""
    driver = FakeDriver(b"q" * (50 << 20))
    channel = channel_for(driver, Limits(initial_transfer_window=1 * MIB))
    channel.read(16 * 1024)
    driver.answer()  # 1 MiB arrives; the command took 16 KiB of it
    channel.read(16 * 1024)
    assert len(driver.pending) <= 1


# ---------------------------------------------------------------------- uploads
def write_all(channel: CommandChannel, driver: FakeDriver, data: bytes, block: int,
              answer: bool = True) -> None:
    for offset in range(0, len(data), block):
        d = channel.write(data[offset:offset + block])
        for _ in range(100):
            driver.reactor.advance(0)
            if d.called:
                break
            if answer:
                driver.answer()
        assert d.called, "write did not go on"


def test_small_blocks_are_joined_and_arrive_in_order():
    data = bytes(range(256)) * 4096 + b"end"  # 1 MiB + 3 bytes, in DirectoryUpload's blocks
    driver = FakeDriver()
    channel = channel_for(driver)
    write_all(channel, driver, data, 16 * 1024)
    end = channel.end_writes("unpack_writer")
    driver.answer()
    assert end.called and driver.written == data
    writes = [body for t, body in driver.log if t == "write_file"]
    assert len(writes) == -(-len(data) // WRITE_CHUNK)
    assert all(len(w["blob"]) == WRITE_CHUNK for w in writes[:-1])
    assert driver.types()[-1] == "unpack_writer"


@pytest.mark.parametrize("frame_limit, block", [(16 << 20, 3 * WRITE_CHUNK // 2),
                                                (64 * 1024, WRITE_CHUNK)])
def test_upload_blocks_never_exceed_the_transfer_block_or_a_frame(frame_limit, block):
    data = bytes(range(256)) * 3000 + b"end"  # 768,003 bytes in blocks larger than a frame
    driver = FakeDriver(frame_limit=frame_limit)
    channel = channel_for(driver)
    write_all(channel, driver, data, block)
    channel.end_writes("close_writer")
    driver.answer()
    assert driver.written == data
    sizes = [len(body["blob"]) for t, body in driver.log if t == "write_file"]
    assert max(sizes) == min(WRITE_CHUNK, frame_limit), sizes


def test_close_follows_the_last_write_without_waiting_for_answers():
    driver = FakeDriver()
    channel = channel_for(driver)
    write_all(channel, driver, b"a" * (3 * WRITE_CHUNK + 10), WRITE_CHUNK, answer=False)
    end = channel.end_writes("close_writer")
    assert driver.types() == ["write_file"] * 4 + ["close_writer"]
    assert not end.called
    driver.answer()
    assert end.called


def test_a_write_error_is_raised_after_the_close_was_sent():
    driver = FakeDriver()
    channel = channel_for(driver)
    write_all(channel, driver, b"b" * (2 * WRITE_CHUNK), WRITE_CHUNK, answer=False)
    driver.answer(1, fail="disk full")
    failed = channel.write(b"c")
    assert failed.called and isinstance(failed.result.value, RemoteError)
    failed.addErrback(lambda f: None)
    end = channel.end_writes("close_writer")
    driver.answer()
    assert driver.types()[-1] == "close_writer"
    errors = []
    end.addErrback(errors.append)
    assert errors and "disk full" in str(errors[0].value)


def test_with_pipelined_close_the_command_goes_on_without_the_answers():
    driver = FakeDriver(pipelined_close=True)
    channel = channel_for(driver)
    write_all(channel, driver, b"a" * (3 * WRITE_CHUNK + 10), WRITE_CHUNK, answer=False)
    end = channel.end_writes("close_writer")
    assert driver.types() == ["write_file"] * 4 + ["close_writer"]
    assert end.called and end.result is None  # nothing answered yet
    driver.answer(4)
    driver.answer(fail="destination is a directory")  # logged: the master fails the step
    assert driver.written == b"a" * (3 * WRITE_CHUNK + 10)


def test_with_pipelined_close_a_known_write_error_still_ends_the_command():
    driver = FakeDriver(pipelined_close=True)
    channel = channel_for(driver)
    write_all(channel, driver, b"b" * (2 * WRITE_CHUNK), WRITE_CHUNK, answer=False)
    driver.answer(1, fail="disk full")
    channel.write(b"c").addErrback(lambda f: None)
    end = channel.end_writes("close_writer")
    assert not end.called  # it waits for the close's answer, as without the feature
    driver.answer()
    errors = []
    end.addErrback(errors.append)
    assert errors and "disk full" in str(errors[0].value)


def test_uploads_wait_for_room_in_the_window():
    driver = FakeDriver()
    channel = channel_for(driver, Limits(initial_transfer_window=1 * MIB))
    write_all(channel, driver, b"d" * (4 * WRITE_CHUNK), WRITE_CHUNK, answer=False)
    stuck = channel.write(b"e" * WRITE_CHUNK)
    driver.reactor.advance(0)
    assert not stuck.called and driver.types().count("write_file") == 4
    driver.answer(1)
    driver.reactor.advance(0)
    assert stuck.called and driver.types().count("write_file") == 5


def test_uploads_wait_while_the_session_is_not_writable():
    driver = FakeDriver()
    channel = channel_for(driver)
    driver.set_writable(False)
    d = channel.write(b"f" * WRITE_CHUNK)
    driver.reactor.advance(0)
    # one block may go out (nothing in flight) only once the session takes more
    assert not d.called and driver.types() == []
    driver.set_writable(True)
    driver.reactor.advance(0)
    assert d.called and driver.types() == ["write_file"]


def test_a_full_replay_buffer_halves_the_upload_window():
    driver = FakeDriver()
    channel = channel_for(driver, Limits(initial_transfer_window=8 * MIB))
    write_all(channel, driver, b"g" * WRITE_CHUNK, WRITE_CHUNK, answer=False)
    driver.session.buffer_full = True
    driver.set_writable(False)
    channel.write(b"h" * WRITE_CHUNK)
    assert channel.flow.upload.size == 4 * MIB


@pytest.mark.parametrize("cap, replay, effective", [
    (32 * MIB, 64 * MIB, 32 * MIB),
    (32 * MIB, 16 * MIB, 8 * MIB),  # the window never takes more than half the replay buffer
])
def test_the_window_limit_is_the_smaller_of_cap_and_half_the_replay_buffer(cap, replay,
                                                                            effective):
    limits = Limits(max_transfer_window=cap, max_replay_bytes=replay)
    flow = TransferFlow(FakeDriver(), limits)
    assert flow.upload.maximum == flow.download.maximum == effective
    assert flow.upload.size == min(limits.initial_transfer_window, effective)


def test_a_finished_command_drops_its_waiting_uploads():
    driver = FakeDriver()
    channel = channel_for(driver)
    driver.set_writable(False)
    channel.write(b"i" * WRITE_CHUNK)
    channel.finished()
    driver.set_writable(True)
    driver.reactor.advance(0)
    assert driver.types() == []


# ---------------------------------------------------------------------- the command's blocks
@pytest.mark.parametrize("frame_limit, large_reads, expected", [
    (16 << 20, True, READ_AHEAD_CHUNK),
    (64 * 1024, True, None),  # as much as fits a frame as base64
    (16 << 20, False, 16 * 1024),  # WebSocket's 64 KiB reads: the step's own
])
def test_a_download_command_takes_whole_transfer_blocks(tmp_path, frame_limit, large_reads,
                                                        expected):
    """FileDownload's 16 KiB ``blocksize`` is raised to one transfer block (less where a
    frame is smaller) over a transport with large reads, and the file still arrives
    whole (buildbot-worker's real command)."""
    from buildbot_worker_msgproto.bot import ProtocolCommandMsg

    data = bytes(range(256)) * 5000 + b"tail"
    driver = FakeDriver(data, frame_limit=frame_limit)
    driver.transport.large_reads = large_reads
    channel = channel_for(driver)
    command = ProtocolCommandMsg(
        "utf-8", str(tmp_path), str(tmp_path / "builder"), 64 * 1024, 5, 4096, None,
        True, lambda: None, lambda *_: None, "downloadFile", "c1",
        {"workdir": ".", "workerdest": "got.bin", "reader": True, "maxsize": None,
         "blocksize": 16 * 1024, "mode": None}, channel)
    command.send_update = lambda updates: None
    command.command._reactor = driver.reactor  # buildbot-worker's commands take a reactor
    blocksize = command.command.blocksize
    assert blocksize == (expected or channel.local_block_size())
    assert 16 * 1024 < blocksize <= READ_AHEAD_CHUNK or not large_reads
    done = command.command.doStart()
    for _ in range(200):
        driver.reactor.advance(0)
        driver.answer()
        if done.called:
            break
    assert done.called
    assert (tmp_path / "builder" / "got.bin").read_bytes() == data
