"""Lists of paths for mkdir and rmfile (list_arguments.py), as Buildbot's msgpack takes."""

from __future__ import annotations

import os
from typing import Any

from buildbot_worker.commands import fs

from buildbot_worker_msgproto import list_arguments
from buildbot_worker_msgproto.bot import ProtocolCommandMsg


class Updates:
    """Stands in for the ProtocolCommand a worker command sends its updates through."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send_update(self, status: list[tuple[str, Any]]) -> None:
        self.sent.extend(status)


def run(command: Any) -> list[tuple[str, Any]]:
    command.doStart()
    return [item for item in command.protocol_command.sent if item[0] != "elapsed"]


def test_mkdir_and_rmfile_lists_are_resolved_under_the_builder_directory():
    args = {"dir": ["a", "/abs/b"]}
    assert list_arguments.translate("mkdir", args, "/w/builder")
    assert args == {"paths": ["/w/builder/a", "/abs/b"]}
    args = {"path": ["x.txt", "~/y.txt"]}
    assert list_arguments.translate("rmfile", args, "/w/builder")
    assert args["path"] == ["/w/builder/x.txt", os.path.expanduser("~/y.txt")]
    for command, single in (("mkdir", {"dir": "a"}), ("rmfile", {"path": "x"}),
                            ("rmdir", {"dir": ["a", "b"]})):
        assert not list_arguments.translate(command, dict(single), "/w/builder")


def test_rmfile_list_removes_every_file_and_reports_the_last_failure(tmp_path):
    present = [tmp_path / "a", tmp_path / "b"]
    for path in present:
        path.write_text("x")
    missing = tmp_path / "missing"
    paths = [str(present[0]), str(missing), str(present[1])]
    command = list_arguments.command_for(fs.RemoveFile(Updates(), "c1", {"path": paths}))
    assert isinstance(command, list_arguments.RemoveFiles)
    sent = run(command)
    assert not any(p.exists() for p in present)  # the failure did not stop the rest
    assert sent == [("header", f"rmfile: No such file or directory: {missing}\n"), ("rc", 2)]


def test_rmfile_list_of_present_files_succeeds(tmp_path):
    (tmp_path / "a").write_text("x")
    command = list_arguments.command_for(
        fs.RemoveFile(Updates(), "c1", {"path": [str(tmp_path / "a")]}))
    assert run(command) == [("rc", 0)]


def test_a_single_rmfile_stays_buildbot_workers(tmp_path):
    command = fs.RemoveFile(Updates(), "c1", {"path": str(tmp_path / "gone")})
    assert list_arguments.command_for(command) is command


def test_our_protocol_command_runs_a_mkdir_list(tmp_path):
    """The whole worker-side path: translation, then buildbot-worker's MakeDirectory."""
    updates: list[Any] = []
    command = ProtocolCommandMsg(
        "utf-8", str(tmp_path), str(tmp_path / "builder"), 64 * 1024, 5, 4096, None,
        True, lambda: None, lambda *_: None, "mkdir", "c1",
        {"dir": ["one/two", "three"]}, None)
    command.send_update = updates.extend
    command.command.doStart()
    assert (tmp_path / "builder" / "one" / "two").is_dir()
    assert (tmp_path / "builder" / "three").is_dir()
    assert ("rc", 0) in updates
