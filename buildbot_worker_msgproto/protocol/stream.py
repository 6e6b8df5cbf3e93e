"""The long-lived half of a session: sequence numbers, acks and the replay buffer.

A :class:`Stream` outlives the connections (links) it is carried over.  It numbers the
frames a side sends after the handshake, remembers every frame the peer has not yet
acknowledged (when resume is on), accepts the peer's frames in order (dropping the
duplicates a resume may replay), and decides when a standalone ``ack`` is due: after
``ack_every`` frames, ``ack_bytes`` bytes or ``ack_delay`` seconds received with
nothing sent back (docs/protocol.rst sections 4 and 7).  No I/O, no clock of its own.
"""

from __future__ import annotations

import collections
import dataclasses

from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import Limits


@dataclasses.dataclass(frozen=True)
class SentFrame:
    """One sent message (and its binary side frame, if any), kept until acknowledged."""

    seq: int
    frames: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(len(frame) for frame in self.frames)


class Stream:
    """Numbering, acknowledgement and replay of one session's frames.

    ``send_base`` / ``recv_base``: the sequence numbers already used in each direction
    when the stream starts (the handshake's frames, for a peer without ``resume``; 0
    with ``resume``, whose streams number their own frames from 1).  ``replay``: keep
    sent frames until acknowledged, so that they can be sent again over a new link.
    """

    def __init__(self, limits: Limits, send_base: int = 0, recv_base: int = 0,
                 replay: bool = False) -> None:
        self.limits = limits
        self.replay = replay
        #: Sequence number of the last frame sent / received.
        self.send_seq = send_base
        self.recv_seq = recv_base
        #: The highest of our sequence numbers the peer has acknowledged.
        self.peer_ack = send_base
        self._unacked: collections.deque[SentFrame] = collections.deque()
        self._unacked_bytes = 0
        # frames received since we last told the peer how far we got (standalone acks
        # are not counted: acking them would make two idle sides ack each other forever)
        self._pending_count = 0
        self._pending_bytes = 0
        self._first_pending_at: float | None = None

    # ------------------------------------------------------------------ sending
    def next_seq(self) -> int:
        return self.send_seq + 1

    def sent(self, seq: int, frames: tuple[bytes, ...]) -> None:
        """Record that the message ``seq`` (its frames) was sent; it carried our ack."""
        assert seq == self.send_seq + 1, (seq, self.send_seq)
        self.send_seq = seq
        self._acked_now()
        if self.replay:
            entry = SentFrame(seq, frames)
            self._unacked.append(entry)
            self._unacked_bytes += entry.size

    def _acked_now(self) -> None:
        self._pending_count = 0
        self._pending_bytes = 0
        self._first_pending_at = None

    @property
    def unacked_bytes(self) -> int:
        """Bytes kept for replay (sent, not yet acknowledged by the peer)."""
        return self._unacked_bytes

    @property
    def unacked_frames(self) -> int:
        return self.send_seq - self.peer_ack

    def replay_after(self, peer_last_seq: int) -> list[bytes]:
        """The frames to send again on a new link: every kept frame after the peer's last
        received one, in order, with their original sequence numbers."""
        if peer_last_seq > self.send_seq:
            raise ProtocolError(f"the peer claims frame {peer_last_seq}, but only "
                                f"{self.send_seq} were sent", code=CloseCode.BAD_SEQUENCE)
        self.acknowledged(peer_last_seq)
        if self._unacked and self._unacked[0].seq != peer_last_seq + 1:
            raise ProtocolError(f"cannot resume after frame {peer_last_seq}: frames from "
                                f"{self._unacked[0].seq} are kept", code=CloseCode.BAD_SEQUENCE)
        if not self._unacked and peer_last_seq != self.send_seq:
            raise ProtocolError(f"cannot resume after frame {peer_last_seq}: frames up to "
                                f"{self.send_seq} are gone", code=CloseCode.BAD_SEQUENCE)
        return [frame for entry in self._unacked for frame in entry.frames]

    # ------------------------------------------------------------------ receiving
    def accept(self, seq: int, ack: int | None, size: int, now: float,
               needs_ack: bool = True) -> bool:
        """Account a received frame; False if it is a duplicate (already received).

        A stale ``ack`` (below one seen before, as replayed frames carry) is ignored; an
        ``ack`` of a frame never sent, or a gap in ``seq``, is a ProtocolError.
        ``needs_ack``: False for a standalone ``ack`` (acknowledged only in passing).
        """
        if seq <= self.recv_seq:
            return False
        if seq != self.recv_seq + 1:
            raise ProtocolError(f"frame seq {seq} out of order (expected {self.recv_seq + 1})",
                                code=CloseCode.BAD_SEQUENCE)
        if ack is not None:
            if ack > self.send_seq:
                raise ProtocolError(f"ack {ack} of a frame never sent (last sent: "
                                    f"{self.send_seq})", code=CloseCode.BAD_SEQUENCE)
            self.acknowledged(ack)
        self.recv_seq = seq
        if needs_ack:
            self._pending_count += 1
            self._pending_bytes += size
            if self._first_pending_at is None:
                self._first_pending_at = now
        return True

    def acknowledged(self, ack: int) -> None:
        """The peer has every frame up to ``ack``: forget them."""
        if ack <= self.peer_ack:
            return
        self.peer_ack = ack
        while self._unacked and self._unacked[0].seq <= ack:
            self._unacked_bytes -= self._unacked.popleft().size

    # ------------------------------------------------------------------ ack policy
    def ack_due(self, now: float) -> bool:
        """A standalone ``ack`` should go out now (nothing else carried ours)."""
        if self._first_pending_at is None:
            return False
        return (self._pending_count >= self.limits.ack_every
                or self._pending_bytes >= self.limits.ack_bytes
                or now >= self._first_pending_at + self.limits.ack_delay)

    def ack_deadline(self) -> float | None:
        """When a standalone ``ack`` becomes due by time (None: nothing to acknowledge)."""
        if self._first_pending_at is None:
            return None
        return self._first_pending_at + self.limits.ack_delay
