"""A blocking, scriptable msg-protocol client for hostile-input tests (loopback only).

It speaks the PB dialect negotiation and the length-prefixed framing by hand, so a
test can send exactly the bytes it wants, and uses the sans-IO Session when it
needs a real handshake (e.g. a wrong password).
"""

from __future__ import annotations

import json
import socket
import struct
import time

from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session

_PREFIX = struct.Struct("!I")


class RawClient:
    """One TCP connection to a master's msg port on 127.0.0.1."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_some(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by peer")
        return data

    def read_offer(self) -> list[bytes]:
        """Read the master's banana dialect offer."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            parsed = negotiation.parse_offer(self._buffer)
            if parsed is not None:
                offered, self._buffer = parsed
                return offered
            self._buffer += self._recv_some()
        raise TimeoutError("no dialect offer")

    def choose_msg(self) -> None:
        self.read_offer()
        self.send(negotiation.encode_string(MSG_DIALECT))

    # -- frames
    def send_frame(self, frame: bytes) -> None:
        self.send(_PREFIX.pack(len(frame)) + frame)

    def send_json(self, message: dict) -> None:
        self.send_frame(json.dumps(message).encode())

    def read_frame(self) -> bytes:
        while len(self._buffer) < 4:
            self._buffer += self._recv_some()
        (length,) = _PREFIX.unpack(self._buffer[:4])
        while len(self._buffer) < 4 + length:
            self._buffer += self._recv_some()
        frame, self._buffer = self._buffer[4:4 + length], self._buffer[4 + length:]
        return frame

    def read_json(self) -> dict:
        return json.loads(self.read_frame())

    def read_until_closed(self, limit: int = 100) -> list[dict]:
        """Read frames until the master closes the connection; return them."""
        frames = []
        for _ in range(limit):
            try:
                frames.append(self.read_json())
            except ConnectionError:
                return frames
        raise AssertionError(f"master did not close the connection after {limit} frames")

    def wait_closed(self, timeout: float) -> bytes:
        """Wait until the peer closes; return whatever arrived meanwhile."""
        self.sock.settimeout(timeout)
        received = self._buffer
        self._buffer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return received
            if not data:
                return received
            received += data
        raise TimeoutError("connection still open")

    # -- real handshakes
    def handshake(self, worker: str, password: str) -> tuple[Session, list]:
        """Run the worker side of the handshake with the sans-IO Session.

        Returns the session and every event it produced (Authenticated or Closed last).
        """
        session = Session(Role.WORKER, worker_name=worker, password=password)
        session.start(time.monotonic())
        events: list = []
        for _ in range(10):
            for frame in session.frames_to_send():
                self.send_frame(frame)
            if session.is_open or session.is_closed:
                return session, events
            try:
                frame = self.read_frame()
            except ConnectionError:
                return session, events
            events.extend(session.receive_frame(frame, time.monotonic()))
        raise AssertionError("handshake did not finish")
