"""TransferOutcomes: a command completed behind its unanswered upload requests
(``pipelined_close``) ends after them, with the first one's failure (no network)."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from buildbot_msgproto.transfer_outcomes import TransferOutcomes


def _settled(outcomes: TransferOutcomes, command_id) -> list:
    got: list = []
    outcomes.settle(command_id).addCallback(got.append)
    return got


def test_no_failure_settles_at_once_with_none():
    outcomes = TransferOutcomes()
    assert outcomes.run("c1", lambda: "written") == "written"
    assert _settled(outcomes, "c1") == [None]


def test_the_first_failure_is_the_commands_and_is_still_raised_to_the_request():
    outcomes = TransferOutcomes()

    def close():
        raise IsADirectoryError(21, "Is a directory", "/dest/blocked.bin")

    def utime():
        raise FileNotFoundError(2, "No such file", "/dest/blocked.bin")

    with pytest.raises(IsADirectoryError):
        outcomes.run("c1", close)
    with pytest.raises(FileNotFoundError):
        outcomes.run("c1", utime)
    outcomes.run("c2", lambda: None)
    [failure] = _settled(outcomes, "c1")
    assert failure.startswith("IsADirectoryError: ") and "blocked.bin" in failure
    assert _settled(outcomes, "c2") == [None]
    assert _settled(outcomes, "c1") == [None]  # settling forgets the command


def test_settle_waits_for_a_call_still_running():
    outcomes = TransferOutcomes()
    unpack = defer.Deferred()
    answered: list = []
    outcomes.run("c1", lambda: unpack).addErrback(answered.append)
    got = _settled(outcomes, "c1")
    assert got == []
    unpack.errback(ValueError("not a tar archive"))
    assert len(answered) == 1  # the request's answer still gets the error
    assert len(got) == 1 and got[0].startswith("ValueError: not a tar archive")


def test_forget_drops_what_a_command_left():
    outcomes = TransferOutcomes()
    with pytest.raises(OSError):
        outcomes.run("c1", lambda: (_ for _ in ()).throw(OSError("disk full")))
    outcomes.forget("c1")
    assert _settled(outcomes, "c1") == [None]
