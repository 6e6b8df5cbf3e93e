"""What a user sees while a worker's session is suspended (its connection lost).

Buildbot is not told of the loss (the build goes on when the worker resumes), so the
running steps say it instead: their state string in the web UI reads "worker connection
lost, resuming (N s left)", refreshed every few seconds, and their stdio log gets a header
line when the connection was lost and another when it came back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

#: Seconds between refreshes of the "N s left" state string.
REFRESH_EVERY = 5.0


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


class SuspensionNotice:
    """Shows a connection's suspension on the steps of its running commands."""

    def __init__(self, reactor: Any, commands: Any) -> None:
        """``commands``: a callable returning the connection's running RemoteCommands."""
        self.reactor = reactor
        self.commands = commands
        self.deadline: float | None = None
        self._loop: task.LoopingCall | None = None

    @property
    def active(self) -> bool:
        return self.deadline is not None

    def start(self, reason: str, window: float) -> None:
        """The connection is lost; it may resume within ``window`` seconds."""
        self.deadline = self.reactor.seconds() + window
        self._headers(f"msgproto: worker connection lost at {_clock(time.time())} "
                      f"({reason}); the step waits up to {window:g} s for it to resume\n")
        self._loop = task.LoopingCall(self._refresh)
        self._loop.clock = self.reactor
        self._loop.start(REFRESH_EVERY, now=True).addErrback(
            log.err, "msgproto: refreshing the suspended steps' state")

    def stop(self, resumed_after: float | None) -> None:
        """The connection resumed (after that many seconds), or the session ended (None)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.deadline is None:
            return
        self.deadline = None
        if resumed_after is not None:
            self._headers(f"msgproto: worker connection resumed at {_clock(time.time())}, "
                          f"after {resumed_after:.1f} s\n")
        for step in self._steps():
            step.updateSummary()  # back to the step's own state string

    def _refresh(self) -> None:
        left = max(0.0, self.deadline - self.reactor.seconds()) if self.deadline else 0.0
        for step in self._steps():
            if step.stepid is not None:
                d = step.master.data.updates.setStepStateString(
                    step.stepid, f"worker connection lost, resuming ({left:.0f} s left)")
                defer.maybeDeferred(lambda d=d: d).addErrback(
                    log.err, "msgproto: setting a suspended step's state")

    def _steps(self) -> Iterable[Any]:
        seen = set()
        for command in self.commands():
            step = getattr(command, "step", None)
            if step is not None and id(step) not in seen:
                seen.add(id(step))
                yield step

    def _headers(self, text: str) -> None:
        for command in self.commands():
            d = command.addHeader(text)
            d.addErrback(log.err, "msgproto: writing a suspension header")
