"""The transfer window (sans-IO) on simulated paths with a fake clock.

A path is a bottleneck of ``rate`` bytes/s with a fixed round-trip time: a request sent at
``t`` is answered once its bytes have crossed the bottleneck (in order, one after the
other) plus the round trip.  The sender keeps the window full, as the worker's glue does.
"""

from __future__ import annotations

import heapq
import re

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import window as window_module
from buildbot_worker_msgproto.protocol.window import GAIN
from buildbot_worker_msgproto.protocol.window import MIN_WINDOW
from buildbot_worker_msgproto.protocol.window import TransferWindow

KIB = 1024
MIB = 1024 * KIB
CHUNK = 256 * KIB


class Path:
    """A bottleneck queue followed by a fixed delay; answers come back in order."""

    def __init__(self, rtt: float, rate: float) -> None:
        self.rtt = rtt
        self.rate = rate
        self.free_at = 0.0  # when the bottleneck has sent everything queued so far

    def answer_time(self, size: int, now: float) -> float:
        start = max(now + self.rtt / 2, self.free_at)
        self.free_at = start + size / self.rate
        return self.free_at + self.rtt / 2


def run(window: TransferWindow, path: Path, total: int, start: float = 0.0,
        chunk: int = CHUNK, until: float = 1e9) -> dict:
    """Move ``total`` bytes through ``path`` keeping ``window`` full; returns what happened:
    the end time, the window after each answer, the bytes in flight at most."""
    now, sent, done = start, 0, 0
    pending: list[tuple[float, int, object]] = []
    sizes, most_in_flight, seq = [], 0, 0
    while done < total and now < until:
        while sent < total and window.may_send(min(chunk, total - sent)):
            size = min(chunk, total - sent)
            sample = window.sent(size, now)
            seq += 1
            heapq.heappush(pending, (path.answer_time(size, now), seq, sample))
            sent += size
            most_in_flight = max(most_in_flight, window.in_flight)
        now, _, sample = heapq.heappop(pending)
        window.answered(sample, sample.size, now)
        done += sample.size
        sizes.append(window.size)
    return {"end": now, "sizes": sizes, "most_in_flight": most_in_flight,
            "pending": pending, "sent": sent}


def test_starts_at_the_initial_size_and_counts_bytes():
    w = TransferWindow(4 * MIB, 32 * MIB)
    assert (w.size, w.in_flight, w.room()) == (4 * MIB, 0, 4 * MIB)
    samples = [w.sent(CHUNK, 0.0) for _ in range(16)]
    assert w.in_flight == 4 * MIB and w.room() == 0 and not w.may_send(1)
    w.cancelled(samples[0])
    assert w.in_flight == 4 * MIB - CHUNK and w.may_send(CHUNK)


def test_one_request_is_always_allowed():
    w = TransferWindow(1 * MIB, 2 * MIB)
    assert w.may_send(8 * MIB)  # nothing in flight: however large
    w.sent(8 * MIB, 0.0)
    assert not w.may_send(1)


def test_initial_must_fit_the_maximum():
    with pytest.raises(ValueError):
        TransferWindow(8 * MIB, 4 * MIB)
    with pytest.raises(ValueError):
        TransferWindow(0, 4 * MIB)


def test_grows_on_a_long_fat_path_up_to_the_maximum():
    """100 ms, 1 GB/s: the bandwidth-delay product (100 MB) is beyond the 32 MiB cap."""
    w = TransferWindow(4 * MIB, 32 * MIB)
    result = run(w, Path(0.1, 1e9), 256 * MIB)
    assert w.size == 32 * MIB
    assert result["most_in_flight"] <= 32 * MIB
    assert max(result["sizes"]) == 32 * MIB
    # window-limited, it about doubles per round trip: 4 -> 32 MiB within 5 round trips
    first_full = next(i for i, s in enumerate(result["sizes"]) if s == 32 * MIB)
    assert sum(result["sizes"][:first_full]) > 0
    assert w.round <= 12
    # and then moves 32 MiB per round trip: 256 MiB in well under 16 round trips
    assert result["end"] < 1.6


def test_growth_is_about_a_doubling_per_round_trip():
    w = TransferWindow(4 * MIB, 1024 * MIB)
    path = Path(0.1, 1e12)  # no bandwidth limit: only the window limits
    sizes_by_round: dict[int, int] = {}
    now, pending, seq, done = 0.0, [], 0, 0
    while done < 600 * MIB:
        while w.may_send(CHUNK):
            seq += 1
            heapq.heappush(pending, (path.answer_time(CHUNK, now), seq, w.sent(CHUNK, now)))
        now, _, sample = heapq.heappop(pending)
        w.answered(sample, CHUNK, now)
        done += CHUNK
        sizes_by_round[w.round] = w.size
    rounds = sorted(sizes_by_round)[:-1]  # the last round was cut short by the end
    growth = [sizes_by_round[b] / sizes_by_round[a] for a, b in zip(rounds, rounds[1:])
              if sizes_by_round[b] < 1024 * MIB]
    assert growth and all(1.5 <= g <= GAIN + 0.01 for g in growth[1:]), growth


def test_settles_near_twice_the_bandwidth_delay_product():
    """100 ms, 50 MB/s: BDP 5 MB; the window ends near GAIN x BDP, not at the cap."""
    w = TransferWindow(1 * MIB, 64 * MIB)
    run(w, Path(0.1, 50e6), 200 * MIB)
    bdp = 50e6 * 0.1
    assert bdp <= w.size <= GAIN * bdp * 1.2
    assert w.min_rtt == pytest.approx(0.1, abs=0.01)
    assert w.max_rate == pytest.approx(50e6, rel=0.1)


def test_throughput_reaches_the_path_rate_once_grown():
    w = TransferWindow(4 * MIB, 32 * MIB)
    path = Path(0.05, 100e6)
    first = run(w, path, 64 * MIB)
    start = first["end"]
    path.free_at = start
    second = run(w, path, 64 * MIB, start=start)
    seconds = second["end"] - start
    assert 64 * MIB / seconds > 0.9 * 100e6 * (1 - 0.05 / seconds)


def test_a_short_path_keeps_the_initial_window():
    """Loopback: 0.2 ms, 500 MB/s.  The measured need (GAIN x BDP: 200 kB) is below the
    initial window; data barely queues (8 ms), so the window stays as it started."""
    w = TransferWindow(4 * MIB, 32 * MIB)
    run(w, Path(0.0002, 500e6), 256 * MIB)
    assert w.size == 4 * MIB


def grown(initial: int = 1 * MIB, maximum: int = 32 * MIB) -> tuple[TransferWindow, float]:
    """A window grown to ``maximum`` on a 100 ms, 1 GB/s path; returns it and the time."""
    w = TransferWindow(initial, maximum)
    result = run(w, Path(0.1, 1e9), 256 * MIB)
    assert w.size == maximum
    return w, result["end"]


def test_shrinks_back_when_the_path_slows_down():
    """Grown to 32 MiB, the window meets a 1 MB/s path: 32 MiB would wait half a minute
    in buffers.  It comes back down to its initial size, and the queue with it."""
    w, now = grown(initial=1 * MIB)
    path = Path(0.1, 1e6)
    path.free_at = now
    result = run(w, path, 64 * MIB, start=now)
    assert w.size == 1 * MIB
    assert max(result["sizes"][len(result["sizes"]) // 4:]) == 1 * MIB
    assert w.srtt < 0.1 + (1 * MIB + CHUNK) / 1e6 + 0.2


def test_shrinks_to_the_need_not_below():
    """Grown to 32 MiB, on a 100 ms, 20 MB/s path (BDP 2 MB): about 2 x BDP."""
    w, now = grown(initial=1 * MIB)
    path = Path(0.1, 20e6)
    path.free_at = now
    run(w, path, 128 * MIB, start=now)
    assert 2e6 <= w.size <= GAIN * 2e6 * 1.3


def test_late_answers_to_a_sender_that_does_not_fill_the_window_do_not_shrink_it():
    """Grown to 32 MiB, the window carries a slow producer (a directory being tarred)
    to a receiver that answers late (busy unpacking): not our queue, so no shrinking,
    and the next big transfer starts with the full window."""
    w, now = grown(initial=4 * MIB)
    for _ in range(20):
        sample = w.sent(CHUNK, now)
        now += 0.4  # four times the path's RTT
        w.answered(sample, CHUNK, now)
    assert w.srtt > 0.3 and w.size == 32 * MIB


def test_queueing_never_takes_it_below_the_initial_window():
    """A slow path from the start: data queues, but the initial window stays (what a
    fixed window of that size did before); only pushback goes lower."""
    w = TransferWindow(4 * MIB, 32 * MIB)
    run(w, Path(0.1, 1e6), 16 * MIB)
    assert w.size == 4 * MIB
    w.pushback(100.0)
    assert w.size == 2 * MIB


def test_pushback_halves_once_per_round_trip_and_not_below_the_floor():
    w = TransferWindow(8 * MIB, 32 * MIB)
    s = w.sent(CHUNK, 0.0)
    w.answered(s, CHUNK, 0.1)  # srtt 0.1
    size = w.size
    w.pushback(1.0)
    assert w.size == size // 2
    w.pushback(1.05)  # within the same round trip: no second cut
    assert w.size == size // 2
    for i in range(20):
        w.pushback(2.0 + i)
    assert w.size == MIN_WINDOW


def test_after_pushback_old_rates_do_not_grow_it_back_at_once():
    w = TransferWindow(4 * MIB, 64 * MIB)
    path = Path(0.1, 1e9)
    result = run(w, path, 128 * MIB)
    big = w.size
    w.pushback(result["end"])
    cut = w.size
    assert cut == big // 2
    # an answer to a request sent before the cut does not restore the old size
    s = w.sent(CHUNK, result["end"] - 0.05)
    w.answered(s, CHUNK, result["end"] + 0.06)
    assert w.size == cut


def test_a_new_path_forgets_the_measurements():
    w = TransferWindow(4 * MIB, 32 * MIB)
    before = w.sent(CHUNK, 0.0)
    w.new_path()
    w.answered(before, CHUNK, 5.0)  # spans the reconnection: not a sample
    assert w.min_rtt is None and w.max_rate is None and w.in_flight == 0
    s = w.sent(CHUNK, 6.0)
    w.answered(s, CHUNK, 6.1)
    assert w.min_rtt == pytest.approx(0.1)


def test_min_rtt_expires():
    w = TransferWindow(4 * MIB, 32 * MIB)
    s = w.sent(CHUNK, 0.0)
    w.answered(s, CHUNK, 0.01)
    s = w.sent(CHUNK, 1.0)
    w.answered(s, CHUNK, 1.2)
    assert w.min_rtt == pytest.approx(0.01)
    s = w.sent(CHUNK, window_module.MIN_RTT_SECONDS + 5)
    w.answered(s, CHUNK, window_module.MIN_RTT_SECONDS + 5.3)
    assert w.min_rtt == pytest.approx(0.3)


def test_short_answers_at_the_end_of_a_file_are_accounted():
    w = TransferWindow(4 * MIB, 32 * MIB)
    samples = [w.sent(CHUNK, 0.0) for _ in range(4)]
    w.answered(samples[0], 1000, 0.1)
    for s in samples[1:]:
        w.answered(s, 0, 0.1)
    assert w.in_flight == 0 and w.delivered == 1000


@settings(max_examples=60, deadline=None)
@given(rtt=st.floats(0.0001, 0.5), rate=st.floats(1e5, 2e9),
       initial=st.sampled_from([256 * KIB, 1 * MIB, 4 * MIB]),
       maximum=st.sampled_from([4 * MIB, 32 * MIB, 128 * MIB]))
def test_bounds_hold_on_any_path(rtt, rate, initial, maximum):
    """Whatever the path: never more in flight than the maximum plus one chunk, never a
    window outside [floor, maximum], and every byte gets through."""
    w = TransferWindow(min(initial, maximum), maximum)
    result = run(w, Path(rtt, rate), 16 * MIB, until=1e6)
    assert result["sent"] == 16 * MIB and not result["pending"]
    assert result["most_in_flight"] <= maximum + CHUNK
    assert all(w.minimum <= s <= maximum for s in result["sizes"])
    assert w.in_flight == 0


def test_protocol_rst_states_the_window_constants():
    """docs/protocol.rst section 12.1 gives the constants' values; keep them in step."""
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "docs" / "protocol.rst").read_text(
        encoding="utf-8")
    section = text[text.index("12.1 The transfer window"):text.index("13. Message reference")]
    assert f"``GAIN`` ({GAIN:g})" in section
    assert f"``RATE_ROUNDS`` ({window_module.RATE_ROUNDS})" in section
    assert f"``MIN_RTT_SECONDS`` ({window_module.MIN_RTT_SECONDS:g} s)" in section
    assert f"``QUEUE_ALLOWANCE`` ({window_module.QUEUE_ALLOWANCE * 1000:g} ms)" in section
    assert re.search(rf"``MIN_WINDOW``\s+\({MIN_WINDOW // KIB} KiB", section)
