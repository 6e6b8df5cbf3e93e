"""The worker's reconnect policy grows until a login works, and honours maxRetries."""

from __future__ import annotations

from buildbot_worker_msgproto.retry import RetryPolicy


def make(max_retries=None):
    stops = []
    # a deterministic backoff: the delay is the attempt number it is asked for
    return RetryPolicy(max_retries, lambda: stops.append(1), backoff=float), stops


def test_delay_grows_although_every_tcp_connect_succeeds():
    """ClientService passes attempt=1 after each connect that later failed at login."""
    policy, _ = make()
    assert [policy(1) for _ in range(5)] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_login_resets_the_delay():
    policy, _ = make()
    policy(1), policy(1), policy(1)
    policy.logged_in()
    assert policy(1) == 1.0


def test_failed_connects_count_as_before():
    policy, _ = make()
    assert policy(7) == 7.0  # ClientService's own count when it is the larger one


def test_max_retries_stops_the_worker():
    policy, stops = make(max_retries=3)
    policy(1), policy(2)
    assert not stops
    policy(3)
    assert stops == [1]
    policy.check_failures(3)  # failed logins reaching maxRetries stop it as well
    assert stops == [1, 1]


def test_default_backoff_is_buildbot_workers():
    policy = RetryPolicy(None, lambda: None)
    first = policy(1)
    for _ in range(20):
        last = policy(1)
    assert 1.0 <= first < 3.0 and 55.0 <= last <= 65.0  # 1.5x per retry, capped near 60 s
