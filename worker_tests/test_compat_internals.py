"""The private buildbot-worker internals the worker side relies on (see compat.py)."""

from __future__ import annotations

import os

from buildbot_worker.scripts import create_worker as upstream

from buildbot_worker_msgproto import compat


def _config(basedir: str) -> dict:
    from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions

    options = CreateWorkerOptions()
    options.parseOptions([basedir, "127.0.0.1:9989", "w1", "secret"])
    return options


def test_buildbot_worker_create_worker_internals_exist():
    for name in ("_make_tac", "_makeBaseDir", "_makeBuildbotTac", "_makeInfoFiles",
                 "CreateWorkerError"):
        assert hasattr(upstream, name), f"buildbot_worker.scripts.create_worker.{name} is gone"


def test_stock_tac_still_has_what_create_worker_rewrites(tmp_path):
    from buildbot_worker_msgproto.scripts.create_worker import STOCK_CALL
    from buildbot_worker_msgproto.scripts.create_worker import STOCK_IMPORT

    tac = compat.stock_worker_tac(_config(str(tmp_path / "w")))
    assert STOCK_IMPORT in tac and STOCK_CALL in tac and "protocol = " in tac, \
        "buildbot-worker's buildbot.tac template changed"


def test_write_worker_dir_makes_the_directory_tac_and_info_files(tmp_path):
    basedir = str(tmp_path / "w")
    compat.write_worker_dir(basedir, "# tac\n", quiet=True)
    with open(os.path.join(basedir, "buildbot.tac"), encoding="utf-8") as f:
        assert f.read() == "# tac\n"
    assert os.path.isfile(os.path.join(basedir, "info", "admin"))
    assert os.path.isfile(os.path.join(basedir, "info", "host"))


def test_enlarged_socket_io_reads_and_sends_more_per_call():
    """``enlarge_socket_io`` relies on Twisted's ``tcp.Connection`` reading
    ``bufferSize`` bytes per ``doRead`` and sending ``SEND_LIMIT`` per ``writeSomeData``
    (a Unix socket pair under a real ``tcp.Connection``; no reactor runs)."""
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    class Recorder(Protocol):
        def __init__(self) -> None:
            self.reads: list[int] = []

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.reads.append(len(data))

    ours, theirs = socket.socketpair()
    try:
        theirs.setblocking(False)
        ours.setblocking(False)
        recorder = Recorder()
        connection = tcp.Connection(ours, recorder)
        recorder.makeConnection(connection)
        compat.enlarge_socket_io(connection)
        theirs.sendall(b"r" * (150 * 1024))
        connection.doRead()
        assert recorder.reads == [150 * 1024], "tcp.Connection.doRead no longer reads bufferSize"
        sent = connection.writeSomeData(b"s" * (4 << 20))
        assert 128 * 1024 < sent <= compat.STREAM_IO_BYTES, \
            f"tcp.Connection.writeSomeData sent {sent} bytes: SEND_LIMIT no longer applies"
    finally:
        ours.close()
        theirs.close()
