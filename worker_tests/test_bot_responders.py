"""The worker's responders (BotMsg), called as the driver calls them, without a network."""

from __future__ import annotations

import os
import types

import pytest
from twisted.internet import defer

from buildbot_worker_msgproto.bot import BotMsg


@pytest.fixture
def bot(tmp_path):
    basedir = tmp_path / "worker"
    (basedir / "info").mkdir(parents=True)
    (basedir / "info" / "admin").write_text("Admin <admin@example.org>\n")
    (basedir / "info" / "host").write_text("a test host\n")
    bot = BotMsg(str(basedir))
    bot.startService()
    yield bot
    bot.stopService()


def result(d):
    out = []
    defer.maybeDeferred(lambda: d).addBoth(out.append)
    return out[0]


def test_get_worker_info_is_json_with_the_command_versions(bot):
    info = bot.on_get_worker_info({})
    assert info["admin"] == "Admin <admin@example.org>\n"
    assert info["host"] == "a test host\n"
    assert info["worker_commands"]["shell"] and info["worker_commands"]["downloadFile"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info["environ"].items())


def test_set_builder_list_makes_the_builders_and_answers_their_names(bot):
    names = result(bot.on_set_builder_list({"builders": [["b2", "dir2"], ["b1", "dir1"]]}))
    assert names == ["b1", "b2"]
    assert os.path.isdir(os.path.join(bot.basedir, "dir1"))
    assert set(bot.builders) == {"b1", "b2"}


def test_a_command_for_an_unknown_builder_is_refused(bot):
    with pytest.raises(KeyError, match="no such builder"):
        bot.on_start_command({"builder": "nope", "command_id": 1, "command": "shell",
                              "args": {}})
    with pytest.raises(KeyError, match="no such builder"):
        bot.on_interrupt_command({"builder": "nope", "command_id": 1, "why": "x"})


def test_print_and_keepalive_answer_nothing(bot):
    assert bot.on_print({"message": "hello"}) is None
    assert bot.on_keepalive({}) is None


class Process:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.calls.append("pause")

    def resumeProducing(self) -> None:  # noqa: N802
        self.calls.append("resume")


def test_a_full_session_pauses_the_running_shell_commands(bot):
    result(bot.on_set_builder_list({"builders": [["b1", "dir1"], ["b2", "dir2"]]}))
    process = Process()
    running = types.SimpleNamespace(command=types.SimpleNamespace(
        command=types.SimpleNamespace(process=process)))
    bot.builders["b1"].protocol_command = running  # b2 runs nothing
    driver = object()
    bot.driver = driver
    bot.writable_changed(driver, False)
    bot.writable_changed(driver, True)
    assert process.calls == ["pause", "resume"]
    bot.writable_changed(object(), False)  # another (old) session: ignored
    assert process.calls == ["pause", "resume"]
    bot.builders["b1"].protocol_command = None
