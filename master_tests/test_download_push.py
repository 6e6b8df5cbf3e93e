"""DownloadPush: the master's side of ``pushed_download`` with Buildbot's real FileReader
on a real file, and a driver that records what would go on the wire (no network)."""

from __future__ import annotations

import types

from buildbot.process.remotetransfer import FileReader
from twisted.internet import defer
from twisted.internet import task

from buildbot_msgproto.download_push import PUSH_CHUNK
from buildbot_msgproto.download_push import DownloadPush
from buildbot_msgproto.download_push import PushBudget
from buildbot_msgproto.download_push import chunk_size
from buildbot_worker_msgproto.protocol.limits import Limits

KIB = 1024


class RecordingDriver:
    def __init__(self, blobs: bool = True, frame: int = 16 << 20) -> None:
        self.session = types.SimpleNamespace(blobs_enabled=blobs, max_outgoing_frame_size=frame)
        self.sent: list[tuple[dict, bytes | None]] = []
        self.writable = True
        self._waiters: list[defer.Deferred] = []
        #: The push takes a reactor turn between blocks: :func:`run` turns this clock.
        self.reactor = task.Clock()

    def notify(self, message_type, blob=None, **body):
        assert message_type == "file_data"
        self.sent.append((body, blob))

    def wait_writable(self):
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def set_writable(self) -> None:
        self.writable = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


def reader_of(tmp_path, data: bytes) -> FileReader:
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    return FileReader(open(path, "rb"))  # noqa: SIM115 - the reader closes it


def turn(driver, turns: int = 1000) -> None:
    """Run the reactor turns the push asked for (at most ``turns``)."""
    for _ in range(turns):
        if not driver.reactor.getDelayedCalls():
            return
        driver.reactor.advance(0)
    raise AssertionError("the push never stops asking for reactor turns")


def run(driver, reader, budget: int) -> DownloadPush:
    push = DownloadPush(driver, "c1", reader, budget)
    push.start()
    turn(driver)
    return push


def test_a_big_file_is_pushed_up_to_the_budget_in_chunks(tmp_path):
    data = bytes(range(256)) * (8 * KIB)  # 2 MiB
    driver = RecordingDriver()
    push = run(driver, reader_of(tmp_path, data), 1024 * KIB)
    assert push.ended().called
    assert [len(blob) for _, blob in driver.sent] == [PUSH_CHUNK] * 4
    assert [body["last"] for body, _ in driver.sent] == [False, False, False, True]
    assert not any(body["eof"] for body, _ in driver.sent)
    assert b"".join(blob for _, blob in driver.sent) == data[:1024 * KIB]


def test_a_small_file_goes_whole_with_its_end(tmp_path):
    driver = RecordingDriver()
    run(driver, reader_of(tmp_path, b"small\n"), 4096 * KIB)
    assert driver.sent == [({"command_id": "c1", "last": True, "eof": True}, b"small\n")]


def test_an_empty_file_is_one_empty_end(tmp_path):
    driver = RecordingDriver()
    run(driver, reader_of(tmp_path, b""), 4096 * KIB)
    assert driver.sent == [({"command_id": "c1", "last": True, "eof": True}, b"")]


def test_without_blobs_the_bytes_travel_as_base64_in_small_enough_chunks(tmp_path):
    driver = RecordingDriver(blobs=False, frame=64 * KIB)
    data = b"z" * (200 * KIB)
    run(driver, reader_of(tmp_path, data), 4096 * KIB)
    assert all(blob is None for _, blob in driver.sent)
    assert all(len(body["data"]) + 4096 <= 64 * KIB for body, _ in driver.sent)
    assert chunk_size(driver.session) < 64 * KIB
    assert driver.sent[-1][0]["eof"]


def test_it_waits_while_the_session_is_not_writable_and_stops_when_cancelled(tmp_path):
    driver = RecordingDriver()
    driver.writable = False
    push = run(driver, reader_of(tmp_path, b"q" * (1024 * KIB)), 4096 * KIB)
    ended = push.ended()
    assert driver.sent == [] and not ended.called
    push.cancel()
    driver.set_writable()
    assert driver.sent == [] and ended.called


def test_a_reader_error_ends_the_push_and_leaves_the_rest_to_read_file(tmp_path):
    class BrokenReader:
        def remote_read(self, length):
            raise OSError("I/O error")

    driver = RecordingDriver()
    push = run(driver, BrokenReader(), 4096 * KIB)
    assert push.ended().called
    assert driver.sent == [({"command_id": "c1", "last": True, "eof": False}, b"")]


def test_the_push_budget_follows_the_window_the_worker_announced():
    limits = Limits(initial_transfer_window=4 << 20, max_transfer_window=32 << 20)
    budget = PushBudget(limits)
    assert budget.size == 4 << 20  # nothing announced yet
    budget.announced(12 << 20)
    assert budget.size == 12 << 20
    budget.announced(1 << 30)  # never more than the master's own window limit
    assert budget.size == limits.transfer_window_limit == 32 << 20
    budget.announced(1000)  # a window cut by pushback: at least one block goes
    assert budget.size == PUSH_CHUNK
    for unusable in (None, True, "8388608", 2.5):
        budget.announced(unusable)
        assert budget.size == PUSH_CHUNK


def test_each_pushed_block_leaves_the_reactor_a_turn(tmp_path):
    driver = RecordingDriver()
    push = DownloadPush(driver, "c1", reader_of(tmp_path, b"t" * (3 * PUSH_CHUNK)), 4 << 20)
    push.start()
    assert len(driver.sent) == 1 and not push.ended().called
    turn(driver)
    assert len(driver.sent) == 4 and push.ended().called
