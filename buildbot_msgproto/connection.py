"""The master's Connection to one msg worker: Buildbot's Connection API as messages."""

from __future__ import annotations

import contextlib
from typing import Any
from typing import Callable

from buildbot.worker.protocols import base
from twisted.internet import defer
from twisted.python import log

from buildbot_msgproto import compat
from buildbot_msgproto.config import DEFAULT_RTT_PROBE_INTERVAL
from buildbot_msgproto.download_push import DownloadPush
from buildbot_msgproto.download_push import PushBudget
from buildbot_msgproto.status import ConnectionStatus
from buildbot_msgproto.suspension import SuspensionNotice
from buildbot_msgproto.transfer_outcomes import TransferOutcomes
from buildbot_worker_msgproto.driver import Binary
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.driver import SessionLost
from buildbot_worker_msgproto.driver import listener
from buildbot_worker_msgproto.driver import responder
from buildbot_worker_msgproto.protocol import payloads
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.events import LinkLost
from buildbot_worker_msgproto.protocol.events import Resumed

#: Seconds a connection may take to deliver our ``close`` before it is dropped.
DROP_AFTER_CLOSE = 2.0


def _abort_quietly(transport: Any) -> None:
    try:
        transport.abort()
    except Exception as e:  # already gone
        log.msg(f"msgproto: dropping a closed connection: {e}")


class UnknownCommand(KeyError):
    """A worker referred to a command id that this connection did not start."""


def _jsonable(value: Any) -> Any:
    """Command arguments as JSON values (tuples become lists, bytes become text)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class MsgConnection(base.Connection, MessageHandler):
    """Implements what Buildbot's master calls on a worker connection.

    Commands, file writers and readers are looked up per connection, so a worker
    can only ever address the commands the master started on its own session.
    """

    info: Any = None
    #: Keeps the web UI's view of this connection current (once attached).
    status: ConnectionStatus | None = None

    def __init__(self, master: Any, worker: Any, driver: SessionDriver) -> None:
        super().__init__(worker.workername)
        self.master = master
        self.worker = worker
        self.driver = driver
        self.builders: list[str] = []
        self._commands: dict[Any, Any] = {}
        self._writers: dict[Any, Any] = {}
        self._readers: dict[Any, Any] = {}
        #: The writer calls of each command (its ``complete`` may follow them unanswered).
        self._transfers = TransferOutcomes()
        #: Downloads whose first bytes are being pushed (``pushed_download``).
        self._pushes: dict[Any, DownloadPush] = {}
        self._push_budget = PushBudget(driver.session.limits)
        self._detached = False
        #: What the running steps show while the session is suspended.
        self.suspension = SuspensionNotice(master.reactor, lambda: list(self._commands.values()))
        driver.handler = self
        if driver.session.is_closed:  # lost while Buildbot was still arbitrating
            self.master.reactor.callLater(0, self.detached, driver)

    # ---------------------------------------------------------------- lifecycle
    @defer.inlineCallbacks
    def attached(self, driver: SessionDriver,
                 rtt_probe_interval: float = DEFAULT_RTT_PROBE_INTERVAL) -> Any:
        yield self.worker.attached(self)
        if self._detached or self.worker.conn is not self:  # Buildbot refused it
            return
        self.status = ConnectionStatus(
            self.master.reactor, self.master.name, driver, rtt_probe_interval,
            lambda fields: compat.update_worker_info(self.master, self.worker.workerid, fields))
        self.status.start()

    @property
    def suspended(self) -> bool:
        """The connection is lost and the session waits for the worker to resume it."""
        return self.driver.session.is_suspended

    def link_lost(self, driver: SessionDriver, event: LinkLost) -> None:
        log.msg(f"msgproto: worker {self.worker.workername!r} ({driver.peer}): connection "
                f"lost ({event.code}: {event.reason}); its builds go on if it resumes within "
                f"{event.window:g} s (no new builds meanwhile)")
        self.suspension.start(event.reason, event.window)

    def resumed(self, driver: SessionDriver, event: Resumed) -> None:
        log.msg(f"msgproto: worker {self.worker.workername!r} resumed from {driver.peer} "
                f"after {event.suspended_for:.1f} s")
        self.suspension.stop(event.suspended_for)
        if self.status is not None:
            self.status.refresh()  # a resume count, maybe another transport
        self.worker.messageReceivedFromWorker()
        self.master.botmaster.maybeStartBuildsForWorker(self.worker.workername)

    def detached(self, driver: SessionDriver | None = None) -> None:
        if self._detached:
            return
        self._detached = True
        if self.status is not None:
            self.status.stop()
        self.suspension.stop(None)
        self._commands.clear()
        self._writers.clear()
        self._readers.clear()
        self._transfers.clear()
        for push in self._pushes.values():
            push.cancel()
        self._pushes.clear()
        self.notifyDisconnected()

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        log.msg(f"msgproto: worker {self.worker.workername!r} ({driver.peer}) disconnected: "
                f"{code}: {reason}")
        self.detached(driver)

    def loseConnection(self) -> None:  # noqa: N802 - Buildbot's API
        """Buildbot wants the worker gone (a user's "disconnect", a reconfig that removed
        it, a duplicate login): end the session at once, suspended or not, so that
        Buildbot's disconnect path runs now; the connection is dropped shortly after."""
        transport = self.driver.transport
        self.driver.close(CloseCode.NORMAL, "the master disconnected this worker")
        if transport is not None:
            self.master.reactor.callLater(DROP_AFTER_CLOSE, _abort_quietly, transport)

    def get_peer(self) -> str:
        return self.driver.peer

    # ---------------------------------------------------------------- master -> worker
    def remotePrint(self, message: str) -> defer.Deferred:  # noqa: N802
        return self.driver.request("print", message=str(message))

    def remoteKeepalive(self) -> defer.Deferred:  # noqa: N802
        return self.driver.request("keepalive")

    @defer.inlineCallbacks
    def remoteGetWorkerInfo(self) -> Any:  # noqa: N802
        info = yield self.driver.request("get_worker_info")
        if not isinstance(info, dict):
            raise ValueError("worker info is not an object")
        self.info = info
        return info

    @defer.inlineCallbacks
    def remoteSetBuilderList(self, builders: list[tuple[str, str]]) -> Any:  # noqa: N802
        names = yield self.driver.request(
            "set_builder_list", builders=[[name, builddir] for name, builddir in builders])
        self.builders = list(names or [])
        return self.builders

    @defer.inlineCallbacks
    def remoteStartCommand(self, remoteCommand: Any, builderName: str,  # noqa: N802,N803
                           commandId: Any, commandName: str, args: dict[str, Any]) -> Any:  # noqa: N803
        args = dict(args)
        writer = args.pop("writer", None)
        reader = args.pop("reader", None)
        if writer is not None:
            self._writers[commandId] = writer
            args["writer"] = True
        if reader is not None:
            self._readers[commandId] = reader
            args["reader"] = True
        self._commands[commandId] = remoteCommand
        push = reader is not None and self.driver.session.pushed_download
        started = self.driver.request("start_command", builder=builderName,
                                      command_id=commandId, command=commandName,
                                      args=_jsonable(args), **({"push": True} if push else {}))
        if push:  # the file's first bytes go right behind the start
            self._pushes[commandId] = DownloadPush(
                self.driver, commandId, reader, self._push_budget.size)
            self._pushes[commandId].start()
        try:
            yield started
        except Exception:
            self._forget(commandId)
            raise

    @defer.inlineCallbacks
    def remoteShutdown(self) -> Any:  # noqa: N802
        with contextlib.suppress(SessionLost):  # the worker going away is what we asked
            yield self.driver.request("shutdown")

    def remoteStartBuild(self, builderName: str) -> defer.Deferred:  # noqa: N802,N803
        return defer.succeed(None)

    def remoteInterruptCommand(self, builderName: str, commandId: Any,  # noqa: N802,N803
                               why: str) -> defer.Deferred:  # noqa: N803
        return self.driver.request("interrupt_command", builder=builderName,
                                   command_id=commandId, why=str(why))

    # ---------------------------------------------------------------- worker -> master
    def _command(self, message: dict[str, Any]) -> Any:
        command = self._commands.get(message["command_id"])
        if command is None:
            raise UnknownCommand(f"no running command {message['command_id']!r} on this "
                                 "connection")
        return command

    def _lookup(self, table: dict[Any, Any], message: dict[str, Any], what: str) -> Any:
        item = table.get(message["command_id"])
        if item is None:
            raise UnknownCommand(f"no {what} for command {message['command_id']!r} on this "
                                 "connection")
        return item

    def _forget(self, command_id: Any) -> None:
        self._commands.pop(command_id, None)
        self._writers.pop(command_id, None)
        self._readers.pop(command_id, None)
        self._transfers.forget(command_id)
        push = self._pushes.pop(command_id, None)
        if push is not None:
            push.cancel()

    @listener("update")
    def on_update(self, message: dict[str, Any]) -> None:
        try:
            command = self._command(message)
        except UnknownCommand as e:
            log.msg(f"msgproto: ignoring update from {self.worker.workername!r}: {e}")
            return
        command.remote_update_msgpack(payloads.decode_updates(message["updates"]))

    @listener("complete")
    def on_complete(self, message: dict[str, Any]) -> None:
        try:
            command = self._command(message)
        except UnknownCommand as e:
            log.msg(f"msgproto: ignoring completion from {self.worker.workername!r}: {e}")
            return
        command_id = message["command_id"]
        failure = payloads.decode_failure(message.get("failure"))
        settled = self._transfers.settle(command_id)
        settled.addCallback(self._complete, command_id, command, failure)
        settled.addErrback(log.err, f"msgproto: completing command {command_id!r}")

    def _complete(self, transfer_failure: str | None, command_id: Any, command: Any,
                  failure: str | None) -> None:
        """End the command once its writer calls did; a failed one fails the command
        (a ``pipelined_close`` worker did not wait for that answer)."""
        if failure is None and transfer_failure is not None:
            log.msg(f"msgproto: command {command_id!r} of {self.worker.workername!r} "
                    f"fails: its upload failed on the master ({transfer_failure.splitlines()[0]})")
            failure = transfer_failure
        self._forget(command_id)
        command.remote_complete(failure)

    def _writer_call(self, message: dict[str, Any], what: str, call: Callable[[Any], Any]) -> Any:
        writer = self._lookup(self._writers, message, what)
        return self._transfers.run(message["command_id"], lambda: call(writer))

    @responder("write_file")
    def on_write_file(self, message: dict[str, Any]) -> Any:
        block = payloads.block_in(message, "data")
        return self._writer_call(message, "file writer", lambda w: w.remote_write(block))

    @responder("utime_file")
    def on_utime_file(self, message: dict[str, Any]) -> Any:
        times = (message["access_time"], message["modified_time"])
        return self._writer_call(message, "file writer", lambda w: w.remote_utime(times))

    @responder("close_writer")
    def on_close_writer(self, message: dict[str, Any]) -> Any:
        return self._writer_call(message, "file writer", lambda w: w.remote_close())

    @responder("unpack_writer")
    def on_unpack_writer(self, message: dict[str, Any]) -> Any:
        return self._writer_call(message, "directory writer", lambda w: w.remote_unpack())

    @responder("read_file")
    @defer.inlineCallbacks
    def on_read_file(self, message: dict[str, Any]) -> Any:
        """The next chunk of the file.  While the session is not writable (its transport
        or replay buffer is full) the read waits, one chunk going out each time it becomes
        writable, so that file data does not pile up in front of the session's other
        messages; waiting reads go on in the order received, so the file is read in order
        (``read_file`` carries no offset)."""
        reader = self._lookup(self._readers, message, "file reader")
        self._push_budget.announced(message.get("window"))
        yield self._push_ended(message)  # reads continue after the pushed bytes
        while not self.driver.writable:
            yield self.driver.wait_writable()
        data = yield reader.remote_read(message["length"])
        if isinstance(data, str):
            data = data.encode("utf-8")
        return Binary(data or b"")

    @responder("close_reader")
    @defer.inlineCallbacks
    def on_close_reader(self, message: dict[str, Any]) -> Any:
        reader = self._lookup(self._readers, message, "file reader")
        push = self._pushes.get(message["command_id"])
        if push is not None:  # the worker wants no more bytes
            push.cancel()
            yield push.ended()
        return reader.remote_close()

    def _push_ended(self, message: dict[str, Any]) -> defer.Deferred:
        push = self._pushes.get(message["command_id"])
        return defer.succeed(None) if push is None else push.ended()

    @responder("request_shutdown")
    def on_request_shutdown(self, message: dict[str, Any]) -> None:
        self.worker.messageReceivedFromWorker()
        self.worker.shutdownRequested()

    @responder("keepalive")
    def on_keepalive(self, message: dict[str, Any]) -> None:
        self.worker.messageReceivedFromWorker()
