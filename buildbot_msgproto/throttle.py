"""Throttling of repeated failed logins (password guessing), free of I/O.

Policy: failures are counted per **(peer host, worker name)**.  After
``failures_before_throttle`` failed authentications of one name from one host
(each failure more than ``forget_after`` seconds after the previous one starts the
count afresh), that host is refused any new handshake for that name for
``throttle_seconds``; every further failure once throttled doubles the back-off,
up to ``throttle_seconds * MAX_BACKOFF_FACTOR``.  A successful login clears the
entry.  Refused handshakes do not count as failures (they never reach a password
check), so a worker that keeps reconnecting during a back-off does not prolong it.

Why per (host, name) and not per host: a per-host throttle would lock out every
legitimate worker sharing the attacker's host or NAT address while somebody guesses
one name.  Keyed by name too, only the name under attack is throttled, and only from
the attacking host.  The price: a legitimate worker *with that very name on that very
host* is refused during the back-off (it reconnects afterwards), and an attacker can
guess ``failures_before_throttle`` passwords for every name.  Unknown worker names are
counted exactly like known ones, so throttling does not reveal which names exist.

Memory is bounded: entries are forgotten ``forget_after`` seconds after their last
failure (or when their back-off ends, if later), and at most ``max_entries`` are
kept; beyond that the least recently failed entry is dropped.
"""

from __future__ import annotations

import collections
import dataclasses

#: Failed logins of one worker name from one host before that host is throttled.
DEFAULT_FAILURES_BEFORE_THROTTLE = 5
#: First back-off (seconds) once throttled; doubles with every further failure.
#: ``0`` disables throttling.
DEFAULT_THROTTLE_SECONDS = 10.0
#: The back-off never exceeds ``throttle_seconds * MAX_BACKOFF_FACTOR`` (320 s by default).
MAX_BACKOFF_FACTOR = 32
#: Seconds without a failure after which an entry is forgotten (the counting window).
DEFAULT_FORGET_AFTER = 3600.0
#: Most (host, worker name) entries kept in memory.
DEFAULT_MAX_ENTRIES = 10_000


def peer_host(peer: str) -> str:
    """The host part of a transport's printable peer (``'10.0.0.1:4567'`` -> ``'10.0.0.1'``).

    Peers that are not ``host:port`` (e.g. ``'amqp:user'``) are used whole.
    """
    peer = peer.split(" ", 1)[0]
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and host else peer


@dataclasses.dataclass
class _Entry:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0
    refusal_logged: bool = False


class LoginThrottle:
    """Counts failed logins per key and says when a key must be refused.

    Sans-IO: every method takes the current time, so tests drive it with a fake clock.
    A key is any hashable; the master uses ``(peer_host(peer), worker_name)``.
    """

    def __init__(self, failures_before_throttle: int = DEFAULT_FAILURES_BEFORE_THROTTLE,
                 throttle_seconds: float = DEFAULT_THROTTLE_SECONDS, *,
                 forget_after: float = DEFAULT_FORGET_AFTER,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if failures_before_throttle < 1:
            raise ValueError("failures_before_throttle must be at least 1")
        if throttle_seconds < 0 or forget_after <= 0 or max_entries < 1:
            raise ValueError("throttle_seconds must be >= 0, forget_after and max_entries > 0")
        self.failures_before_throttle = failures_before_throttle
        self.throttle_seconds = float(throttle_seconds)
        self.forget_after = float(forget_after)
        self.max_entries = max_entries
        # Ordered by last failure, oldest first (move_to_end on every failure).
        self._entries: collections.OrderedDict[object, _Entry] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.throttle_seconds > 0

    @property
    def max_backoff(self) -> float:
        return self.throttle_seconds * MAX_BACKOFF_FACTOR

    def __len__(self) -> int:
        return len(self._entries)

    def configure(self, failures_before_throttle: int, throttle_seconds: float) -> None:
        """Apply new settings (a reconfig); the entries are kept."""
        self.failures_before_throttle = max(1, failures_before_throttle)
        self.throttle_seconds = max(0.0, float(throttle_seconds))

    def _expires(self, entry: _Entry) -> float:
        return max(entry.last_failure + self.forget_after, entry.blocked_until)

    def _prune(self, now: float) -> None:
        # Entries are ordered by last failure; expired ones cluster at the front.  A long
        # back-off can keep an old entry alive, so stop at the first live one.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now < self._expires(entry):
                break
            del self._entries[key]

    def retry_after(self, key: object, now: float) -> float:
        """Seconds ``key`` must still wait before it may try to log in (0: go ahead)."""
        self._prune(now)
        entry = self._entries.get(key)
        if entry is None or not self.enabled or now >= entry.blocked_until:
            return 0.0
        return entry.blocked_until - now

    def should_log_refusal(self, key: object) -> bool:
        """True once per back-off period, so a reconnect storm cannot flood the log."""
        entry = self._entries.get(key)
        if entry is None or entry.refusal_logged:
            return False
        entry.refusal_logged = True
        return True

    def failed(self, key: object, now: float) -> float:
        """Record a failed login; return the back-off it starts (0 if not throttled yet)."""
        self._prune(now)
        entry = self._entries.get(key)
        if entry is None or now - entry.last_failure >= self.forget_after:
            entry = _Entry()
        entry.failures += 1
        entry.last_failure = now
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        excess = entry.failures - self.failures_before_throttle
        if not self.enabled or excess < 0:
            return 0.0
        backoff = min(self.throttle_seconds * 2 ** min(excess, 64), self.max_backoff)
        entry.blocked_until = max(entry.blocked_until, now + backoff)
        entry.refusal_logged = False
        return backoff

    def succeeded(self, key: object) -> None:
        """A login with ``key`` succeeded: forget its failures."""
        self._entries.pop(key, None)
