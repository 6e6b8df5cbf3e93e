"""Every limit of the protocol, with its default, in one place.

The defaults are documented in ``docs/protocol.rst`` (section "Limits"); keep the two in step.
"""

from __future__ import annotations

import dataclasses

#: Version numbers of the message protocol this code speaks, newest last.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

#: Optional protocol features this code supports, announced in hello / welcome.
#: ``blob``: binary side frames (file blocks travel as raw bytes instead of base64).
#: ``resume``: a session outlives its connection and resumes over a new one.
SUPPORTED_FEATURES: tuple[str, ...] = ("blob", "pipelined_close", "pushed_download", "resume")

#: The banana dialect name a master offers ahead of ``pb`` on a negotiated port.
MSG_DIALECT = b"msgproto-v1"

KIB = 1024
MIB = 1024 * KIB

#: No frame limit, local or announced by a peer, may be smaller than this.  Every
#: control frame the session generates itself (``close``, ``error``, ``ping``, ``ack``;
#: reasons are capped at 512 characters, at most ~6.2 KB once JSON-escaped) fits in it, so
#: a peer announcing a tiny ``max_frame_size`` cannot make the session unable to speak.
MIN_FRAME_SIZE = 8 * KIB


@dataclasses.dataclass(frozen=True)
class Limits:
    """Tunable limits of one session; every field has a safe default."""

    #: Largest frame accepted once authenticated (bytes of JSON).  16 MiB carries a
    #: 12 MiB file block in base64; file transfers use far smaller blocks.
    max_frame_size: int = 16 * MIB
    #: Largest frame accepted before authentication.  Handshake messages are tiny, so
    #: an unauthenticated peer cannot make us buffer more than this.
    max_handshake_frame_size: int = 16 * KIB
    #: Seconds a peer has from connecting until it is authenticated (slowloris guard).
    handshake_timeout: float = 30.0
    #: Seconds of silence after which a side sends a ``ping``.
    heartbeat_interval: float = 10.0
    #: Seconds without any frame from the peer after which the peer is declared dead.
    heartbeat_timeout: float = 30.0
    #: Send a standalone ``ack`` after this many received frames with nothing to reply...
    ack_every: int = 64
    #: ... or after this many received bytes ...
    ack_bytes: int = 1 * MIB
    #: ... or this many seconds after the first frame not yet acknowledged.
    ack_delay: float = 1.0
    #: Seconds a session whose connection was lost waits for the worker to resume it
    #: (the master announces its value; 0 turns resume off, as before resume existed).
    resume_window: float = 300.0
    #: Bytes of sent, unacknowledged frames a side keeps for a resume.  Above it the
    #: sender reports "not writable": file transfers and command output pause.
    max_replay_bytes: int = 128 * MIB
    #: PBKDF2 iterations for the SCRAM-SHA-256 style authentication (RFC 7677 minimum).
    auth_iterations: int = 4096
    #: Upper bound on iterations a worker accepts from a master (CPU-exhaustion guard).
    max_auth_iterations: int = 100_000
    #: Bytes of file data in flight (per session and direction) before the path is
    #: measured: 16 blocks of 256 KiB.  The window then follows the path (window.py).
    initial_transfer_window: int = 4 * MIB
    #: The most bytes of file data in flight per session and direction: the memory limit
    #: of the transfer window.  Only half of ``max_replay_bytes`` is ever used, so that a
    #: full window leaves room for other output (see :attr:`transfer_window_limit`).
    #: 64 MiB fills 100 ms at up to 5 Gbit/s; the window reaches it only on such a path.
    max_transfer_window: int = 64 * MIB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            wanted = (int,) if field.type in ("int", int) else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                kind = "an integer" if wanted == (int,) else "a number"
                raise ValueError(f"limit {field.name} must be {kind}, got {value!r}")
            if field.name in _MAY_BE_ZERO:
                if not 0 <= value < float("inf"):
                    raise ValueError(f"limit {field.name} must be 0 or positive, got {value!r}")
            elif not 0 < value < float("inf"):
                raise ValueError(f"limit {field.name} must be positive, got {value!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be larger than heartbeat_interval")
        if self.max_handshake_frame_size > self.max_frame_size:
            raise ValueError("max_handshake_frame_size must not exceed max_frame_size")
        if self.initial_transfer_window > self.max_transfer_window:
            raise ValueError("initial_transfer_window must not exceed max_transfer_window")
        if self.max_handshake_frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"max_handshake_frame_size must be at least {MIN_FRAME_SIZE}")

    @property
    def transfer_window_limit(self) -> int:
        """The transfer window's cap in effect: ``max_transfer_window``, but at most half
        of ``max_replay_bytes``, so that the window never fills the replay buffer alone."""
        return max(1, min(self.max_transfer_window, self.max_replay_bytes // 2))

    def replace(self, **changes: object) -> Limits:
        """Return a copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


#: Limits where 0 means "off".
_MAY_BE_ZERO = frozenset({"resume_window"})

DEFAULT_LIMITS = Limits()
