"""The transfer window: how many bytes of file data one side keeps in flight.

Sans-IO, like the rest of ``protocol/``: the owner reports what it sends and what was
answered, with the time, and asks how much may go out.  The window is sized to the path
in the manner of TCP's receive-buffer autotuning (Linux "dynamic right-sizing") and
BBR's model of the path (docs/protocol.rst section 12.1):

* it starts at ``initial`` bytes;
* every answered request is an RTT sample and a delivery-rate sample (bytes answered
  between the request's sending and its answer, over that time, as BBR measures it);
* it **grows** to ``GAIN`` x the bandwidth-delay product: the highest delivery rate of
  the last ``RATE_ROUNDS`` round trips (and ``RATE_RTTS`` lowest RTTs) times the lowest
  RTT (window-limited, each round trip delivers the whole window, so it doubles per
  round trip until the path, not the window, is the limit). The lowest RTT is renewed by
  a lower sample, or after ``MIN_RTT_SECONDS`` by the sample of a request sent with
  nothing in flight (the first of a transfer): samples taken behind other data measure
  the queue, not the path;
* it **shrinks** when the growth made data queue instead of flow: when the smoothed RTT
  exceeds the lowest by more than ``max(min RTT, QUEUE_ALLOWANCE)`` and the late answer
  was to a request sent with the window at least half used (a sender that does not fill
  its window, say a slow tar, cannot be what makes answers late: a busy receiver is, and
  a smaller window would not help it), to ``GAIN`` x the
  bandwidth-delay product, but not below ``initial`` (a
  short path's RTT samples are mostly processing time, and the initial window is what
  keeps every stage of a fast local transfer busy); and on explicit pushback (the
  session's replay buffer is full) by half, down to ``MIN_WINDOW``; each at most once
  per round trip;
* it never exceeds ``maximum``, the memory limit.

One request may always be in flight, however large, so that a transfer cannot stall.
"""

from __future__ import annotations

import collections
import dataclasses

KIB = 1024

#: The window targets this multiple of the measured bandwidth-delay product (TCP
#: autotuning sizes the receive buffer to twice the data delivered per round trip; BBR's
#: cwnd_gain is 2): room to grow while window-limited, and slack for jitter.
GAIN = 2.0
#: Round trips over which the highest delivery rate is kept (BBR's bandwidth filter)...
RATE_ROUNDS = 10
#: ... but no longer than this many lowest RTTs (on a path that became slow, a round
#: trip can take many seconds: the old rate would hold the window up for minutes).
RATE_RTTS = 10
#: Seconds after which the lowest RTT may be replaced by a higher one measured with an
#: empty pipe (BBR's min_rtt filter is 10 s and probes for it; we wait for an idle start).
MIN_RTT_SECONDS = 10.0
#: Queueing delay tolerated before the window shrinks to the measured need (seconds);
#: whatever else the session sends waits at most about this long behind file data.
QUEUE_ALLOWANCE = 0.05
#: Pushback never shrinks the window below this (or ``initial``, if that is smaller).
MIN_WINDOW = 512 * KIB
#: Weight of a new RTT sample in the smoothed RTT (RFC 6298's alpha).
RTT_ALPHA = 0.125


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the window remembers of one sent request until it is answered."""

    size: int
    sent_at: float
    #: Bytes delivered, and the time of the last delivery, when the request was sent.
    delivered: int
    delivered_at: float
    #: The path the request was sent on (see :meth:`TransferWindow.new_path`).
    path: int
    #: Nothing else was in flight: its RTT is the path's, without queueing.
    idle: bool
    #: The window was at least half used with it: a late answer may be our own queue.
    window_limited: bool = True


class TransferWindow:
    """Bytes in flight for one direction of one session, sized to the path.

    ``initial``: the window before anything is measured; ``maximum``: the memory limit.
    """

    def __init__(self, initial: int, maximum: int) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial = initial
        self.maximum = maximum
        self.minimum = min(MIN_WINDOW, initial)
        self.size = initial
        self.in_flight = 0
        #: Bytes delivered so far, and when the last delivery happened.
        self.delivered = 0
        self.delivered_at: float | None = None
        self.srtt: float | None = None
        self.round = 0
        self._round_ends_at_delivered = 0  # a sample sent at or after this ends the round
        self._rates: collections.deque[tuple[int, float, float]] = collections.deque()
        self._min_rtt: float | None = None
        self._min_rtt_at = 0.0
        self._last_cut = float("-inf")
        self._path = 0

    # ------------------------------------------------------------------ estimates
    @property
    def min_rtt(self) -> float | None:
        """The lowest RTT measured (None before the first answer); see the module doc."""
        return self._min_rtt

    @property
    def max_rate(self) -> float | None:
        """The highest delivery rate (bytes/s) of the last ``RATE_ROUNDS`` round trips."""
        return self._rates[0][1] if self._rates else None

    @property
    def target(self) -> int | None:
        """``GAIN`` x the measured bandwidth-delay product, within the limits."""
        if self.min_rtt is None or self.max_rate is None:
            return None
        return self._clamp(GAIN * self.max_rate * self.min_rtt)

    def _clamp(self, size: float) -> int:
        return int(max(self.minimum, min(self.maximum, size)))

    # ------------------------------------------------------------------ sending
    def room(self) -> int:
        """Bytes that may go out now (0 if the window is full)."""
        return max(0, self.size - self.in_flight)

    def may_send(self, size: int) -> bool:
        """``size`` more bytes fit (or nothing is in flight: one request always may)."""
        return self.in_flight == 0 or self.in_flight + size <= self.size

    def sent(self, size: int, now: float) -> Sample:
        """Record a request of ``size`` bytes sent at ``now``; hand the result back to
        :meth:`answered` or :meth:`cancelled`."""
        idle = self.in_flight == 0
        if idle:  # a first flight, or one after idling: rates start now
            self.delivered_at = now
        self.in_flight += size
        return Sample(size, now, self.delivered, self.delivered_at, self._path, idle,
                      self.in_flight * 2 >= self.size)

    def answered(self, sample: Sample, size: int, now: float) -> None:
        """The request of ``sample`` was answered at ``now``, delivering ``size`` bytes
        (fewer than asked at the end of a file)."""
        self.in_flight -= sample.size
        if sample.path != self._path:  # sent before the path changed: no measurement
            return
        self.delivered += size
        self.delivered_at = now
        if sample.delivered >= self._round_ends_at_delivered:
            self.round += 1
            self._round_ends_at_delivered = self.delivered
        self._add_rtt(now - sample.sent_at, now, sample.idle)
        interval = now - sample.delivered_at
        if interval > 0 and sample.sent_at >= self._last_cut:  # not from a larger window
            self._add_rate((self.delivered - sample.delivered) / interval, now)
        self._adapt(now, sample.window_limited)

    def cancelled(self, sample: Sample) -> None:
        """The request of ``sample`` will not be answered (error, lost session)."""
        self.in_flight -= sample.size

    def pushback(self, now: float) -> None:
        """The receiver or the transport cannot take more: halve the window (at most
        once per round trip)."""
        if self._may_cut(now):
            self._cut(self._clamp(self.size / 2), now)

    def new_path(self) -> None:
        """The session resumed over a new connection: forget what was measured (answers
        to requests sent before are not measured)."""
        self._path += 1
        self._min_rtt = None
        self._rates.clear()
        self.srtt = None

    # ------------------------------------------------------------------ internals
    def _add_rtt(self, rtt: float, now: float, idle: bool) -> None:
        self.srtt = rtt if self.srtt is None else self.srtt + RTT_ALPHA * (rtt - self.srtt)
        if (self._min_rtt is None or rtt <= self._min_rtt
                or (idle and now - self._min_rtt_at > MIN_RTT_SECONDS)):
            self._min_rtt, self._min_rtt_at = rtt, now

    def _add_rate(self, rate: float, now: float) -> None:
        rates = self._rates
        while rates and rates[-1][1] <= rate:
            rates.pop()
        rates.append((self.round, rate, now))
        oldest = now - RATE_RTTS * (self.min_rtt or 0.0)
        while len(rates) > 1 and (rates[0][0] <= self.round - RATE_ROUNDS
                                  or rates[0][2] < oldest):
            rates.popleft()

    def _adapt(self, now: float, window_limited: bool) -> None:
        target = self.target
        if target is None:
            return
        if target > self.size:
            self.size = target
        elif (window_limited and self._queueing() and max(target, self.initial) < self.size
              and self._may_cut(now)):
            self._cut(max(target, self.initial), now)

    def _queueing(self) -> bool:
        """Answers take longer than the path needs: data waits in buffers."""
        min_rtt = self.min_rtt
        return (self.srtt is not None and min_rtt is not None
                and self.srtt > min_rtt + max(min_rtt, QUEUE_ALLOWANCE))

    def _may_cut(self, now: float) -> bool:
        return now >= self._last_cut + (self.srtt or 0.0)

    def _cut(self, size: int, now: float) -> None:
        self.size = max(self.minimum, size)
        self._last_cut = now
        self._rates.clear()  # the old rates were measured with the larger window
