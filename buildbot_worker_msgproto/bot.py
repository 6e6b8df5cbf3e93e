"""Worker-side glue: buildbot-worker's Bot and commands, driven by msg sessions.

The builder bookkeeping, path handling and every worker command are
buildbot-worker's own (``BotPbLike``, ``WorkerForBuilderPbLike``,
``ProtocolCommandPb.protocol_args_setup``); only the ``protocol_*`` hooks that
talk to the master are replaced by messages.
"""

from __future__ import annotations

import collections
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
from buildbot_worker_msgproto.driver import listener
from buildbot_worker_msgproto.driver import responder
from buildbot_worker_msgproto.flow import TransferFlow
from buildbot_worker_msgproto.protocol import payloads
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits

#: Downloads (master -> worker) are read ahead in chunks of at least this many bytes and
#: handed to the command in the block sizes it asks for (FileDownload asks for 16 KiB).
READ_AHEAD_CHUNK = payloads.TRANSFER_BLOCK
#: Uploads (worker -> master) are sent in ``write_file`` blocks of at least this many bytes:
#: DirectoryUpload writes 16 KiB at a time, FileUpload 256 KiB.  The master writes the
#: blocks of one command in order, so joining them changes nothing but the message count.
WRITE_CHUNK = payloads.TRANSFER_BLOCK


#: Transfer commands whose ``blocksize`` only sets how the worker cuts the file locally:
#: the blocks on the wire are ``READ_AHEAD_CHUNK`` / ``WRITE_CHUNK`` whatever it is, so
#: over a transport with large reads the command takes and writes whole transfer blocks
#: too (FileDownload and DirectoryUpload ask for 16 KiB: 16 times the reactor turns and
#: Deferreds, which made the worker's CPU the limit of a download; docs/commands.rst
#: section 7).
LOCAL_BLOCK_COMMANDS = frozenset({"downloadFile", "download_file", "uploadDirectory",
                                  "upload_directory", "uploadFile", "upload_file"})


class CommandChannel:
    """The worker's handle on one running command: sends its messages to the master.

    File transfers are pipelined through the session's transfer windows (``flow``):
    uploads are joined into ``WRITE_CHUNK`` blocks and sent while the upload window has
    room; downloads ask for ``READ_AHEAD_CHUNK`` bytes per ``read_file``, as many as the
    download window allows ahead of what the command has taken.
    """

    def __init__(self, driver: SessionDriver, command_id: str | int, flow: TransferFlow,
                 on_finished: Callable[[], None] | None = None, pushed: bool = False) -> None:
        self.driver = driver
        self.command_id = command_id
        self.flow = flow
        self._on_finished = on_finished
        self.reactor = driver.reactor
        self._lost_callbacks: list[Callable] = []
        self._out = bytearray()
        self.writes_in_flight = 0
        self._write_error: Any = None
        self._reads: collections.deque[defer.Deferred] = collections.deque()
        self._read_buffer = bytearray()
        self._read_eof = False
        self._received = 0  # bytes the master sent that the command has not taken yet
        #: The master pushes the download's first bytes (``file_data``): "waiting" for
        #: the first, "flowing", then "ended" (``last``) or "dropped" (the command
        #: stopped reading); None: no push.
        self._push: str | None = "waiting" if pushed else None
        self._push_waiter: defer.Deferred | None = None

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
        self.flow.drop(self)
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
        """Take the command's next block; fires (on a later reactor turn: the worker's
        transfer loop recurses on a fired Deferred) when the command may go on."""
        if self._write_error is not None:
            return defer.fail(self._write_error)
        self._out += data
        sent = self._send_out(whole_blocks_only=True)
        ready = defer.Deferred()
        sent.addBoth(lambda _: self.reactor.callLater(0, ready.callback, None))
        return ready

    def _send_out(self, whole_blocks_only: bool = False) -> defer.Deferred:
        """Send what ``write`` collected as ``write_file`` blocks of at most one frame,
        each once the window has room; with ``whole_blocks_only`` keep a short rest for
        the next ``write``.  Fires when the last block went out."""
        size = min(WRITE_CHUNK, payloads.largest_block(
            self.driver.session.max_outgoing_frame_size, self.driver.session.blobs_enabled))
        sent = defer.succeed(None)
        while len(self._out) >= size or (self._out and not whole_blocks_only):
            block = bytes(self._out[:size])
            del self._out[:size]
            sent = self.flow.room_for(len(block), self)
            sent.addCallback(lambda _, block=block: self._send_block(block))
            sent.addErrback(self._remember_write_error)
        return sent

    def _send_block(self, block: bytes) -> None:
        window = self.flow.upload
        sample = self.flow.sent(window, len(block))
        text, blob = payloads.block_out(block, self.driver.session.blobs_enabled)
        self.writes_in_flight += 1
        d = self.request("write_file", blob=blob, **({} if text is None else {"data": text}))
        d.addCallbacks(self._write_answered, self._write_failed,
                       callbackArgs=(sample,), errbackArgs=(sample,))

    def _write_answered(self, result: Any, sample: Any) -> None:
        self.writes_in_flight -= 1
        self.flow.answered(self.flow.upload, sample, sample.size)

    def _write_failed(self, failure: Any, sample: Any) -> None:
        self.writes_in_flight -= 1
        self._remember_write_error(failure)
        self.flow.cancelled(self.flow.upload, sample)

    def _remember_write_error(self, failure: Any) -> None:
        if self._write_error is None:
            self._write_error = failure.value
        return None

    @defer.inlineCallbacks
    def end_writes(self, message_type: str, **body: Any) -> Any:
        """Send the last block and then ``message_type`` (``close_writer``,
        ``utime_file``, ``unpack_writer``) right behind it: the master answers it after
        every ``write_file`` before it.  Raises the first write error, if any.

        With ``pipelined_close`` the answer is not awaited: the command goes on to its
        ``complete`` at once, and the master completes the command with the first error
        of its transfer requests instead (one round trip less per upload step)."""
        yield self._send_out()
        if self._write_error is None and self.driver.session.pipelined_close:
            d = self.request(message_type, **body)
            d.addErrback(self._late_write_error, message_type)
            return None
        try:
            yield self.request(message_type, **body)
        except Exception:
            if self._write_error is None:
                raise
        if self._write_error is not None:
            raise self._write_error

    def _late_write_error(self, failure: Any, message_type: str) -> None:
        log.msg(f"msgproto: command {self.command_id!r}: the master answered {message_type} "
                f"with an error after the command completed ({failure.getErrorMessage()}); "
                "the master fails the step with it")

    def local_block_size(self) -> int | None:
        """The block in which the command reads its file or takes a download: one
        read-ahead chunk (less than a transfer block where frames are small);
        None (the step's own) where the transport reads less than a block at a time
        (WebSocket: 64 KiB; whole blocks made its downloads slower, bench/README.rst)."""
        if not getattr(self.driver.transport, "large_reads", False):
            return None
        return self._read_chunk()  # uploads are cut to the outgoing frames in _send_out

    def _read_chunk(self) -> int:
        """One read-ahead chunk: a transfer block, or less if it would not fit one incoming
        frame as base64 in JSON (peers without 'blob')."""
        fits = payloads.largest_block(self.driver.session.max_incoming_frame_size, blobs=False)
        return min(READ_AHEAD_CHUNK, fits)

    # --- read-ahead download
    def read(self, length: int) -> defer.Deferred:
        """Up to ``length`` bytes of the master's file (b'' at its end), read ahead.

        buildbot-worker's transfer commands read one block at a time, so at most one
        ``read`` is pending; the read-ahead chunks arrive in order, after the pushed ones.
        """
        if self._read_buffer or (self._read_eof and not self._reads):
            block = self._take(length)
            self._prefetch(length)
            return defer.succeed(block)
        if self._push in ("waiting", "flowing"):  # more pushed bytes are on their way
            self._prefetch(length)
            waiter = self._push_waiter = defer.Deferred()
            waiter.addCallback(lambda _: self.read(length))
            return waiter
        self._prefetch(length)
        result = defer.Deferred()
        d = self._reads.popleft()
        d.addCallback(self._got_chunk)
        d.addCallback(lambda _: self._take(length))
        d.addBoth(result.callback)
        return result

    def _prefetch(self, length: int) -> None:
        """Ask for more chunks while the download window has room for them beyond what
        is buffered (one request is always allowed, so that the transfer goes on)."""
        if self._read_eof or self._push == "waiting":  # a small file may be pushed whole
            return
        chunk = max(length, self._read_chunk())
        window = self.flow.download
        while not self._reads or window.in_flight + self._received + chunk <= window.size:
            announce = {"window": window.size} if self.driver.session.pushed_download else {}
            sample = self.flow.sent(window, chunk)
            d = self.request("read_file", length=chunk, **announce)
            d.addCallbacks(self._read_answered, self._read_failed,
                           callbackArgs=(sample,), errbackArgs=(sample,))
            self._reads.append(d)

    def pushed(self, block: bytes, last: bool, eof: bool) -> None:
        """The master pushed the next ``block`` of the file (``file_data``)."""
        if self._push == "dropped":  # the command stopped reading (maxsize, an error)
            return
        if self._push is None or self._push == "ended":
            raise ProtocolError(f"file_data for command {self.command_id!r}, which expects "
                                "none", code=CloseCode.UNEXPECTED_MESSAGE)
        self._read_buffer += block
        self._received += len(block)
        if eof:
            self._read_eof = True
        self._push = "ended" if last or eof else "flowing"
        waiter, self._push_waiter = self._push_waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _read_answered(self, result: bytes | str | None, sample: Any) -> bytes:
        chunk = payloads.block_result(result)
        self._received += len(chunk)
        self.flow.answered(self.flow.download, sample, len(chunk))
        return chunk

    def _read_failed(self, failure: Any, sample: Any) -> Any:
        self.flow.cancelled(self.flow.download, sample)
        return failure

    def _got_chunk(self, chunk: bytes) -> None:
        if not chunk:
            self._read_eof = True  # later chunks (already requested) are empty too
        self._read_buffer += chunk

    def _take(self, length: int) -> bytes:
        block = bytes(self._read_buffer[:length])
        del self._read_buffer[:length]
        self._received -= len(block)
        return block

    def discard_reads(self) -> None:
        for d in self._reads:
            d.addErrback(lambda f: None)
        self._reads.clear()
        self._read_buffer.clear()
        self._received = 0
        if self._push is not None:
            self._push = "dropped"  # pushed bytes still on their way are ignored


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
        if (command in LOCAL_BLOCK_COMMANDS and self.command_ref is not None
                and isinstance(args.get("blocksize"), int)):
            local_block = self.command_ref.local_block_size()
            if local_block is not None:
                args["blocksize"] = max(args["blocksize"], local_block)

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

    def protocol_update_upload_file_close(self, writer: Any) -> defer.Deferred:
        return self.command_ref.end_writes("close_writer")

    def protocol_update_upload_file_utime(self, writer: Any, access_time: float,
                                          modified_time: float) -> defer.Deferred:
        return self.command_ref.end_writes("utime_file", access_time=access_time,
                                           modified_time=modified_time)

    def protocol_update_upload_directory(self, writer: Any) -> defer.Deferred:
        return self.command_ref.end_writes("unpack_writer")

    def protocol_update_read_file(self, reader: Any, length: int) -> defer.Deferred:
        return self.command_ref.read(length)

    def protocol_update_read_file_close(self, reader: Any) -> defer.Deferred:
        """Send ``close_reader`` without waiting for its answer: the master handles it
        before the ``complete`` that follows, and the worker only logs a failed close
        (buildbot-worker's download command ignores it).  Saves a round trip per
        download."""
        self.command_ref.discard_reads()
        d = self.command_ref.request("close_reader")
        d.addErrback(log.err, "msgproto: closing the master's file reader")
        return defer.succeed(None)


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
        self.flow: TransferFlow | None = None
        #: The worker's limits (the Worker service sets them); the transfer windows use them.
        self.limits: Limits = DEFAULT_LIMITS
        self._channels: dict[Any, CommandChannel] = {}

    # --- session lifecycle
    def attach(self, driver: SessionDriver) -> None:
        self.driver = driver
        self.flow = TransferFlow(driver, self.limits)

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
        channel = CommandChannel(self.driver, command_id, self.flow,
                                 on_finished=lambda: self._channels.pop(command_id, None),
                                 pushed=bool(message.get("push")))
        self._channels[command_id] = channel
        builder.remote_startCommand(channel, command_id, message["command"],
                                    dict(message["args"]))

    @listener("file_data")
    def on_file_data(self, message: dict[str, Any]) -> None:
        channel = self._channels.get(message["command_id"])
        if channel is None:  # the command ended (maxsize, an error): the rest is not needed
            return
        channel.pushed(payloads.block_in(message, "data"), bool(message["last"]),
                       bool(message["eof"]))

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
            self.flow.new_path()
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
