"""Twisted glue for the transfer windows of one session (``protocol/window.py``).

A session has one window per direction: ``upload`` counts the bytes of ``write_file``
requests not yet answered, ``download`` the bytes asked for by ``read_file`` requests not
yet answered.  Every transfer of the session shares them, as every TCP stream of a host
shares its path.  Uploads also wait for the session to be writable (its transport takes
more and its replay buffer has room), so that file data never piles up in front of the
session's other messages.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet import defer

from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.window import Sample
from buildbot_worker_msgproto.protocol.window import TransferWindow


class TransferFlow:
    """The transfer windows of one session, and the uploads waiting for room in them."""

    def __init__(self, driver: Any, limits: Limits) -> None:
        self.driver = driver
        limit = limits.transfer_window_limit
        initial = min(limits.initial_transfer_window, limit)
        self.upload = TransferWindow(initial, limit)
        self.download = TransferWindow(initial, limit)
        self._waiters: collections.deque[tuple[int, Any, defer.Deferred]] = collections.deque()
        self._waiting_writable = False

    def now(self) -> float:
        return self.driver.reactor.seconds()

    # ------------------------------------------------------------------ accounting
    def sent(self, window: TransferWindow, size: int) -> Sample:
        return window.sent(size, self.now())

    def answered(self, window: TransferWindow, sample: Sample, size: int) -> None:
        window.answered(sample, size, self.now())
        self.wake()

    def cancelled(self, window: TransferWindow, sample: Sample) -> None:
        window.cancelled(sample)
        self.wake()

    def new_path(self) -> None:
        """The session resumed over a new connection: measure the path again."""
        self.upload.new_path()
        self.download.new_path()

    # ------------------------------------------------------------------ uploads
    def room_for(self, size: int, channel: Any) -> defer.Deferred:
        """Fires once ``channel`` may send an upload block of ``size`` bytes: it fits in
        the window (or the channel has none in flight) and the session is writable.
        Waiters are served in order."""
        if not self._waiters and self._may_write(size, channel):
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((size, channel, d))
        self._watch_writable()
        return d

    def _may_write(self, size: int, channel: Any) -> bool:
        fits = channel.writes_in_flight == 0 or self.upload.may_send(size)
        return fits and self.driver.writable

    def wake(self) -> None:
        """Let waiting uploads go, in order, as far as the window and the session allow."""
        while self._waiters:
            size, channel, d = self._waiters[0]
            if not self._may_write(size, channel):
                break
            self._waiters.popleft()
            d.callback(None)
        self._watch_writable()

    def _watch_writable(self) -> None:
        if not self._waiters or self.driver.writable or self._waiting_writable:
            return
        if self.driver.session.buffer_full:  # the peer does not acknowledge: pushback
            self.upload.pushback(self.now())
        self._waiting_writable = True
        self.driver.wait_writable().addBoth(self._writable_again)

    def _writable_again(self, result: Any) -> None:
        self._waiting_writable = False
        self.wake()

    def drop(self, channel: Any) -> None:
        """Forget the waiting uploads of ``channel`` (its command is gone); their
        Deferreds fail with ``CancelledError``."""
        mine = [entry for entry in self._waiters if entry[1] is channel]
        for entry in mine:
            self._waiters.remove(entry)
            entry[2].errback(defer.CancelledError())
