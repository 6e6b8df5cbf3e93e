"""Worker-side glue: buildbot-worker's Bot and commands, driven by msg sessions.

The builder bookkeeping, path handling and every worker command are
buildbot-worker's own (``BotPbLike``, ``WorkerForBuilderPbLike``,
``ProtocolCommandPb.protocol_args_setup``); only the ``protocol_*`` hooks that
talk to the master are replaced by messages.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any
from typing import Callable

from buildbot_worker.pb import BotPb
from buildbot_worker.pb import ProtocolCommandPb
from buildbot_worker.pb import WorkerForBuilderPb
from twisted.internet import defer
from twisted.python import log

from buildbot_worker_msgproto import compat
from buildbot_worker_msgproto import list_arguments
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.driver import responder
from buildbot_worker_msgproto.protocol import payloads
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS

#: Downloads (master -> worker) are read ahead in chunks of at least this many bytes and
#: handed to the command in the block sizes it asks for (FileDownload asks for 16 KiB):
#: 16x fewer messages, which is what a broker (AMQP) or WebSocket pays for per message.
READ_AHEAD_CHUNK = 256 * 1024


class CommandChannel:
    """The worker's handle on one running command: sends its messages to the master.

    File transfers are pipelined: up to ``window`` write or read requests are in
    flight at once, instead of one round trip per block as with PB; reads ask for
    ``READ_AHEAD_CHUNK`` bytes at a time (at most ``window`` of them ahead).
    """

    def __init__(self, driver: SessionDriver, command_id: str | int,
                 window: int = DEFAULT_LIMITS.transfer_window,
                 on_finished: Callable[[], None] | None = None) -> None:
        self.driver = driver
        self.command_id = command_id
        self._on_finished = on_finished
        self.window = window
        self.reactor = driver.reactor
        self._lost_callbacks: list[Callable] = []
        self._writes: collections.deque[defer.Deferred] = collections.deque()
        self._write_error: Any = None
        self._reads: collections.deque[defer.Deferred] = collections.deque()
        self._read_buffer = bytearray()
        self._read_eof = False

    # --- disconnect notification, as PB RemoteReferences offer it
    def notifyOnDisconnect(self, callback: Callable) -> None:  # noqa: N802 - PB's name
        self._lost_callbacks.append(callback)

    def dontNotifyOnDisconnect(self, callback: Callable) -> None:  # noqa: N802
        if callback in self._lost_callbacks:
            self._lost_callbacks.remove(callback)

    def lost(self) -> None:
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.err(None, "msgproto: in lost-connection callback")

    def finished(self) -> None:
        """The command completed: forget it."""
        self.discard_reads()
        if self._on_finished is not None:
            self._on_finished()
            self._on_finished = None

    # --- plain messages
    def notify(self, message_type: str, **body: Any) -> None:
        self.driver.notify(message_type, command_id=self.command_id, **body)

    def request(self, message_type: str, blob: bytes | None = None,
                **body: Any) -> defer.Deferred:
        return self.driver.request(message_type, blob, command_id=self.command_id, **body)

    # --- pipelined upload
    def write(self, data: bytes) -> defer.Deferred:
        if self._write_error is not None:
            return defer.fail(self._write_error)
        text, blob = payloads.block_out(data, self.driver.session.blobs_enabled)
        d = self.request("write_file", blob=blob, **({} if text is None else {"data": text}))
        d.addErrback(self._remember_write_error)
        self._writes.append(d)
        d.addBoth(self._write_done, d)
        ready = defer.Deferred()
        if len(self._writes) < self.window and self.driver.writable:
            # Fire on a later reactor turn: the worker's transfer loop recurses on an
            # already-fired Deferred, which would exhaust the stack on big files.
            self.reactor.callLater(0, ready.callback, None)
        elif len(self._writes) >= self.window:
            self._writes[0].addBoth(lambda result: ready.callback(None))
        else:  # the socket's send buffer is full: wait until it drains
            self.driver.wait_writable().addBoth(
                lambda _: self.reactor.callLater(0, ready.callback, None))
        return ready

    def _remember_write_error(self, failure: Any) -> None:
        if self._write_error is None:
            self._write_error = failure.value
        return None

    def _write_done(self, result: Any, d: defer.Deferred) -> Any:
        with contextlib.suppress(ValueError):
            self._writes.remove(d)
        return result

    @defer.inlineCallbacks
    def flush_writes(self) -> Any:
        """Wait for every in-flight write; raise the first write error, if any."""
        while self._writes:
            yield self._writes[0]
        if self._write_error is not None:
            raise self._write_error

    # --- read-ahead download
    def read(self, length: int) -> defer.Deferred:
        """Up to ``length`` bytes of the master's file (b'' at its end), read ahead.

        buildbot-worker's transfer commands read one block at a time, so at most one
        ``read`` is pending; the read-ahead chunks arrive in order.
        """
        if self._read_buffer or (self._read_eof and not self._reads):
            return defer.succeed(self._take(length))
        if not self._read_eof:
            self._prefetch(length)
        result = defer.Deferred()
        d = self._reads.popleft()
        d.addCallback(self._got_chunk)
        d.addCallback(lambda _: self._take(length))
        d.addBoth(result.callback)
        return result

    def _prefetch(self, length: int) -> None:
        # a chunk must fit in one frame, also as base64 in JSON (peers without 'blob')
        fits = self.driver.session.max_incoming_frame_size * 3 // 4 - 4096
        chunk = max(length, min(READ_AHEAD_CHUNK, fits))
        while len(self._reads) < self.window:
            self._reads.append(self.request("read_file", length=chunk))

    def _got_chunk(self, result: bytes | str | None) -> None:
        chunk = payloads.block_result(result)
        if not chunk:
            self._read_eof = True  # later chunks (already requested) are empty too
        self._read_buffer += chunk

    def _take(self, length: int) -> bytes:
        block = bytes(self._read_buffer[:length])
        del self._read_buffer[:length]
        return block

    def discard_reads(self) -> None:
        for d in self._reads:
            d.addErrback(lambda f: None)
        self._reads.clear()
        self._read_buffer.clear()


class ProtocolCommandMsg(ProtocolCommandPb):
    """A running command whose updates and file transfers travel as msg messages.

    ``command_ref`` is the :class:`CommandChannel`; the argument translation is PB's,
    plus the lists of paths of Buildbot's msgpack protocol (:mod:`.list_arguments`).
    """

    command_ref: CommandChannel

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.command = list_arguments.command_for(self.command)

    def protocol_args_setup(self, command: str, args: dict[str, Any]) -> None:
        if not list_arguments.translate(command, args, self.basedir):
            super().protocol_args_setup(command, args)
        if command in ("uploadFile", "uploadDirectory", "upload_file", "upload_directory"):
            args["writer"] = self.command_ref
        if command in ("downloadFile", "download_file"):
            args["reader"] = self.command_ref

    def protocol_send_update_message(self, message: list[tuple[str, Any]]) -> None:
        if self.command_ref is None:
            return
        self.command_ref.notify("update", updates=payloads.encode_updates(message))

    def protocol_notify_on_disconnect(self) -> None:
        self.command_ref.notifyOnDisconnect(self.on_lost_remote_step)

    def protocol_complete(self, failure: Any) -> defer.Deferred:
        self.flush_command_output()
        if self.command_ref is None:
            return defer.succeed(None)
        self.command_ref.dontNotifyOnDisconnect(self.on_lost_remote_step)
        self.command_ref.notify("complete", failure=payloads.encode_failure(failure))
        self.command_ref.finished()
        return defer.succeed(None)

    def protocol_update_upload_file_write(self, writer: Any, data: bytes) -> defer.Deferred:
        return self.command_ref.write(data)

    def protocol_update_upload_directory_write(self, writer: Any, data: bytes) -> defer.Deferred:
        return self.command_ref.write(data)

    @defer.inlineCallbacks
    def protocol_update_upload_file_close(self, writer: Any) -> Any:
        yield self.command_ref.flush_writes()
        yield self.command_ref.request("close_writer")

    @defer.inlineCallbacks
    def protocol_update_upload_file_utime(self, writer: Any, access_time: float,
                                          modified_time: float) -> Any:
        yield self.command_ref.flush_writes()
        yield self.command_ref.request("utime_file", access_time=access_time,
                                       modified_time=modified_time)

    @defer.inlineCallbacks
    def protocol_update_upload_directory(self, writer: Any) -> Any:
        yield self.command_ref.flush_writes()
        yield self.command_ref.request("unpack_writer")

    def protocol_update_read_file(self, reader: Any, length: int) -> defer.Deferred:
        return self.command_ref.read(length)

    def protocol_update_read_file_close(self, reader: Any) -> defer.Deferred:
        self.command_ref.discard_reads()
        return self.command_ref.request("close_reader")


class WorkerForBuilderMsg(WorkerForBuilderPb):
    """One builder on the worker, serving commands from msg sessions or from PB.

    The same worker process falls back to PB against a stock master, so each
    command picks its protocol class from the handle the command arrived with.
    """

    def remote_startCommand(self, command_ref: Any, command_id: Any, command: Any,  # noqa: N802
                            args: Any) -> None:
        if isinstance(command_ref, CommandChannel):
            self.ProtocolCommand = ProtocolCommandMsg
        else:
            self.ProtocolCommand = ProtocolCommandPb
        return super().remote_startCommand(command_ref, command_id, command, args)


class BotMsg(BotPb, MessageHandler):
    """The worker-side bot: answers msg requests, and PB calls after a PB fallback."""

    WorkerForBuilder = WorkerForBuilderMsg

    def __init__(self, basedir: str, unicode_encoding: str | None = None,
                 delete_leftover_dirs: bool = False) -> None:
        BotPb.__init__(self, basedir, unicode_encoding=unicode_encoding,
                       delete_leftover_dirs=delete_leftover_dirs)
        self.driver: SessionDriver | None = None
        self.transfer_window = DEFAULT_LIMITS.transfer_window
        self._channels: dict[Any, CommandChannel] = {}

    # --- session lifecycle
    def attach(self, driver: SessionDriver) -> None:
        self.driver = driver

    def detach(self, driver: SessionDriver) -> None:
        if self.driver is not driver:
            return
        self.driver = None
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.lost()

    # --- responders
    @responder("print")
    def on_print(self, message: dict[str, Any]) -> None:
        self.remote_print(message["message"])

    @responder("keepalive")
    def on_keepalive(self, message: dict[str, Any]) -> None:
        return None

    @responder("get_worker_info")
    def on_get_worker_info(self, message: dict[str, Any]) -> dict[str, Any]:
        info = self.remote_getWorkerInfo()
        info["environ"] = {str(k): str(v) for k, v in info.get("environ", {}).items()}
        return info

    @responder("set_builder_list")
    @defer.inlineCallbacks
    def on_set_builder_list(self, message: dict[str, Any]) -> Any:
        wanted = [(str(name), str(builddir)) for name, builddir in message["builders"]]
        builders = yield self.remote_setBuilderList(wanted)
        return sorted(builders)

    @responder("start_command")
    def on_start_command(self, message: dict[str, Any]) -> None:
        builder = self.builders.get(message["builder"])
        if builder is None:
            raise KeyError(f"no such builder {message['builder']!r} on this worker")
        command_id = message["command_id"]
        channel = CommandChannel(self.driver, command_id, self.transfer_window,
                                 on_finished=lambda: self._channels.pop(command_id, None))
        self._channels[command_id] = channel
        builder.remote_startCommand(channel, command_id, message["command"],
                                    dict(message["args"]))

    @responder("interrupt_command")
    def on_interrupt_command(self, message: dict[str, Any]) -> None:
        builder = self.builders.get(message["builder"])
        if builder is None:
            raise KeyError(f"no such builder {message['builder']!r} on this worker")
        builder.remote_interruptCommand(message["command_id"], message["why"])

    @responder("shutdown")
    def on_shutdown(self, message: dict[str, Any]) -> None:
        self.remote_shutdown()

    # --- session lifecycle hooks (MessageHandler)
    def authenticated(self, driver: SessionDriver, event: Any) -> None:
        log.msg(f"Connected to buildmaster over msgproto v{event.version} as {event.worker!r}; "
                "worker is ready")
        self.attach(driver)

    def link_lost(self, driver: SessionDriver, event: Any) -> None:
        if self.driver is driver:
            log.msg(f"msgproto: lost the connection to the buildmaster ({event.code}); running "
                    f"commands go on and their output is kept, resuming within "
                    f"{event.window:g} s")

    def resumed(self, driver: SessionDriver, event: Any) -> None:
        if self.driver is driver:
            log.msg(f"msgproto: session with the buildmaster resumed after "
                    f"{event.suspended_for:.1f} s ({event.replayed} frames sent again)")

    def writable_changed(self, driver: SessionDriver, writable: bool) -> None:
        """Pause the running shell commands while the session cannot take their output (a
        slow or lost connection with a full replay buffer), so that nothing is dropped."""
        if self.driver is not driver:
            return
        for builder in self.builders.values():
            process = compat.running_process(builder)
            if process is None:
                continue
            if writable:
                process.resumeProducing()
            else:
                process.pauseProducing()

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        if self.driver is driver:
            log.msg(f"lost msgproto session with the buildmaster ({code}: {reason})")
        self.detach(driver)
