"""The failed-login throttle, with a fake clock and fake drivers (no network, no reactor)."""

from __future__ import annotations

import pytest

from buildbot_msgproto.config import MsgProtocolConfigError
from buildbot_msgproto.config import parse_options
from buildbot_msgproto.manager import MasterHandshake
from buildbot_msgproto.throttle import DEFAULT_FAILURES_BEFORE_THROTTLE
from buildbot_msgproto.throttle import DEFAULT_THROTTLE_SECONDS
from buildbot_msgproto.throttle import MAX_BACKOFF_FACTOR
from buildbot_msgproto.throttle import LoginThrottle
from buildbot_msgproto.throttle import peer_host
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import HelloReceived
from master_tests.handshake_fakes import FakeClock
from master_tests.handshake_fakes import FakeDispatcher
from master_tests.handshake_fakes import FakeDriver

KEY = ("10.0.0.1", "w1")


def fail_n(throttle: LoginThrottle, n: int, key=KEY, now: float = 0.0) -> list[float]:
    return [throttle.failed(key, now) for _ in range(n)]


# ----------------------------------------------------------------------------- LoginThrottle
def test_no_throttle_below_the_threshold():
    t = LoginThrottle(3, 10)
    assert fail_n(t, 2) == [0.0, 0.0]
    assert t.retry_after(KEY, 0) == 0.0


def test_throttled_at_the_threshold_then_released():
    t = LoginThrottle(3, 10)
    assert fail_n(t, 3, now=100) == [0.0, 0.0, 10.0]
    assert t.retry_after(KEY, 100) == 10.0
    assert t.retry_after(KEY, 105) == 5.0
    assert t.retry_after(KEY, 110) == 0.0


def test_backoff_doubles_per_further_failure_up_to_the_cap():
    t = LoginThrottle(1, 10)
    backoffs = [t.failed(KEY, now) for now in range(0, 10_000, 1000)]
    cap = 10 * MAX_BACKOFF_FACTOR
    assert backoffs[:6] == [10, 20, 40, 80, 160, 320]
    assert backoffs[6:] == [cap] * 4
    assert t.retry_after(KEY, 9000) == cap


def test_throttle_is_per_host_and_worker_name():
    t = LoginThrottle(2, 10)
    fail_n(t, 2)
    assert t.retry_after(KEY, 1) > 0
    assert t.retry_after(("10.0.0.1", "w2"), 1) == 0  # another worker on the same host
    assert t.retry_after(("10.0.0.2", "w1"), 1) == 0  # the same worker from another host


def test_success_clears_the_failures():
    t = LoginThrottle(3, 10)
    fail_n(t, 2)
    t.succeeded(KEY)
    assert len(t) == 0
    assert fail_n(t, 2) == [0.0, 0.0]


def test_old_failures_are_forgotten():
    t = LoginThrottle(3, 10, forget_after=60)
    fail_n(t, 2, now=0)
    assert t.failed(KEY, 61) == 0.0  # the count started afresh
    assert t.failed(KEY, 62) == 0.0
    assert t.failed(KEY, 63) == 10.0


def test_entries_expire_from_memory():
    t = LoginThrottle(1, 10, forget_after=60)
    for i in range(100):
        t.failed(("h", f"name{i}"), i)
    assert len(t) == 60  # failures 0..39 are more than 60 s old at t=99
    t.retry_after(KEY, 1000)
    assert len(t) == 0


def test_a_long_backoff_outlives_forget_after():
    t = LoginThrottle(1, 100, forget_after=10)
    t.failed(KEY, 0)
    assert t.retry_after(KEY, 50) == 50
    assert t.retry_after(KEY, 100) == 0


def test_table_size_is_capped():
    t = LoginThrottle(1, 10, max_entries=50)
    for i in range(10_000):
        t.failed(("h", f"name{i}"), 0)
        assert len(t) <= 50
    assert t.retry_after(("h", "name9999"), 1) > 0  # the most recent entries are kept
    assert t.retry_after(("h", "name0"), 1) == 0


def test_zero_seconds_disables_throttling():
    t = LoginThrottle(1, 0)
    assert not t.enabled
    assert fail_n(t, 100) == [0.0] * 100
    assert t.retry_after(KEY, 0) == 0


def test_refusals_are_logged_once_per_backoff():
    t = LoginThrottle(1, 10)
    t.failed(KEY, 0)
    assert t.should_log_refusal(KEY)
    assert not t.should_log_refusal(KEY)
    t.failed(KEY, 20)
    assert t.should_log_refusal(KEY)
    assert not t.should_log_refusal(("x", "y"))


def test_configure_keeps_entries():
    t = LoginThrottle(5, 10)
    fail_n(t, 2)
    t.configure(3, 30)
    assert t.failed(KEY, 0) == 30


@pytest.mark.parametrize("kwargs", [
    {"failures_before_throttle": 0}, {"throttle_seconds": -1}, {"forget_after": 0},
    {"max_entries": 0},
])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        LoginThrottle(**kwargs)


@pytest.mark.parametrize("peer, host", [
    ("127.0.0.1:4567", "127.0.0.1"),
    ("::1:4567", "::1"),
    ("amqp:worker-user", "amqp:worker-user"),
    ("tcp://10.1.1.1:5555 (zmq id 00ff)", "tcp://10.1.1.1"),
    ("?", "?"),
])
def test_peer_host(peer, host):
    assert peer_host(peer) == host


# ----------------------------------------------------------------------------- configuration
def test_config_defaults_and_keys():
    options = parse_options({"port": 9989})
    assert options.login_failures_before_throttle == DEFAULT_FAILURES_BEFORE_THROTTLE
    assert options.login_throttle_seconds == DEFAULT_THROTTLE_SECONDS
    options = parse_options({"port": 9989, "login_failures_before_throttle": 3,
                             "login_throttle_seconds": 0})
    assert (options.login_failures_before_throttle, options.login_throttle_seconds) == (3, 0.0)


@pytest.mark.parametrize("key, value", [
    ("login_failures_before_throttle", 0), ("login_failures_before_throttle", True),
    ("login_failures_before_throttle", 2.5), ("login_throttle_seconds", -1),
    ("login_throttle_seconds", float("nan")), ("login_throttle_seconds", "10"),
])
def test_config_rejects_bad_values(key, value):
    with pytest.raises(MsgProtocolConfigError, match=key):
        parse_options({"port": 9989, key: value})


# ----------------------------------------------------------------------------- wiring
def attempt(dispatcher: FakeDispatcher, clock: FakeClock, worker: str = "w1",
            peer: str = "127.0.0.1:40000", outcome: str = "authentication_failed") -> FakeDriver:
    """One handshake through MasterHandshake: hello, then ``outcome`` if it was answered."""
    driver = FakeDriver(clock, worker, peer)
    handler = MasterHandshake(dispatcher)
    handler.hello_received(driver, HelloReceived(worker, (1,), {}))
    if driver.answered:
        handler.session_ended(driver, outcome, "wrong password", by_peer=False)
    else:
        handler.session_ended(driver, *driver.closed, by_peer=False)
    return driver


def test_handshake_is_refused_after_repeated_failures(logged):
    clock = FakeClock()
    dispatcher = FakeDispatcher(LoginThrottle(3, 10))
    for _ in range(3):
        assert attempt(dispatcher, clock, peer="127.0.0.1:1").answered
    assert any("throttling logins of worker 'w1' from 127.0.0.1 for 10 s" in line
               for line in logged), logged
    for port in (2, 3):  # refused before any password check, from any source port
        driver = attempt(dispatcher, clock, peer=f"127.0.0.1:{port}")
        assert not driver.answered
        assert driver.closed[0] == "login_throttled"
    refusals = [line for line in logged if "refusing logins of worker 'w1'" in line]
    assert len(refusals) == 1, logged
    # Another worker name from the same host is not affected.
    assert attempt(dispatcher, clock, worker="w2", peer="127.0.0.1:4").answered
    # Refusals did not extend the back-off; after it a login is answered again.
    clock.now += 10
    assert attempt(dispatcher, clock, peer="127.0.0.1:5").answered
    # ... and that failure (beyond the threshold) doubles the back-off.
    assert dispatcher.login_throttle.retry_after(("127.0.0.1", "w1"), clock.now) == 20


def test_a_successful_login_resets_the_count():
    clock = FakeClock()
    dispatcher = FakeDispatcher(LoginThrottle(3, 10))
    for _ in range(2):
        attempt(dispatcher, clock)
    driver = FakeDriver(clock, peer="127.0.0.1:9")
    MasterHandshake(dispatcher).authenticated(driver, Authenticated("w1", 1, "session"))
    assert driver.closed[0] == "unknown_worker"  # the fake dispatcher has no connection
    for _ in range(2):
        assert attempt(dispatcher, clock).answered
    assert dispatcher.login_throttle.retry_after(("127.0.0.1", "w1"), clock.now) == 0


def test_other_session_ends_are_not_failures():
    clock = FakeClock()
    dispatcher = FakeDispatcher(LoginThrottle(1, 10))
    for code in ("handshake_timeout", "bad_frame", "connection_lost", "duplicate_worker"):
        attempt(dispatcher, clock, outcome=code)
    assert len(dispatcher.login_throttle) == 0
