"""Large transfers over a slow, long link do not starve the session's other traffic.

The master's real ``MsgConnection`` (with Buildbot's own ``FileReader`` / ``FileWriter``)
and the worker's real ``BotMsg`` (buildbot-worker's own ``downloadFile`` / ``uploadFile``
commands, our transfer windows) talk through real sessions over a simulated link of
1 MB/s with a 100 ms round trip (``simlink.py``: no netem here, and the fault proxy has
no bandwidth cap), on a fake clock.  While a 24 MiB file moves (about 25 s of link
time), the master's keepalive, another command's log updates and an interrupt must get
through with little file data ahead of them: at most ``AHEAD`` bytes, where a window
that let the data pile up in buffers (the fixed 16 x 256 KiB before) queues 4 MiB.
The assertions count bytes, not seconds.
"""

from __future__ import annotations

import os
import types
from typing import Any

import pytest
from buildbot.process import remotetransfer
from buildbot_worker.commands import base as worker_commands
from twisted.internet import task

from buildbot_msgproto.connection import MsgConnection
from buildbot_worker_msgproto.bot import BotMsg
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol.auth import ScramCredentials
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from master_tests.simlink import SimulatedLink

MIB = 1 << 20
RATE = 1e6  # bytes per second, each way
ONE_WAY = 0.05  # seconds
FILE_SIZE = 24 * MIB
#: The most file data allowed ahead of another message (the link's send buffer, what
#: the window keeps on the path, and one block).
AHEAD = 2 * MIB
LIMITS = Limits(auth_iterations=16, heartbeat_interval=2, heartbeat_timeout=6)
STEP = 0.01  # seconds of fake time per clock step


class RecordingCommand:
    """The master's side of a running command (a RemoteCommand's remote_* methods)."""

    def __init__(self, on_update: Any = None) -> None:
        self.updates: list[Any] = []
        self.completed: Any = None
        self.on_update = on_update

    def remote_update_msgpack(self, updates: list) -> None:
        self.updates.extend(updates)
        if self.on_update is not None:
            self.on_update(updates)

    def remote_complete(self, failure: Any = None) -> None:
        self.completed = ("done", failure)


class CountingReader(remotetransfer.FileReader):
    def __init__(self, fp: Any) -> None:
        super().__init__(fp)
        self.count = 0

    def remote_read(self, maxlength: int) -> Any:
        data = super().remote_read(maxlength)
        self.count += len(data)
        return data


class CountingWriter(remotetransfer.FileWriter):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.count = 0

    def remote_write(self, data: bytes) -> None:
        self.count += len(data)
        super().remote_write(data)


class MasterSide(MessageHandler):
    """The master's handshake, then Buildbot's connection object for the session."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.credentials = ScramCredentials.from_password("pw", LIMITS.auth_iterations)
        self.conn: MsgConnection | None = None

    def hello_received(self, driver: SessionDriver, event: Any) -> None:
        driver.answer_hello(self.credentials)

    def authenticated(self, driver: SessionDriver, event: Any) -> None:
        master = types.SimpleNamespace(reactor=self.clock)
        worker = types.SimpleNamespace(workername="w1", messageReceivedFromWorker=lambda: None)
        self.conn = MsgConnection(master, worker, driver)


@pytest.fixture
def rig(tmp_path, monkeypatch):
    clock = task.Clock()
    monkeypatch.setattr(worker_commands.Command, "_reactor", clock)
    master = MasterSide(clock)
    master_driver = SessionDriver(Session(Role.MASTER, LIMITS, now=0.0), master, clock)
    os.makedirs(tmp_path / "worker")
    bot = BotMsg(str(tmp_path / "worker"))
    bot.limits = LIMITS
    bot.startService()
    worker_driver = SessionDriver(Session(Role.WORKER, LIMITS, now=0.0, worker_name="w1",
                                          password="pw"), bot, clock)
    link = SimulatedLink(clock, RATE, ONE_WAY)
    link.connect(master_driver, worker_driver)
    rig = types.SimpleNamespace(clock=clock, master=master, bot=bot, link=link,
                                master_driver=master_driver, worker_driver=worker_driver,
                                tmp=tmp_path)
    run_until(rig, lambda: master.conn is not None and bot.driver is not None, 5)
    names = []
    master.conn.remoteSetBuilderList([("b1", "b1")]).addCallback(names.append)
    run_until(rig, lambda: names, 5)
    os.makedirs(tmp_path / "worker" / "b1" / "wd", exist_ok=True)
    yield rig
    assert not master_driver.session.is_closed, master_driver.session.close_reason
    bot.stopService()


def run_until(rig: Any, condition: Any, seconds: float) -> None:
    """Advance the fake clock in small steps until ``condition()`` (bounded)."""
    for _ in range(int(seconds / STEP)):
        if condition():
            return
        rig.clock.advance(STEP)
    assert condition(), f"not reached within {seconds} s of fake time"


def test_keepalive_and_interrupt_get_through_a_large_download(rig):
    source = rig.tmp / "source.bin"
    source.write_bytes(os.urandom(FILE_SIZE))
    reader = CountingReader(open(source, "rb"))  # noqa: SIM115 - the reader closes it
    command = RecordingCommand()
    rig.master.conn.remoteStartCommand(command, "b1", "dl", "downloadFile", {
        "workdir": "wd", "workerdest": "dl.bin", "reader": reader, "maxsize": None,
        "blocksize": 16384, "mode": None})
    run_until(rig, lambda: rig.clock.seconds() >= 8.0, 9)
    assert reader.count > 0.7 * RATE * 7, "the download should use the link"

    # the keepalive (Buildbot's heartbeat of the worker) gets through
    answered = []
    before = reader.count
    rig.master.conn.remoteKeepalive().addCallback(answered.append)
    run_until(rig, lambda: answered, 10)
    assert reader.count - before <= AHEAD

    # an interrupt stops the transfer with little data behind it
    run_until(rig, lambda: rig.clock.seconds() >= 10.0, 5)
    at_interrupt = reader.count
    rig.master.conn.remoteInterruptCommand("b1", "dl", "test interrupt")
    run_until(rig, lambda: command.completed is not None, 30)
    assert reader.count - at_interrupt <= AHEAD
    assert reader.count < FILE_SIZE / 2
    assert ("rc", 1) in command.updates
    written = os.path.getsize(rig.tmp / "worker" / "b1" / "wd" / "dl.bin")
    assert written <= reader.count


def test_log_updates_and_interrupt_get_through_a_large_upload(rig):
    source = rig.tmp / "worker" / "b1" / "wd" / "up.bin"
    source.write_bytes(os.urandom(FILE_SIZE))
    writer = CountingWriter(str(rig.tmp / "dest.bin"), None, None)
    command = RecordingCommand()
    arrivals: list[tuple[int, int]] = []  # (line number, bytes written on arrival)
    chatty = RecordingCommand(
        on_update=lambda updates: arrivals.extend(
            (int(value[0]), writer.count) for key, value in updates if key == "stdout"))
    rig.master.conn._commands["chatty"] = chatty  # another command's output, as a shell's
    # DirectoryUpload's 16 KiB blocks: joined into bigger ones by the worker
    rig.master.conn.remoteStartCommand(command, "b1", "ul", "uploadFile", {
        "workdir": "wd", "workersrc": "up.bin", "writer": writer, "maxsize": None,
        "blocksize": 16384, "keepstamp": False})
    sent: list[int] = []  # bytes written on the master when line N was sent

    def print_line() -> None:
        sent.append(writer.count)
        rig.worker_driver.notify("update", command_id="chatty",
                                 updates=[["stdout", f"{len(sent) - 1}\n"]])

    printer = task.LoopingCall(print_line)
    printer.clock = rig.clock
    printer.start(0.25)
    run_until(rig, lambda: rig.clock.seconds() >= 10.0, 11)
    at_interrupt = writer.count
    assert at_interrupt > 0.7 * RATE * 9, "the upload should use the link"
    rig.master.conn.remoteInterruptCommand("b1", "ul", "test interrupt")
    run_until(rig, lambda: command.completed is not None, 30)
    printer.stop()
    run_until(rig, lambda: len(arrivals) == len(sent), 5)

    assert writer.count - at_interrupt <= AHEAD
    assert [n for n, _ in arrivals] == list(range(len(sent)))
    ahead = [written - sent[n] for n, written in arrivals]
    assert len(ahead) >= 40 and max(ahead) <= AHEAD, max(ahead)
    assert ("rc", 1) in command.updates


def test_both_directions_fill_a_fast_link(rig):
    """The same link at 1 MB/s is filled: the window does not starve the transfer
    either (24 MiB in about 25 s of link time, not the 4 MiB per round trip a fixed
    window would allow, which is more than the link here anyway)."""
    source = rig.tmp / "source.bin"
    source.write_bytes(os.urandom(4 * MIB))
    reader = CountingReader(open(source, "rb"))  # noqa: SIM115 - the reader closes it
    command = RecordingCommand()
    start = rig.clock.seconds()
    rig.master.conn.remoteStartCommand(command, "b1", "dl2", "downloadFile", {
        "workdir": "wd", "workerdest": "dl2.bin", "reader": reader, "maxsize": None,
        "blocksize": 16384, "mode": None})
    run_until(rig, lambda: command.completed is not None, 30)
    elapsed = rig.clock.seconds() - start
    assert (rig.tmp / "worker" / "b1" / "wd" / "dl2.bin").read_bytes() == source.read_bytes()
    assert 4 * MIB / elapsed > 0.8 * RATE
