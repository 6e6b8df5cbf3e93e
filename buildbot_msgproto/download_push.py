"""The first bytes of a download, pushed to the worker with the command's start.

With the ``pushed_download`` feature (docs/commands.rst section 7.5) the master does not
wait for the worker's first ``read_file``: right behind ``start_command`` it sends up to
``budget`` bytes of the file as ``file_data`` notifications, the last one marked
``last`` (and ``eof`` if the file ended).  The worker asks for the rest with
``read_file`` as usual; the master answers those only after the push, so the bytes
arrive in file order.  A download step then costs one round trip instead of two.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_worker_msgproto.protocol import payloads

#: Bytes per ``file_data`` message (the worker's read-ahead chunk).
PUSH_CHUNK = payloads.TRANSFER_BLOCK


def chunk_size(session: Any) -> int:
    """The largest push chunk that fits the session's frames (as base64 too)."""
    return min(PUSH_CHUNK, payloads.largest_block(session.max_outgoing_frame_size,
                                                  session.blobs_enabled))


class PushBudget:
    """How many bytes of a download the master pushes: the download window the worker
    announced with its last ``read_file`` (``window``), or ``initial_transfer_window``
    before it announced one; never more than the master's ``transfer_window_limit``.

    The worker's window is sized to the path (protocol.rst section 12.1): a long fat path
    gets a push that fills its first round trip, a short one a push that does not make
    the master read and frame more than the path can take (docs/commands.rst 7.5).
    """

    def __init__(self, limits: Any) -> None:
        self.limit = limits.transfer_window_limit
        self.size = min(limits.initial_transfer_window, self.limit)

    def announced(self, window: Any) -> None:
        """The worker's ``read_file`` said its download window is ``window`` bytes (None:
        it did not say)."""
        if isinstance(window, int) and not isinstance(window, bool):
            self.size = max(PUSH_CHUNK, min(self.limit, window))


class DownloadPush:
    """Pushes the first ``budget`` bytes of ``reader`` for ``command_id``.

    Reads only while the session is writable, as answers to ``read_file`` do, so that
    file data does not pile up in front of the session's other messages.
    """

    def __init__(self, driver: Any, command_id: Any, reader: Any, budget: int) -> None:
        self.driver = driver
        self.command_id = command_id
        self.reader = reader
        self.budget = budget
        self.sent = 0
        self._ended = False
        self._cancelled = False
        self._waiters: list[defer.Deferred] = []

    def start(self) -> None:
        self._run().addErrback(log.err, f"msgproto: pushing download {self.command_id!r}")

    def ended(self) -> defer.Deferred:
        """Fires once the push is over (the worker's reads may be answered)."""
        if self._ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def cancel(self) -> None:
        """The command is gone: send nothing more."""
        self._cancelled = True

    @defer.inlineCallbacks
    def _run(self) -> Any:
        try:
            yield self._push()
        except Exception as e:
            # the worker goes on with read_file, whose answer reports the error
            log.msg(f"msgproto: could not push download {self.command_id!r}: {e}")
            self._send(b"", last=True, eof=False)
        finally:
            self._end()

    @defer.inlineCallbacks
    def _push(self) -> Any:
        chunk = chunk_size(self.driver.session)
        while not self._cancelled:
            while not self.driver.writable:
                yield self.driver.wait_writable()
                if self._cancelled:
                    return
            want = min(chunk, self.budget - self.sent)
            data, eof = b"", False
            while len(data) < want:  # a short read is read on: the end goes with the data
                got = yield defer.maybeDeferred(self.reader.remote_read, want - len(data))
                if not got:
                    eof = True
                    break
                data += got.encode("utf-8") if isinstance(got, str) else got
            self.sent += len(data)
            last = eof or self.sent >= self.budget
            self._send(data, last=last, eof=eof)
            if last:
                return
            # a reactor turn per block: the transport sends this one while the next is
            # read and framed (a transport that stays writable for many MiB, AMQP's, would
            # otherwise see the whole push framed before its first byte went out)
            yield task.deferLater(self.driver.reactor, 0, lambda: None)

    def _send(self, data: bytes, last: bool, eof: bool) -> None:
        if self._cancelled:
            return
        text, blob = payloads.block_out(data, self.driver.session.blobs_enabled)
        body: dict[str, Any] = {"command_id": self.command_id, "last": last, "eof": eof}
        if text is not None:
            body["data"] = text
        self.driver.notify("file_data", blob=blob, **body)

    def _end(self) -> None:
        self._ended = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
