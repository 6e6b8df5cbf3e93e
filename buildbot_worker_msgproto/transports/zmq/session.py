"""One zmq session's transport, either side: markers, and a send queue that keeps what a
full high-water mark refused (``EAGAIN``), in order."""

from __future__ import annotations

import collections
from typing import Any

import zmq as pyzmq
from twisted.python import log

from buildbot_worker_msgproto.transports.messaging import Marker
from buildbot_worker_msgproto.transports.messaging import MessageTransport

OPEN = (b"", Marker.OPEN.value.encode())
CLOSE = (b"", Marker.CLOSE.value.encode())


def message_marker(parts: list[Any]) -> tuple[Marker | None, bool]:
    """(marker, well formed) of a message: FRAME for ``[frame]``, the control verb for
    ``[b"", verb]`` (None for a verb this code does not know); anything else is malformed."""
    if len(parts) == 1:
        return Marker.FRAME, True
    if len(parts) == 2 and not parts[0].bytes:
        marker = Marker.parse(parts[1].bytes.decode("ascii", "replace"))
        return (marker if marker is not Marker.FRAME else None), True
    return None, False


class ZmqTransport(MessageTransport):
    """A session's messages go out in order through a queue that keeps those ZeroMQ
    refused with ``EAGAIN`` (the master's per-peer transport, the worker's transport)."""

    transport_name = "zmq"

    def __init__(self, reactor: Any, linger: int, guarantees: Any) -> None:
        super().__init__(reactor, guarantees)
        self.linger = linger
        self.queue: collections.deque[tuple[bytes, ...]] = collections.deque()
        self.close_sent = False
        self._linger_timer = None

    def encryption(self) -> str:
        return "CURVE" if self.guarantees.encrypted else "none"

    def _send_now(self, message: tuple[bytes, ...]) -> None:
        """Hand one message to ZeroMQ or raise ``ZMQError``."""
        raise NotImplementedError

    # --- FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if self.closing:
            return
        self.queue.extend((frame,) for frame in frames)
        self.flush()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.queue.append(CLOSE)
        self.flush()
        if not self.closed:  # stuck at a high-water mark: give up after ``linger``
            self._linger_timer = self.reactor.callLater(
                self.linger / 1000.0, self.failed,
                f"zmq: frames queued for {self.peer()} were not sent within {self.linger} ms "
                "of closing; discarded")

    def abort(self) -> None:
        self.end("aborted", tell_peer=True)

    # --- internals
    def flush(self) -> None:
        """Send queued messages until ZeroMQ refuses one (it is retried later)."""
        while self.queue and not self.closed:
            message = self.queue[0]
            try:
                self._send_now(message)
            except pyzmq.ZMQError as e:
                if e.errno == pyzmq.EAGAIN:
                    self.set_writable(False)
                    return
                if e.errno == pyzmq.EHOSTUNREACH and message is CLOSE:
                    self.end("closed")  # it left first: nothing was lost
                    return
                self.failed(self._send_error(e))
                return
            if message is CLOSE:
                self.close_sent = True
                self.end("closed")
                return
            self.queue.popleft()
        if not self.closed:
            self.set_writable(True)

    def _send_error(self, error: pyzmq.ZMQError) -> str:
        if error.errno == pyzmq.EHOSTUNREACH:
            return (f"zmq peer {self.peer()} is unreachable (its connection is gone); "
                    f"{len(self.queue)} queued message(s) not delivered")
        return f"zmq send to {self.peer()} failed: {error}"

    def failed(self, reason: str) -> None:
        """A send failed for good, or the peer broke the rules: end loudly."""
        log.msg(f"msgproto: {reason}")
        self.end(reason, tell_peer=True)

    def _finished(self, tell_peer: bool) -> Any:
        self.queue.clear()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        return self._release(tell_peer)

    def _release(self, tell_peer: bool) -> Any:
        """Release the socket or the identity."""
        raise NotImplementedError

    def message_parts(self, parts: list[Any]) -> None:
        """A message of this session, as ZeroMQ parts."""
        marker, well_formed = message_marker(parts)
        if not well_formed:
            self.failed(f"malformed zmq message from {self.peer()}: {len(parts)} parts, "
                        "expected 1")
        elif marker is not None:
            self.received(marker, parts[0].bytes if marker is Marker.FRAME else b"")
